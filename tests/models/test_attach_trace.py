"""attach reads blocks off the computation: networks from other packages and written by users, conv subclasses,
all-or-nothing, validated ``where``/``dry_run_size``, and convattn's own ResNets as plain network + attach."""
import importlib.util
import inspect
import json
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

from convattn import attach, create_model, create_attn
from convattn.layers import AWConv2d, STEAM
from convattn.models import ResNet
from convattn.models.attach import find_blocks, stage_blocks
from convattn.models.verify import verify_attach

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from attach_coverage import USER  # noqa: E402  - the user-written networks of the coverage table

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy_runs"


def _tv(arch, **kw):
    return lambda: torchvision.models.get_model(arch, weights=None, num_classes=10, **kw)


SUBSET = {  # representative: every rule that finds blocks, every source
    "user:residual_block_class": USER["residual_block_class"],
    "user:plain_block_inplace_add": USER["plain_block_inplace_add"],
    "user:functional_x_plus_f": USER["functional_x_plus_f"],
    "user:vgg_like": USER["vgg_like"],
    "user:dense_cat": USER["dense_cat"],
    "torchvision:shufflenet_v2_x0_5": _tv("shufflenet_v2_x0_5"),
    "torchvision:squeezenet1_1": _tv("squeezenet1_1"),
    "torchvision:mnasnet0_5": _tv("mnasnet0_5"),
    "timm:tf_efficientnet_b0": lambda: timm.create_model("tf_efficientnet_b0", num_classes=10),
}


@pytest.mark.parametrize("kind", ["se", "gct", "aw"])
@pytest.mark.parametrize("arch", list(SUBSET))
def test_verify_attach_representative_subset(arch, kind):
    """Identity at insertion (eval and train), a training step moves inserted parameters, state dict round trip."""
    row = verify_attach(SUBSET[arch], None if kind == "aw" else kind, "aw" if kind == "aw" else None)
    assert row["status"] == "ok", row


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_pytorch") is None, reason="efficientnet_pytorch not installed")
def test_third_party_efficientnet_static_same_padding():
    """lukemelas' MBConvBlock with Conv2dStaticSamePadding: blocks read off the computation, AW reproduces the
    padding exactly, SE + AW together."""
    from efficientnet_pytorch import EfficientNet
    row = verify_attach(lambda: EfficientNet.from_name("efficientnet-b0", num_classes=10), "se", "aw")
    assert row["status"] == "ok", row
    assert row["stages"] == [1, 2, 2, 6, 5] and row["inserted"] == 16 + 16  # 16 blocks, 16 depthwise convs


def test_exact_parameter_counts_user_network():
    """SE at the branch output of every block: parameters = sum of SE modules of the block widths."""
    net = attach(USER["residual_block_class"](), "se")
    widths = [16, 32, 32, 64]
    expected = sum(sum(p.numel() for p in create_attn("se", c).parameters()) for c in widths)
    assert net.convattn_report.added_params == expected
    assert [r["where"] for r in net.convattn_report.rows] == [f"layers.{i}.body.4.attn" for i in range(4)]
    assert net.convattn_report.blocks_per_stage == [1, 2, 1]


def test_rules_on_torchvision_families():
    blocks, counts = stage_blocks(torchvision.models.densenet121(weights=None))
    assert counts == [6, 12, 24, 16] and {b.kind for b in blocks} == {"dense"}  # each dense layer is a block
    blocks, counts = stage_blocks(torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True))
    assert counts == [2, 5, 2] and all(b.kind == "multi_branch" and b.target is b.module for b in blocks)
    blocks, counts = stage_blocks(torchvision.models.vgg11(weights=None))
    assert counts == [1, 1, 1, 1, 1] and all(b.kind == "stage" for b in blocks)  # no shortcut: each stage's end


class _ConvSubclasses(nn.Module):
    """Residual blocks whose convolutions are nn.Conv2d subclasses: TF same padding, reflect padding, and one that
    standardises its weight (which AW cannot reproduce)."""

    def __init__(self, std: bool = False) -> None:
        super().__init__()
        from timm.layers import Conv2dSame, StdConv2d
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = Conv2dSame(8, 8, 3, stride=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")
        self.c = StdConv2d(8, 8, 3, padding=1) if std else nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.a(x)
        x = x + self.b(x)
        return x + self.c(x)


def test_conv_subclasses_are_replaced_exactly_or_refused():
    row = verify_attach(_ConvSubclasses, None, "aw", input_size=17)
    assert row["status"] == "ok" and row["inserted"] == 3, row
    m = attach(_ConvSubclasses(), None, "aw")
    assert m.a.input_padding == "same" and m.b.input_padding == (1, 1, 1, 1) and m.b.input_padding_mode == "reflect"
    assert (m.c.dilation, m.c.groups) == ((2, 2), 2) and all(isinstance(x, AWConv2d) for x in (m.a, m.b, m.c))
    net = _ConvSubclasses(std=True)
    keys = set(net.state_dict())
    with pytest.raises(ValueError, match=r"c \(StdConv2d\).*cannot replace it exactly.*left unchanged"):
        attach(net, "se", "aw")
    assert set(net.state_dict()) == keys and not any(hasattr(m, "attn") for m in net.modules())  # all or nothing


def test_attach_is_all_or_nothing():
    net = torchvision.models.resnet18(weights=None)
    keys = set(net.state_dict())
    with pytest.raises(ValueError, match="aw at .*Unknown AW mode 'bogus'.*left unchanged"):
        attach(net, "se", conv="aw", conv_kwargs={"mode": "bogus"})
    assert set(net.state_dict()) == keys and not hasattr(net, "convattn_report")
    assert not any(type(m).__name__.endswith("Attn") for m in net.modules())


@pytest.mark.parametrize("where, match", [
    ({1: [0.5], 2: [0]}, "block index of stage 1 must be an int"), ([1.7], "a stage must be an int"),
    ({1: "first"}, "stage 1 takes 'all'"), ({"1": [0]}, "a stage must be an int"), ({9: [0]}, "stage 9 does not exist"),
    (1.5, "where must be"), ("nowhere", "Unknown placement rule"), ({1: [7]}, "index 7 is out of range")])
def test_where_is_validated_never_truncated(where, match):
    with pytest.raises(ValueError, match=match):
        attach(torchvision.models.resnet18(weights=None), "se", where=where)


def test_bad_attach_arguments_are_one_line_errors():
    net = torchvision.models.resnet18(weights=None)
    with pytest.raises(ValueError, match="attn must be a registered attention name"):
        attach(net, 123)
    with pytest.raises(ValueError, match=r"dry_run_size must be an int in \[8, 4096\]"):
        attach(net, "se", dry_run_size=0)
    with pytest.raises(ValueError, match="dry_run_size=16 is too small .* use dry_run_size >= 32"):
        attach(net, "steam", dry_run_size=16)  # 1x1 maps: stages 3 and 4 would merge
    assert stage_blocks(torchvision.models.resnet18(weights=None))[1] == [2, 2, 2, 2]  # the default size is right
    m = attach(torchvision.models.resnet18(weights=None), None, "aw")
    with pytest.raises(ValueError, match="already has AW-convolutions"):
        attach(m, None, "aw")
    with pytest.raises(ValueError, match="TorchScript module"):
        attach(torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3))), "se")


class _HeadConvFirst(nn.Module):
    """Registers a 64-channel head convolution before its 3-channel stem (the first registered conv is not the
    input conv)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(64, 10, 1)
        self.stem = nn.Conv2d(3, 64, 3, 2, 1)
        self.block = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64))

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.block(x))
        return self.head(x).mean((2, 3))


def test_input_channels_found_by_running_the_network():
    m = attach(_HeadConvFirst(), "se")
    assert [r["where"] for r in m.convattn_report.rows] == ["block.1.attn"]


def test_convattn_resnets_are_the_plain_network_plus_attach():
    assert not {"attn", "conv", "attn_kwargs", "attn_blocks"} & set(inspect.signature(ResNet).parameters)
    built = create_model("resnet50", attn="steam")
    attached = attach(create_model("resnet50"), "steam")
    assert built.convattn_report.rows == attached.convattn_report.rows
    assert [(r["stage"], r["block"]) for r in built.convattn_report.rows] == [(0, 2), (1, 3), (2, 4), (2, 5), (3, 2)]
    # per-module needs come from the module's spec: STEAM's OGP grid from the stride, AW's mode for small networks
    m = create_model("resnet50", attn="steam", attn_kwargs={"ogp_size": "input/32"})
    assert [s.feature_stride for s in m.modules() if isinstance(s, STEAM)] == [4, 8, 16, 16, 32]
    assert {c.mode for c in create_model("resnet20", conv="aw").modules() if isinstance(c, AWConv2d)} == {"full"}
    assert {c.mode for c in create_model("resnet18", conv="aw").modules() if isinstance(c, AWConv2d)} == {"full_g"}
    with pytest.raises(ValueError, match="attn_kwargs .* configure an attention module, but the plan has none"):
        create_model("resnet20", attn_kwargs={"rd_ratio": 0.5})


@pytest.mark.parametrize("run", ["se_gct_aw", "steam"])
def test_runs_written_before_the_change_load_and_keep_their_accuracy(run, capsys):
    """Committed run folders of the ResNet that built attention itself (keys layerX.Y.attn, gct_stem, gctN):
    the documented key map applies on load, and evaluation gives the accuracy the run recorded."""
    from convattn.cli import main
    recorded = json.loads((LEGACY / run / "final.json").read_text())["val_top1"]
    assert main(["eval", "--run", str(LEGACY / run)]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["top1"] == recorded


def test_find_blocks_names_every_block_kind():
    blocks = find_blocks(USER["functional_x_plus_f"]())
    assert [(b.kind, b.target_name, b.module is None) for b in blocks] == [
        ("residual", "f1.3", True), ("residual", "f2.1", True)]  # additions in the network's own forward

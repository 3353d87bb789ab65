"""attach: attention in timm/torchvision CNNs; exact oracles (identity, parameter counts, convattn's own ResNets)."""
import re

import pytest
import timm
import torch
import torchvision
from torch import nn

from convattn import attach, create_model
from convattn.layers import AttentionModule, eca_kernel_size
from convattn.layers.contract import placement_stage_ends
from convattn.models import VERIFIED_BACKBONES
from convattn.models.weights import added_keys
from convattn.models.attach import BLOCK_RULES, ResidualScale, find_blocks, register_block
STEAM_DEFAULT_BLOCKS = {4: {1: [-1], 2: [-1], 3: [-1, -2], 4: [-1]}, 3: {1: [-1], 2: [-1, -2], 3: [-1]}}
from convattn.engine.optim import attention_parameter_names, param_groups


def _plain(name: str) -> nn.Module:
    lib, arch = name.split(":")
    return (torchvision.models.get_model(arch, weights=None) if lib == "torchvision" else timm.create_model(arch)).eval()


def _copy(name: str, base: nn.Module) -> nn.Module:
    m = _plain(name)
    m.load_state_dict(base.state_dict())
    return m


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", VERIFIED_BACKBONES)
def test_identity_at_insertion_every_kind(name):
    """identity=True: the attached network computes what the original computed (SE wrapped, GCT and AW as is)."""
    base = _plain(name)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y0 = base(x)
    for kw in (dict(attn="se"), dict(attn="gct"), dict(conv="aw")):
        m = attach(_copy(name, base), identity=True, **kw).eval()
        assert m.convattn_report.count() > 0
        with torch.no_grad():
            assert _rel(m(x), y0) <= 1e-5, (name, kw)


@pytest.mark.parametrize("attn", ["steam", "coord", "cbam", "eca", "se+gct"])
@pytest.mark.parametrize("name", ["torchvision:mobilenet_v3_large", "timm:regnety_002"])
def test_identity_other_modules(name, attn):
    base = _plain(name)
    for mod in base.modules():  # timm zero-initialises the last BN of each block: a zero branch hides any gate
        if isinstance(mod, nn.BatchNorm2d):
            nn.init.uniform_(mod.weight, 0.5, 1.5)
    x = torch.randn(2, 3, 64, 64)
    m = attach(_copy(name, base), attn, identity=True).eval()
    with torch.no_grad():
        assert _rel(m(x), base(x)) <= 1e-5
        # without identity the gated modules change the function (the oracle above is not vacuous)
        m2 = attach(_copy(name, base), attn.replace("+gct", "")).eval()
        assert _rel(m2(x), base(x)) > 1e-3


def _se_params(c: int) -> int:
    r = c // 16
    return 2 * c * r + r + c


def _coord_params(c: int) -> int:
    mip = max(8, c // 32)
    return 3 * c * mip + 3 * mip + 2 * c


RESNET50_BLOCK_CHANNELS = [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3


@pytest.mark.parametrize("name", ["torchvision:resnet50", "timm:resnet50"])
def test_parameter_counts_resnet50(name):
    """Exact added parameters: SE (official C//16), ECA (adaptive k), coord, STEAM (8 d = 64 per unit, 5 units),
    GCT (3 per input channel of every conv) - independent of how the modules count themselves."""
    chans = RESNET50_BLOCK_CHANNELS
    expected = {
        "se": sum(_se_params(c) for c in chans),
        "eca": sum(eca_kernel_size(c) for c in chans),
        "coord": sum(_coord_params(c) for c in chans),
        "steam": 5 * 64,
    }
    for attn, n in expected.items():
        assert attach(_plain(name), attn).convattn_report.added_params == n, attn
    assert expected["se"] == 2_530_992  # SE-ResNet-50 adds 2.53 M (28.09 M vs 25.56 M, Hu et al. Table 2)
    gct_inputs = sum(m.in_channels for m in _plain(name).modules() if isinstance(m, nn.Conv2d))
    assert attach(_plain(name), "gct").convattn_report.added_params == 3 * gct_inputs


def test_coord_backbone_count_with_identity_scales():
    r = attach(_plain("torchvision:resnet50"), "coord", identity=True).convattn_report
    assert r.added_params == sum(_coord_params(c) for c in RESNET50_BLOCK_CHANNELS) + 16  # one scale per block


@pytest.mark.parametrize("variant", ["se", "steam", "gct", "aw", "cbam+aw"])
def test_attached_torchvision_resnet50_equals_convattn_resnet50(variant):
    """Oracle: convattn's own ResNet-50 variant and torchvision's ResNet-50 with the same modules attached have the
    same parameters (renamed) and compute the same function."""
    torch.manual_seed(0)
    ours = create_model("resnet50", variant=variant).eval()
    attn, conv = (variant.replace("+aw", "").replace("aw", "") or None), ("aw" if "aw" in variant else None)
    tv = attach(torchvision.models.resnet50(weights=None), attn, conv).eval()
    assert sum(p.numel() for p in tv.parameters()) == sum(p.numel() for p in ours.parameters())

    def rename(k: str) -> str:
        k = k.replace("gct_stem.", "conv1.attn.")
        for i in (1, 2, 3):
            k = k.replace(f".gct{i}.", f".conv{i}.attn.")
        k = k.replace(".gct_ds.", ".downsample.0.attn.")
        return re.sub(r"^(layer\d\.\d+)\.attn\.", r"\1.bn3.attn.", k)  # block output: after the last BN

    sd = {rename(k): v for k, v in ours.state_dict().items()}
    tv.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert _rel(tv(x), ours(x)) <= 1e-5


def test_train_step_changes_inserted_parameters_and_state_dict_round_trip():
    name = "timm:mobilenetv3_large_100"
    for identity in (False, True):
        m = attach(_plain(name), "se", "aw", identity=identity).train()
        inserted = attention_parameter_names(m)
        assert inserted and all(".attn." in n or ".pw" in n for n in inserted)
        before = {n: p.detach().clone() for n, p in m.named_parameters() if n in inserted}
        opt = torch.optim.SGD(param_groups(m, 0.1, 0.0), lr=0.1)
        loss = m(torch.randn(4, 3, 64, 64)).logsumexp(1).mean()
        loss.backward()
        opt.step()
        changed = [n for n, p in m.named_parameters() if n in before and not torch.equal(p, before[n])]
        assert changed, identity
        if identity:  # the zero-initialised scales move first
            assert any(n.endswith(".attn.scale") for n in changed)
        m.eval()
        fresh = attach(_plain(name), "se", "aw", identity=identity).eval()
        fresh.load_state_dict(m.state_dict(), strict=True)
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(fresh(x), m(x))


def test_plain_pretrained_weights_load_and_identity_keeps_their_function(tmp_path):
    """A local state dict of the plain network loads into the attached network (the builder attaches, then loads;
    nothing downloaded): every plain tensor is loaded, only the added ones are new; with identity=True the attached
    model computes exactly what the pretrained plain model computes."""
    plain = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(plain.state_dict(), path)
    m = create_model("torchvision:resnet18", attn="cbam", num_classes=7, identity=True, pretrained_path=str(path)).eval()
    assert len(m.pretrained_report.loaded) == len(plain.state_dict())
    assert set(m.pretrained_report.missing) == added_keys(m) and added_keys(m)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), plain(x), rtol=1e-5, atol=1e-6)
    # grey images: the RGB stem is adapted (summed) as timm does, and the model runs on 1 channel
    g = create_model("torchvision:resnet18", attn="se", num_classes=7, in_chans=1, pretrained_path=str(path))
    assert g.conv1.weight.shape[1] == 1
    torch.testing.assert_close(g.conv1.weight, plain.conv1.weight.sum(1, keepdim=True))


def test_where_selects_stages_blocks_and_predicates():
    m = attach(_plain("torchvision:resnet50"), "se", where=[3, 4])
    assert m.convattn_report.count() == 9 and {r["stage"] for r in m.convattn_report.rows} == {2, 3}
    m = attach(_plain("torchvision:resnet50"), "se", where={1: [-1], 4: "all"})
    assert [(r["stage"], r["block"]) for r in m.convattn_report.rows] == [(0, 2), (3, 0), (3, 1), (3, 2)]
    m = attach(_plain("torchvision:resnet50"), "gct", where=lambda name, mod: name.startswith("layer4"))
    assert m.convattn_report.count() == 10  # 3 convs x 3 blocks + the downsample conv
    m = attach(_plain("torchvision:resnet50"), conv="aw", where=[4])
    assert m.convattn_report.count() == 3
    with pytest.raises(ValueError, match="stage 5 does not exist; this model has stages 1..4"):
        attach(_plain("torchvision:resnet50"), "se", where={5: [0]})


def test_steam_default_placement_is_the_registry_rule():
    for layers in ((3, 4, 6, 3), (2, 2, 2, 2), (3, 4, 23, 3), (3, 3, 3), (9, 9, 9)):
        rule = placement_stage_ends(list(layers))
        table = STEAM_DEFAULT_BLOCKS[len(layers)]
        assert rule == {(s - 1, b % layers[s - 1]) for s, idx in table.items() for b in idx}
    m = attach(_plain("timm:resnet50"), "steam")
    assert [(r["stage"], r["block"]) for r in m.convattn_report.rows] == [(0, 2), (1, 3), (2, 4), (2, 5), (3, 2)]


class _Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


class _MyBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.norm = nn.BatchNorm2d(c)

    def forward(self, x):
        return x + self.norm(self.conv(x))


def test_blocks_from_the_computation_and_register_block_overrides():
    m = attach(_Plain(), "se")  # no shortcut at all: the output of each stage (one stride here: the last ReLU)
    assert [r["where"] for r in m.convattn_report.rows] == ["body.3.attn"]
    assert m.convattn_report.block_kinds == {"stage": 1}
    assert attach(_Plain(), "gct").convattn_report.count() == 2  # convs need no blocks
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), _MyBlock(16), _MyBlock(16))
    m = attach(net, "se")  # x + norm(conv(x)): read off the addition, no rule needed
    assert [r["where"] for r in m.convattn_report.rows] == ["1.norm.attn", "2.norm.attn"]
    assert len(find_blocks(_copy_seq(net))) == 2
    register_block(_MyBlock, "conv")  # an override wins over what the pass reads
    try:
        m = attach(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), _MyBlock(16)), "se")
        assert [r["where"] for r in m.convattn_report.rows] == ["1.conv.attn"]
        assert m.convattn_report.block_kinds == {"registered": 1}
    finally:
        BLOCK_RULES.pop(f"{_MyBlock.__module__}.{_MyBlock.__qualname__}")
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        attach(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), "se")


def _copy_seq(net: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), _MyBlock(16), _MyBlock(16))


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown conv 'dw'"):
        attach(_plain("timm:regnety_002"), conv="dw")
    with pytest.raises(ValueError, match="'aw' is a convolution"):
        attach(_plain("timm:regnety_002"), "aw")
    with pytest.raises(ValueError, match="Unknown attention 'sse'"):
        attach(_plain("timm:regnety_002"), "sse")
    with pytest.raises(ValueError, match="conv_kwargs configure AW-convolution"):
        attach(_plain("timm:regnety_002"), "se", conv_kwargs={"mode": "out"})
    with pytest.raises(ValueError, match="Unknown timm model 'resnet5000'"):
        create_model("timm:resnet5000")
    with pytest.raises(ValueError, match="Unknown torchvision classification model"):
        create_model("torchvision:nope")
    m = attach(_plain("timm:regnety_002"), "se")
    with pytest.raises(ValueError, match="already has an attention attached"):
        attach(m, "eca")


def test_residual_scale_is_an_attention_module_kept_out_of_weight_decay():
    m = attach(_plain("timm:regnety_002"), "se", identity=True)
    scales = [n for n, mod in m.named_modules() if isinstance(mod, ResidualScale)]
    assert scales and all(isinstance(m.get_submodule(n).module, AttentionModule) for n in scales)
    groups = param_groups(m, 0.1, 1e-4)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert all(id(m.get_submodule(n).scale) in no_decay for n in scales)

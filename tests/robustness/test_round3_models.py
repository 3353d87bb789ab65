"""Issue 29, round 3, the model side (pretrained weights, num_classes=0, weights files, transformers, timm features,
TorchScript): each hostile or unusual input is refused in one line naming what was wrong and what would be right, or
gives the right result."""
import pytest
import timm
import torch
import torchvision
from torch import nn

from convattn import attach, create_model
from convattn.cli import main
from convattn.models import load_pretrained
from convattn.models.weights import added_keys
from convattn.models.backbones import load_state_file
from _errors import one_line_error  # noqa: E402 - beside this file (pytest puts its folder on sys.path)

_TRAIN = ["--epochs", "1", "--batch-size", "4", "--workers", "0", "--quiet", "--train-size", "32"]




def _save(tmp_path, name, model):
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    return {"r18": _save(d, "r18.pth", torchvision.models.resnet18()),
            "r34": _save(d, "r34.pth", torchvision.models.resnet34()),
            "r50": _save(d, "r50.pth", torchvision.models.resnet50()),
            "r20": _save(d, "r20.pth", create_model("resnet20")),
            "r32": _save(d, "r32.pth", create_model("resnet32"))}


# --- 1. another architecture's weights ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["torchvision:resnet18", "resnet18"])
@pytest.mark.parametrize("file, loaded", [("r50", 97), ("r20", None), ("r34", 120)])
def test_another_networks_weights_are_refused_unless_a_partial_load_is_asked_for(weights, name, file, loaded):
    """Case: a ResNet-50 file loaded 97 of ResNet-18's 122 tensors, a ResNet-20 file 14 (BN counters and a bias), a
    ResNet-34 file all of ResNet-18's and dropped the rest, without a word; now refused with the report and the
    option, and loaded only with pretrained_allow_partial=True."""
    with pytest.raises(ValueError, match="another network's weights") as e:
        create_model(name, num_classes=10, pretrained_path=str(weights[file]))
    msg = str(e.value)
    assert str(weights[file]) in msg and "pretrained_allow_partial=True" in msg and "--pretrained-partial" in msg
    if loaded:
        assert f"loaded {loaded} tensors" in msg  # LoadReport.summary(): what matched
    m = create_model(name, num_classes=10, pretrained_path=str(weights[file]), pretrained_allow_partial=True)
    assert m.pretrained_report.loaded and (loaded is None or len(m.pretrained_report.loaded) == loaded)
    with pytest.raises(ValueError, match="no weights file is given"):
        create_model(name, pretrained_allow_partial=True)


def test_load_pretrained_refuses_a_partial_state_dict_and_leaves_the_model_unchanged():
    m = torchvision.models.resnet18(num_classes=10)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    sd = torchvision.models.resnet50().state_dict()
    with pytest.raises(ValueError, match=r"allow_partial=True") as e:
        load_pretrained(m, sd)
    assert "loaded 97 tensors" in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    report = load_pretrained(m, sd, allow_partial=True)
    assert len(report.loaded) == 97 and torch.equal(m.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])
    no_head = {k: v for k, v in torchvision.models.resnet18(num_classes=10).state_dict().items()
               if not k.startswith("fc.")}
    with pytest.raises(ValueError, match=r"2 tensors of the network would stay at their initialisation \(fc.weight"):
        load_pretrained(m, no_head)  # a head missing from the file is not "another class count"


@pytest.mark.parametrize("name, kw", [
    ("torchvision:resnet18", dict(attn="cbam", num_classes=10)),           # new attention, new head
    ("torchvision:resnet18", dict(conv="aw", in_chans=1, num_classes=7)),  # grey stem adapted, AW's generator new
    ("torchvision:resnet18", dict(num_classes=0)),                         # no head: the file's head is not used
    ("resnet18", dict(attn="se", conv="aw")),                               # attached before loading: keys added
    ("resnet18", dict(attn="gct", num_classes=0)),
])
def test_plain_weights_load_completely_into_attached_networks(weights, name, kw):
    m = create_model(name, pretrained_path=str(weights["r18"]), **kw)
    r = m.pretrained_report
    assert len(r.loaded) == (122 if kw.get("num_classes", 1000) == 1000 else 120)  # all but a head of another size
    assert set(r.missing) <= added_keys(m)  # only what attach added is new (backbones: loaded before attaching)
    assert all(k.startswith("fc.") for k in r.unexpected + r.shape_mismatch)


def test_weights_of_an_attached_network_load_into_the_plain_one(tmp_path):
    """Attention tensors of the file are the only ones left unused: the plain network is complete."""
    path = _save(tmp_path, "se_aw.pth", create_model("resnet20", attn="se", conv="aw"))
    m = create_model("resnet20", pretrained_path=str(path))
    assert not m.pretrained_report.missing and not m.pretrained_report.shape_mismatch
    assert m.pretrained_report.unexpected and all(".attn." in k or ".pw" in k for k in m.pretrained_report.unexpected)


@pytest.mark.slow  # default-suite budget: covered in CI's slow run
def test_cli_refuses_a_partial_file_and_names_the_option(weights, tmp_path, capsys):
    """Case: a ResNet-20 file into torchvision:resnet18 was accepted by train; a ResNet-32 file into ResNet-20 (all
    of ResNet-20 matches, 54 tensors of the file unused) too."""
    assert main(["train", "--model", "torchvision:resnet18", "--pretrained-path", str(weights["r20"]),
                 "--out", str(tmp_path / "a"), *_TRAIN]) == 2
    one_line_error(capsys, "another network's weights", "--pretrained-partial", str(weights["r20"]))
    assert main(["train", "--pretrained-path", str(weights["r32"]), "--out", str(tmp_path / "b"), *_TRAIN]) == 2
    one_line_error(capsys, "tensors of the file would be left unused", "--pretrained-partial")
    assert main(["train", "--pretrained-path", str(weights["r32"]), "--pretrained-partial", "--out",
                 str(tmp_path / "c"), *_TRAIN]) == 0
    assert main(["train", "--pretrained-partial", "--out", str(tmp_path / "d"), *_TRAIN]) == 2
    one_line_error(capsys, "--pretrained-partial", "no --pretrained-path is given")


# --- 2. num_classes=0 means pooled features everywhere ---------------------------------------------------------------

@pytest.mark.parametrize("arch, width", [("resnet18", 512), ("mobilenet_v3_large", 1280), ("efficientnet_b0", 1280),
                                         ("convnext_tiny", 768), ("densenet121", 1024)])
def test_torchvision_num_classes_0_returns_pooled_features(arch, width):
    """Case: create_model("torchvision:resnet18", num_classes=0) returned (N, 0) logits."""
    m = create_model(f"torchvision:{arch}", num_classes=0).eval()
    assert m.num_features == width and m.num_classes == 0
    ref = create_model(f"torchvision:{arch}", num_classes=10).eval()
    m.load_state_dict(ref.state_dict(), strict=False)  # all but the classifier
    seen = []
    ref.get_submodule(ref.convattn_classifier[-1]).register_forward_hook(lambda mod, i, o: seen.append(i[0]))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y, _ = m(x), ref(x)
    assert y.shape == (2, width)
    torch.testing.assert_close(y, seen[0])  # exactly what the classifier of the 10-class network reads


def test_num_classes_0_means_the_same_for_convattn_timm_and_torchvision():
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for name in ("resnet18", "timm:resnet18", "torchvision:resnet18"):
            assert create_model(name, num_classes=0).eval()(x).shape == (2, 512), name
        assert create_model("torchvision:resnet18", attn="se", num_classes=0).eval()(x).shape == (2, 512)


# --- 3. weights files that are not what their name says --------------------------------------------------------------

@pytest.mark.parametrize("content", ["pickle", "truncated"])
def test_unreadable_safetensors_is_one_line_naming_the_file(tmp_path, capsys, content):
    """Case: SafetensorError escaped the CLI's error boundary (a traceback)."""
    from safetensors.torch import save_file
    path = tmp_path / "w.safetensors"
    if content == "pickle":
        torch.save(create_model("resnet20").state_dict(), path)
    else:
        save_file(create_model("resnet20").state_dict(), str(path))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="cannot read weights from .*w.safetensors as safetensors"):
        load_state_file(path)
    assert main(["train", "--pretrained-path", str(path), "--out", str(tmp_path / "run"), *_TRAIN]) == 2
    one_line_error(capsys, str(path), "safetensors")


def test_a_directory_as_weights_says_it_is_a_directory(tmp_path, capsys):
    """Case: a directory given as --pretrained-path "does not exist"."""
    with pytest.raises(ValueError, match="is a directory; a weights file is expected"):
        load_state_file(tmp_path)
    assert main(["train", "--pretrained-path", str(tmp_path), "--out", str(tmp_path / "run"), *_TRAIN]) == 2
    err = one_line_error(capsys, f"{tmp_path} is a directory; a weights file is expected")
    assert "does not exist" not in err


# --- 4. transformers are not CNNs ------------------------------------------------------------------------------------

def test_vision_transformer_is_refused_as_not_a_cnn(tmp_path, capsys):
    """Case: create_model("timm:vit_tiny_patch16_224", conv="aw") failed on timm's input-size assertion."""
    with pytest.raises(ValueError, match=r"not a CNN convattn can attach to: it has no residual convolutional "
                                         r"blocks; its only convolution is the patch embedding patch_embed.proj"):
        create_model("timm:vit_tiny_patch16_224", conv="aw")
    assert create_model("timm:vit_tiny_patch16_224", num_classes=3).num_classes == 3  # plain: still fine
    assert main(["train", "--model", "timm:vit_tiny_patch16_224", "--attn", "se", "--out", str(tmp_path),
                 *_TRAIN]) == 2
    one_line_error(capsys, "is not a CNN convattn can attach to", "patch embedding")


# --- 5. timm's features_only with the caller's feature_cfg -----------------------------------------------------------

@pytest.mark.parametrize("feature_cfg", [{"feature_cls": "fx"}, {"feature_cls": "hook"}, {"feature_cls": "dict"}])
def test_timm_features_only_takes_the_callers_feature_cfg(feature_cfg):
    """Case: build_model_with_cfg() got multiple values for keyword argument 'feature_cfg' (timm's
    test_model_forward_torchscript_with_features_fx passes feature_cfg={"feature_cls": "fx"})."""
    m = timm.create_model("convattn_resnet20_se", features_only=True, feature_cfg=dict(feature_cfg)).eval()
    with torch.no_grad():
        out = m(torch.randn(2, 3, 32, 32))
    out = list(out.values()) if isinstance(out, dict) else out
    assert [tuple(o.shape[1:]) for o in out] == [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]
    assert m.feature_info.channels() == [16, 16, 32, 64]
    m = timm.create_model("convattn_resnet20", features_only=True, feature_cfg=dict(feature_cfg), out_indices=(2, 3))
    assert m.feature_info.channels() == [32, 64]


def test_timm_features_fx_torchscript_is_the_documented_refusal():
    m = timm.create_model("convattn_resnet20_se", features_only=True, feature_cfg={"feature_cls": "fx"}).eval()
    with pytest.raises(NotImplementedError, match="do not support torch.jit.script"):
        torch.jit.script(m)


# --- 6. TorchScript on attached models --------------------------------------------------------------------------------

def test_torchscript_of_an_attached_model_is_refused_with_the_reason_and_the_routes():
    """Case: torch.jit.script on an attached model gave a raw TorchScript compilation traceback."""
    m = attach(torchvision.models.resnet18(), "se")
    with pytest.raises(NotImplementedError) as e:
        torch.jit.script(m)
    msg = str(e.value)
    assert "\n" not in msg
    for fragment in ("attach()ed modules", "torch.jit.script", "TorchScript", "torch.export.export",
                     "torch.onnx.export", "torch.jit.trace"):
        assert fragment in msg, (fragment, msg)
    assert isinstance(m.layer1[0].bn2.attn, nn.Module)  # the model is unchanged and still runs
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 1000)

"""convattn ResNets behave as timm models: the generic contract of timm's model tests, written for our models
(forward/backward, pretrained_cfg and data config, classifier API, features_only, forward_intermediates,
stochastic depth, gradient checkpointing, group_matcher, local weights, fx feature extraction)."""
import warnings

import pytest
import timm
import torch
from timm.data import resolve_data_config
from timm.layers import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor

import convattn  # noqa: F401  (registers convattn_* with timm)
from convattn.layers import STEAM

VARIANTS = ["none", "se", "cbam", "eca", "gct", "steam", "aw", "coord", "se+aw", "steam@all"]
MODELS = [("convattn_resnet20", 32), ("convattn_resnet18", 64)]


def _model(name, variant, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, variant=variant, **kw)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name, size", MODELS)
def test_forward_backward_classifier_and_intermediates(name, size, variant):
    m = _model(name, variant, num_classes=7).train()
    x = torch.randn(2, 3, size, size)
    out = m(x)
    assert out.shape == (2, 7)
    out.mean().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    m.eval()
    # classifier API
    assert m.get_classifier() is m.fc and m.head_hidden_size == m.num_features
    feats = m.forward_features(x)
    assert m.forward_head(feats, pre_logits=True).shape == (2, m.num_features)
    m.reset_classifier(0)
    assert m(x).shape == (2, m.num_features)
    m.reset_classifier(5, "catavgmax")
    assert m(x).shape == (2, 5) and m.fc.in_features == 2 * m.num_features
    # forward_intermediates follows feature_info (channels and reductions)
    final, inter = m.forward_intermediates(x)
    torch.testing.assert_close(final, feats)
    assert [t.shape[1] for t in inter] == [f["num_chs"] for f in m.feature_info]
    assert [size // t.shape[-1] for t in inter] == [f["reduction"] for f in m.feature_info]
    last2 = m.forward_intermediates(x, indices=2, intermediates_only=True)
    assert [t.shape for t in last2] == [t.shape for t in inter[-2:]]


@pytest.mark.parametrize("name, size", MODELS)
def test_pretrained_cfg_and_data_config(name, size):
    m = timm.create_model(name)
    cfg = resolve_data_config(model=m)
    assert cfg["input_size"] == (3, size if size == 32 else 224, size if size == 32 else 224)
    assert m.pretrained_cfg["first_conv"] == "conv1" and m.pretrained_cfg["classifier"] == "fc"
    assert m.default_cfg is m.pretrained_cfg and not m.pretrained_cfg.get("url")
    assert m.num_classes == (10 if size == 32 else 1000)


@pytest.mark.parametrize("variant", ["none", "cbam+aw", "steam"])
@pytest.mark.parametrize("name, size", MODELS)
def test_features_only(name, size, variant):
    f = _model(name, variant, features_only=True).eval()
    x = torch.randn(2, 3, size, size)
    outs = f(x)
    assert [t.shape[1] for t in outs] == f.feature_info.channels()
    assert [size // t.shape[-1] for t in outs] == f.feature_info.reduction()
    f2 = _model(name, variant, features_only=True, out_indices=(1, 3))
    assert len(f2(x)) == 2
    ref = _model(name, variant).eval()
    with torch.no_grad():
        torch.testing.assert_close(outs[-1], ref.forward_features(x))  # same weights for the same seed


def test_drop_path_grad_checkpointing_and_group_matcher():
    m = _model("convattn_resnet18", "se", drop_path_rate=0.2)
    rates = [b.drop_path.drop_prob for s in (m.layer1, m.layer2, m.layer3, m.layer4) for b in s
             if isinstance(b.drop_path, timm.layers.DropPath)]
    assert rates == pytest.approx([0.2 * i / 7 for i in range(1, 8)])
    m.eval()
    x = torch.randn(2, 3, 64, 64)
    ref = m(x)
    m.set_grad_checkpointing(True)
    torch.testing.assert_close(m(x), ref)
    m.train()
    m(x).sum().backward()
    from timm.models import group_parameters
    groups = group_parameters(m, m.group_matcher(coarse=False))
    assert len(groups) == 1 + 8 + 1  # stem, 8 blocks, the rest (classifier)
    assert sum(len(v) for v in groups.values()) == len(list(m.parameters()))


def test_local_weights_through_pretrained_cfg_overlay(tmp_path):
    plain = timm.create_model("convattn_resnet20", num_classes=10)
    path = tmp_path / "r20.pth"
    torch.save(plain.state_dict(), path)
    m = timm.create_model("convattn_resnet20", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(m.state_dict()["conv1.weight"], plain.state_dict()["conv1.weight"])
    se = timm.create_model("convattn_resnet20", attn="se", pretrained=True, num_classes=4,
                           pretrained_cfg_overlay=dict(file=str(path)))  # new keys (SE) and a new classifier
    torch.testing.assert_close(se.layer2[0].conv1.weight, plain.layer2[0].conv1.weight)
    with pytest.raises(ValueError, match="no downloadable weights"):
        timm.create_model("convattn_resnet20", pretrained=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fx_feature_extraction(variant):
    """timm's fx tracing (its registered leaf modules: STEAM, AWConv2d) reproduces the eager model bit for bit;
    torchvision's create_feature_extractor and plain torch.fx.symbolic_trace trace through AW (its export path:
    the same maths, another summation order) and every variant but STEAM, whose graph depends on the map size."""
    m = _model("convattn_resnet20", variant).eval()
    x = torch.randn(2, 3, 32, 32)
    leaf = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timm_fx = create_feature_extractor(m, {"layer3": "out"}, tracer_kwargs=leaf)
        fe = create_feature_extractor(m, {"layer2": "mid", "layer3": "out"}, tracer_kwargs={"leaf_modules": [STEAM]})
        with torch.no_grad():
            eager = m.forward_features(x)
            torch.testing.assert_close(timm_fx(x)["out"], eager, rtol=0, atol=0)
            torch.testing.assert_close(fe(x)["out"], eager, rtol=1e-4, atol=1e-4)
        if "steam" not in variant:
            g = torch.fx.symbolic_trace(m)
            with torch.no_grad():
                torch.testing.assert_close(g(x), m(x), rtol=1e-4, atol=1e-4)
        f = _model("convattn_resnet20", variant, features_only=True, feature_cls="fx")
        assert [t.shape[1] for t in f(x)] == [16, 16, 32, 64]


def test_named_variants_are_timm_models():
    from convattn.models.timm_models import NAMED_VARIANTS, timm_name
    names = [n for n in timm.list_models("convattn_*") if n != "convattn_attached"]  # that one: shared folders
    assert len(names) == 10 * (1 + len(NAMED_VARIANTS)) == 100
    assert timm_name("resnet50", "cbam+aw") == "convattn_resnet50_cbam_aw" and "convattn_resnet50_cbam_aw" in names
    m = timm.create_model("convattn_resnet20_se_aw", num_classes=3)
    ref = timm.create_model("convattn_resnet20", variant="se+aw", num_classes=3)
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert timm.get_pretrained_cfg("convattn_resnet20_steam").input_size == (3, 32, 32)
    with pytest.raises(ValueError, match="is the 'se' variant"):
        timm.create_model("convattn_resnet20_se", attn="cbam")


@pytest.mark.parametrize("variant", ["none", "steam", "aw", "gct"])
def test_factory_device_dtype_and_head_reset(variant):
    m = timm.create_model("convattn_resnet20", variant=variant, device="meta", dtype=torch.float64)
    assert {t.device.type for t in [*m.parameters(), *m.buffers()]} == {"meta"}
    assert {p.dtype for p in m.parameters()} == {torch.float64}
    out = m.forward_features(torch.randn(1, 3, 32, 32, device="meta", dtype=torch.float64))
    assert out.shape == (1, 64, 8, 8)
    m.eval().reset_classifier(4)  # the new head where the model is, in its mode
    assert (m.fc.weight.device.type, m.fc.weight.dtype, m.fc.training) == ("meta", torch.float64, False)
    flat = timm.create_model("convattn_resnet20", variant=variant, num_classes=0, global_pool="")
    assert flat(torch.randn(1, 3, 32, 32)).shape == (1, 64, 8, 8)  # no pooling: the unpooled map
    with pytest.raises(TypeError):
        timm.create_model("convattn_resnet20", not_a_model_arg=1)


def test_bf16_model_gives_bf16_output():
    m = timm.create_model("convattn_resnet20_steam").eval().to(torch.bfloat16)
    assert m(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_torchscript_is_refused_with_the_reason_and_trace_works():
    m = timm.create_model("convattn_resnet20_se").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with pytest.raises(NotImplementedError, match="torch.export.export"):
            torch.jit.script(m)
        from convattn.layers import AWConv2d
        for module in (STEAM(16), AWConv2d(8, 8, 3, padding=1)):  # also inside an fx graph (timm's fx-script test)
            with pytest.raises(NotImplementedError, match=f"{type(module).__name__} modules do not support"):
                torch.jit.script(module)
        x = torch.randn(2, 3, 32, 32)
        traced = torch.jit.trace(m, x)
    torch.testing.assert_close(traced(x), m(x))

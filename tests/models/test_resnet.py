"""Attention ResNets: exact parameter counts, torchvision compatibility, identity at init, placement."""
import pytest
import timm
import torch
import torchvision

from convattn.layers import AWConv2d, GCT, STEAM
from convattn.models import create_model, list_models, load_pretrained, parse_variant


def nparams(m):
    return sum(p.numel() for p in m.parameters())


# specs/modules.md section 8 (ImageNet, 1000 classes)
EXACT = [
    ("resnet18", {}, 11_689_512), ("resnet34", {}, 21_797_672), ("resnet50", {}, 25_557_032),
    ("resnet101", {}, 44_549_160), ("resnet152", {}, 60_192_808),
    ("resnet50", dict(attn="se"), 28_088_024), ("resnet50", dict(attn="cbam"), 28_089_624),
    ("resnet50", dict(attn="eca", attn_kwargs=dict(kernel_size=[3, 5, 5, 7])), 25_557_112),
    ("resnet50", dict(attn="eca"), 25_557_112),
    ("resnet50", dict(attn="eca", eca_kernels="adaptive"), 25_557_118), ("resnet50", dict(attn="gct"), 25_624_625),
    ("resnet50", dict(attn="steam"), 25_557_352), ("resnet50", dict(attn="steam", attn_blocks="all"), 25_558_056),
    ("resnet50", dict(conv="aw", conv_kwargs=dict(mode="out")), 25_718_228),
    ("resnet50", dict(conv="aw", conv_kwargs=dict(mode="full_g")), 28_150_804),
    ("resnet50", dict(conv="aw", conv_kwargs=dict(mode="full")), 58_924_052),
    ("resnet18", dict(attn="se"), 11_778_592), ("resnet18", dict(attn="cbam"), 11_779_392),
    ("resnet34", dict(attn="se"), 21_958_868), ("resnet34", dict(attn="cbam"), 21_960_468),
    ("resnet101", dict(attn="se"), 49_326_872), ("resnet101", dict(attn="cbam"), 49_330_172),
    ("resnet18", dict(attn="gct"), 11_689_512 + 11_529), ("resnet101", dict(attn="gct"), 44_549_160 + 145_929),
]


@pytest.mark.parametrize("name,kwargs,expected", EXACT)
def test_exact_parameter_counts(name, kwargs, expected):
    with torch.device("meta"):
        m = create_model(name, **kwargs)
    assert nparams(m) == expected


def test_unit_counts():
    m = create_model("resnet50", attn="gct")
    assert sum(isinstance(x, GCT) for x in m.modules()) == 53
    assert sum(isinstance(x, STEAM) for x in create_model("resnet50", attn="steam").modules()) == 5
    assert sum(isinstance(x, AWConv2d) for x in create_model("resnet50", conv="aw").modules()) == 16
    assert sum(isinstance(x, AWConv2d) for x in create_model("resnet18", conv="aw").modules()) == 16
    assert sum(isinstance(x, AWConv2d) for x in create_model("resnet20", conv="aw").modules()) == 18
    m = create_model("resnet50", attn="gct", gct_placement="per_block")
    assert sum(isinstance(x, GCT) for x in m.modules()) == 16


def test_cifar_resnets():
    # He et al. 2016: 0.27 M / 0.85 M / 1.7 M parameters for depth 20 / 56 / 110
    assert nparams(create_model("resnet20")) == 269_722
    assert round(nparams(create_model("resnet56")) / 1e6, 2) == 0.85
    assert round(nparams(create_model("resnet110")) / 1e6, 1) == 1.7
    m = create_model("resnet20", num_classes=100, in_chans=1)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 100)
    # AW V-FULL on CIFAR ResNet-20 adds 0.15 M (specs/modules.md cost table)
    assert nparams(create_model("resnet20", conv="aw")) - 269_722 == 151_048


def test_torchvision_weights_load_exactly():
    tv = torchvision.models.resnet18(weights=None).eval()
    ours = create_model("resnet18").eval()
    report = load_pretrained(ours, tv.state_dict(), strict=True)
    assert not report.missing and not report.unexpected
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), tv(x))


@pytest.mark.parametrize("variant", ["aw", "gct", "gct+aw"])
def test_identity_at_init_variants_reproduce_plain_weights(variant):
    tv = torchvision.models.resnet18(weights=None).eval()
    m = create_model("resnet18", variant=variant).eval()
    report = load_pretrained(m, tv.state_dict())
    assert report.missing and not report.unexpected and not report.shape_mismatch
    assert all(("pw" in k) or (".attn." in k) for k in report.missing)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(m(x), tv(x), atol=1e-5, rtol=1e-4)


def test_non_strict_report_for_gated_variant_and_class_mismatch():
    tv = torchvision.models.resnet18(weights=None)
    m = create_model("resnet18", attn="se", num_classes=10)
    report = load_pretrained(m, tv.state_dict())
    assert any(k.endswith("attn.fc1.weight") for k in report.missing)
    assert any(k.startswith("fc.weight") for k in report.shape_mismatch)
    assert "new in the model" in report.summary()
    with pytest.raises(ValueError, match="does not match"):
        load_pretrained(m, tv.state_dict(), strict=True)


def test_placement_of_block_attention():
    m = create_model("resnet50", attn="se")
    for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
        for blk in layer:
            assert blk.bn3.attn.channels == blk.bn3.num_features  # output width (4 * planes)
    m = create_model("resnet50", attn="steam")
    placed = [(s, b) for s, layer in enumerate((m.layer1, m.layer2, m.layer3, m.layer4))
              for b, blk in enumerate(layer) if isinstance(getattr(blk.bn3, "attn", None), STEAM)]
    assert placed == [(0, 2), (1, 3), (2, 4), (2, 5), (3, 2)]
    m = create_model("resnet50", attn="steam", attn_blocks={4: [0]})
    assert isinstance(m.layer4[0].bn3.attn, STEAM) and sum(isinstance(x, STEAM) for x in m.modules()) == 1
    m = create_model("resnet50", attn="eca", attn_kwargs=dict(kernel_size=[3, 5, 5, 7]))
    assert [layer[0].bn3.attn.kernel_size for layer in (m.layer1, m.layer2, m.layer3, m.layer4)] == [3, 5, 5, 7]


def test_variant_strings_and_combinations():
    assert parse_variant("se+aw") == {"attn": "se", "conv": "aw"}
    assert parse_variant("none") == {"attn": None, "conv": None}
    assert parse_variant("steam@all") == {"attn": "steam", "conv": None, "attn_blocks": "all"}
    m = create_model("resnet20", variant="cbam+aw")
    assert isinstance(m.layer1[0].conv1, AWConv2d) and type(m.layer1[0].bn2.attn).__name__ == "CBAM"
    with pytest.raises(ValueError, match="Valid names"):
        parse_variant("se+xyz")


def test_no_weight_decay_names_gct_beta():
    m = create_model("resnet20", attn="gct")
    names = m.no_weight_decay()
    assert names and all(n.endswith("beta") for n in names)
    params = dict(m.named_parameters())
    assert all(n in params for n in names)
    assert len(names) == sum(isinstance(x, GCT) for x in m.modules())


def test_timm_registration():
    assert "convattn_resnet50" in timm.list_models("convattn_*")
    m = timm.create_model("convattn_resnet20", attn="steam", num_classes=7)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_errors():
    with pytest.raises(ValueError, match="Valid names: resnet18"):
        create_model("resnet51")
    with pytest.raises(ValueError, match="download"):
        create_model("resnet18", pretrained=True)
    with pytest.raises(ValueError, match="Unknown conv"):
        create_model("resnet18", conv="dynamic")
    with pytest.raises(ValueError, match="stage 5"):
        create_model("resnet18", attn="se", attn_blocks={5: [0]})
    with pytest.raises(ValueError, match=r"expects input \(N, 3, H, W\)"):
        create_model("resnet20")(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="per-stage"):
        create_model("resnet20", attn="eca", attn_kwargs=dict(kernel_size=[3, 5]))
    assert list_models()[:2] == ["resnet18", "resnet20"]


ALL_VARIANTS = ["none", "se", "cbam", "eca", "gct", "steam", "aw", "se+aw", "cbam+aw", "steam@all"]


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_every_parameter_gets_a_gradient(variant):
    m = create_model("resnet20", variant=variant, conv_kwargs=dict(init="small") if "aw" in variant else None)
    m(torch.randn(2, 3, 16, 16)).logsumexp(1).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_trace_channels_last_and_bf16(variant):
    m = create_model("resnet20", variant=variant, conv_kwargs=dict(init="small") if "aw" in variant else None).eval()
    x = torch.randn(2, 3, 20, 24)
    y = m(x)
    traced = torch.jit.trace(m, x, check_trace=False)
    torch.testing.assert_close(traced(x), y, atol=1e-5, rtol=1e-4)
    mc = m.to(memory_format=torch.channels_last)
    torch.testing.assert_close(mc(x.to(memory_format=torch.channels_last)), y, atol=1e-4, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(m(x)).all()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["steam", "aw", "cbam+aw", "gct"])
def test_torch_compile(variant):
    torch._dynamo.reset()  # compiles of other tests (other shapes, same forward code) would make shapes dynamic
    m = create_model("resnet20", variant=variant, conv_kwargs=dict(init="small") if "aw" in variant else None).eval()
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(m)
    torch.testing.assert_close(compiled(x), m(x), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["steam", "aw", "coord", "cbam+aw"])
def test_torch_compile_captures_training_in_one_graph(variant):
    """torch._dynamo.explain of a training forward (STEAM's fused-gate autograd function, AW's taps/fold choice):
    one graph, no graph breaks."""
    import torch._dynamo as dynamo
    m = create_model("resnet20", variant=variant).train()
    dynamo.reset()
    e = dynamo.explain(lambda x: m(x).sum())(torch.randn(4, 3, 32, 32))
    assert (e.graph_count, e.graph_break_count) == (1, 0), [str(b.reason) for b in e.break_reasons]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["none", "se", "cbam", "eca", "gct", "steam", "aw", "se+aw", "cbam+aw"])
def test_resnet50_forward_odd_input(variant):
    m = create_model("resnet50", variant=variant, num_classes=10).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 97, 75)).shape == (1, 10)


def test_stride_in_1x1_layout():
    """ResNet v1 (official GCT networks): the stride on the first 1x1 conv; same parameters, other feature maps."""
    v15 = create_model("resnet50", attn="gct")
    v1 = create_model("resnet50", attn="gct", stride_in_1x1=True)
    assert sum(p.numel() for p in v1.parameters()) == sum(p.numel() for p in v15.parameters())
    blk = v1.layer3[0]
    assert (blk.conv1.stride, blk.conv2.stride) == ((2, 2), (1, 1))
    assert (v15.layer3[0].conv1.stride, v15.layer3[0].conv2.stride) == ((1, 1), (2, 2))
    seen = {}
    for name, m in (("v1", v1), ("v15", v15)):
        h = m.layer3[0].conv2.attn.register_forward_pre_hook(lambda mod, a, _n=name: seen.update({_n: a[0].shape[-1]}))
        m.eval()(torch.randn(1, 3, 64, 64))
        h.remove()
    assert seen == {"v1": 4, "v15": 8}  # GCT before the 3x3 conv: the downsampled map in v1, the full one in v1.5
    with pytest.raises(ValueError, match="stride_in_1x1 applies to Bottleneck"):
        create_model("resnet18", stride_in_1x1=True)

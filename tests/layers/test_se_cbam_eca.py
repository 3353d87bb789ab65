"""SE, CBAM, ECA against their official definitions, exact widths, and timm's implementations."""
import pytest
import timm.layers
from timm.layers.cbam import CbamModule
import torch
import torch.nn.functional as F

from convattn.layers import CBAM, ECA, SEModule, eca_kernel_size, make_divisible
from convattn.models import create_model


@pytest.mark.parametrize("c,ratio,div,expected", [(64, 1 / 16, 1, 4), (54, 1 / 16, 1, 3), (56, 1 / 16, 1, 3),
                                                   (64, 1 / 16, 8, 8), (2048, 1 / 16, 1, 128), (20, 1 / 16, 1, 1),
                                                   (100, 0.25, 8, 24)])
def test_se_hidden_width(c, ratio, div, expected):
    assert SEModule(c, rd_ratio=ratio, rd_divisor=div).rd_channels == expected
    assert make_divisible(c * ratio, div) == expected


@pytest.mark.parametrize("c", [16, 64, 256, 2048])
def test_se_param_formula(c):
    cr = c // 16
    assert sum(p.numel() for p in SEModule(c).parameters()) == 2 * c * cr + cr + c


def test_se_math_and_gate_range():
    m = SEModule(32).double()
    x = torch.randn(2, 32, 7, 9, dtype=torch.float64)
    s = x.mean((2, 3))
    h = F.relu(s @ m.fc1.weight[:, :, 0, 0].T + m.fc1.bias)
    a = torch.sigmoid(h @ m.fc2.weight[:, :, 0, 0].T + m.fc2.bias)
    torch.testing.assert_close(m(x), x * a[:, :, None, None])
    g = m.attention(x)["channel"]
    assert g.shape == (2, 32, 1, 1) and (g > 0).all() and (g < 1).all()


def test_se_matches_timm():
    ours = SEModule(64)
    ref = timm.layers.SEModule(64, rd_ratio=1 / 16, rd_divisor=1)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 64, 5, 6)
    torch.testing.assert_close(ours(x), ref(x))


def _official_cbam(m: CBAM, x):
    """Independent re-statement of Jongchan/attention-module's CBAM (MLP on flattened pools, max-first)."""
    w1, b1 = m.channel_gate.fc1.weight[:, :, 0, 0], m.channel_gate.fc1.bias
    w2, b2 = m.channel_gate.fc2.weight[:, :, 0, 0], m.channel_gate.fc2.bias
    mlp = lambda v: F.relu(v @ w1.T + b1) @ w2.T + b2  # noqa: E731
    att = mlp(F.avg_pool2d(x, x.shape[2:]).flatten(1)) + mlp(F.max_pool2d(x, x.shape[2:]).flatten(1))
    xc = x * torch.sigmoid(att)[:, :, None, None]
    pooled = torch.cat([xc.max(1, keepdim=True)[0], xc.mean(1, keepdim=True)], 1)
    bn = m.spatial_gate.bn
    s = F.batch_norm(F.conv2d(pooled, m.spatial_gate.conv.weight, padding=3), bn.running_mean, bn.running_var,
                     bn.weight, bn.bias, False, 0.0, bn.eps)
    return xc * torch.sigmoid(s)


def test_cbam_matches_official_definition():
    m = CBAM(32).double().eval()
    with torch.no_grad():
        m.spatial_gate.bn.running_mean.fill_(0.3)
        m.spatial_gate.bn.running_var.fill_(2.0)
    x = torch.randn(2, 32, 9, 11, dtype=torch.float64)
    torch.testing.assert_close(m(x), _official_cbam(m, x))


def test_cbam_counts_and_bn_settings():
    m = CBAM(256)
    assert sum(p.numel() for p in m.parameters()) == 2 * 256 * 16 + 16 + 256 + 100
    assert m.spatial_gate.bn.momentum == 0.01 and m.spatial_gate.bn.eps == 1e-5
    assert m.spatial_gate.conv.bias is None


def test_cbam_concat_order_max_first():
    m = CBAM(4, rd_channels=1, init="pytorch").double().eval()  # BN weight 1: the conv tap reaches the gate
    with torch.no_grad():
        m.channel_gate.fc2.weight.zero_()
        m.channel_gate.fc2.bias.fill_(50.0)  # channel gate ~ 1
        m.spatial_gate.conv.weight.zero_()
        m.spatial_gate.conv.weight[0, 0, 3, 3] = 1.0  # picks the first pooled map at the centre tap
    x = torch.zeros(1, 4, 3, 3, dtype=torch.float64)
    x[0, 0, 1, 1] = 4.0  # max over channels 4, mean 1
    ms = m.attention(x)["spatial"]
    assert ms[0, 0, 1, 1].item() == pytest.approx(torch.sigmoid(torch.tensor(4.0)).item(), rel=1e-4)


def test_cbam_no_spatial_constant_input():
    m = CBAM(16, no_spatial=True).double()
    x = torch.randn(2, 16, 1, 1, dtype=torch.float64).expand(2, 16, 5, 5).contiguous()
    mlp = m.channel_gate.fc2(m.channel_gate.act(m.channel_gate.fc1(x[:, :, :1, :1])))
    torch.testing.assert_close(m(x), x * torch.sigmoid(2 * mlp))


def test_cbam_matches_timm_with_biased_mlp():
    """timm concatenates (mean, max); swapping the conv's input channels maps the weights across."""
    ours = CBAM(64).eval()
    ref = CbamModule(64, rd_ratio=1 / 16, rd_divisor=1, mlp_bias=True).eval()
    sd = ref.state_dict()
    sd["channel.fc1.weight"], sd["channel.fc1.bias"] = ours.channel_gate.fc1.weight, ours.channel_gate.fc1.bias
    sd["channel.fc2.weight"], sd["channel.fc2.bias"] = ours.channel_gate.fc2.weight, ours.channel_gate.fc2.bias
    sd["spatial.conv.conv.weight"] = ours.spatial_gate.conv.weight.flip(1)
    for k in ("weight", "bias", "running_mean", "running_var"):
        sd[f"spatial.conv.bn.{k}"] = getattr(ours.spatial_gate.bn, k)
    ref.load_state_dict(sd)
    x = torch.randn(2, 64, 7, 5)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("c,k", [(8, 3), (64, 3), (127, 3), (128, 5), (256, 5), (1024, 5), (2048, 7), (8192, 7)])
def test_eca_adaptive_kernel(c, k):
    assert eca_kernel_size(c) == k
    assert ECA(c).kernel_size == k
    assert sum(p.numel() for p in ECA(c).parameters()) == k


def test_eca_equals_direct_conv1d_and_timm():
    m = ECA(64, kernel_size=5).double()
    x = torch.randn(2, 64, 6, 4, dtype=torch.float64)
    y = F.conv1d(x.mean((2, 3))[:, None], m.conv.weight, padding=2)
    torch.testing.assert_close(m(x), x * torch.sigmoid(y)[:, 0, :, None, None])
    ref = timm.layers.EcaModule(None, kernel_size=5).double()
    ref.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x), ref(x))


def test_eca_circular_roll_equivariance():
    x = torch.randn(2, 32, 5, 5, dtype=torch.float64)
    circ = ECA(32, kernel_size=5, padding="circular").double()
    zero = ECA(32, kernel_size=5).double()
    zero.load_state_dict(circ.state_dict())
    torch.testing.assert_close(circ(x.roll(3, 1)), circ(x).roll(3, 1))
    assert not torch.allclose(zero(x.roll(3, 1)), zero(x).roll(3, 1))


@pytest.mark.parametrize("module", [lambda: SEModule(24), lambda: CBAM(24), lambda: ECA(24)])
@pytest.mark.parametrize("shape", [(1, 24, 1, 1), (3, 24, 7, 13), (2, 24, 17, 5)])
def test_shapes_channels_last_and_errors(module, shape):
    m = module().eval()
    x = torch.randn(shape)
    y = m(x)
    assert y.shape == x.shape
    torch.testing.assert_close(m(x.to(memory_format=torch.channels_last)), y, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="24 channels"):
        m(torch.randn(2, 12, 5, 5))
    with pytest.raises(ValueError, match="4-D"):
        m(torch.randn(24, 5, 5))


def test_bad_options():
    with pytest.raises(ValueError, match="odd"):
        ECA(64, kernel_size=4)
    with pytest.raises(ValueError, match="pool_types"):
        CBAM(64, pool_types=("avg", "median"))
    with pytest.raises(ValueError, match="Unknown activation"):
        SEModule(64, act_layer="swishy")


def test_cbam_official_initialisation():
    """The official ResNet's rule (Jongchan/attention-module model_resnet.py): biases 0, spatial BN weight 0 (a fresh
    spatial gate is 0.5 everywhere), spatial 7x7 conv Kaiming-normal fan_out; ``init="pytorch"`` keeps the layers'
    defaults."""
    torch.manual_seed(0)
    m = CBAM(512)
    g, s = m.channel_gate, m.spatial_gate
    assert m.init == "official" and "init=official" in repr(m)
    assert torch.count_nonzero(g.fc1.bias) == 0 and torch.count_nonzero(g.fc2.bias) == 0
    assert torch.count_nonzero(s.bn.weight) == 0 and torch.count_nonzero(s.bn.bias) == 0
    # Kaiming-normal, fan_out = 1 * 7 * 7, gain sqrt(2): std sqrt(2 / 49); checked over many draws
    w = torch.cat([CBAM(16).spatial_gate.conv.weight.flatten() for _ in range(200)])
    assert w.mean().abs() < 0.01 and w.std().item() == pytest.approx((2 / 49) ** 0.5, rel=0.03)
    bound = 1 / 512 ** 0.5  # MLP weights keep PyTorch's default (kaiming-uniform a=sqrt(5): |w| <= 1/sqrt(fan_in))
    assert g.fc1.weight.abs().max() <= bound and g.fc1.weight.abs().max() > 0.9 * bound
    x = torch.randn(2, 512, 6, 6)
    for mode in (True, False):
        assert torch.equal(m.train(mode).attention(x)["spatial"], torch.full((2, 1, 6, 6), 0.5))
    old = CBAM(512, init="pytorch")
    assert torch.all(old.spatial_gate.bn.weight == 1) and torch.count_nonzero(old.channel_gate.fc1.bias) > 0
    with pytest.raises(ValueError, match="init must be one of"):
        CBAM(16, init="xavier")
    r = create_model("resnet20", attn="cbam")  # the model's init pass restores the module's own rule
    assert all(torch.count_nonzero(b.bn2.attn.spatial_gate.bn.weight) == 0 for b in r.layer1)


def test_eca_kernel_sizes_of_the_released_resnet50():
    def sizes(m):
        blocks = [m.get_submodule(f"layer{i}.0") for i in (1, 2, 3, 4)]
        return [(getattr(b, "bn3", None) or b.bn2).attn.kernel_size for b in blocks]

    def attn_params(m):
        return sum(p.numel() for n, p in m.named_parameters() if ".attn." in n)
    released = create_model("resnet50", attn="eca")
    assert sizes(released) == [3, 5, 5, 7] and attn_params(released) == 80  # ECA-Net50's figure
    adaptive = create_model("resnet50", attn="eca", eca_kernels="adaptive")
    assert sizes(adaptive) == [5, 5, 5, 7] and attn_params(adaptive) == 86
    assert sizes(create_model("resnet101", attn="eca")) == [3, 5, 5, 7]
    assert sizes(create_model("resnet18", attn="eca")) == [3, 5, 5, 5]  # no released network: the formula
    given = create_model("resnet50", attn="eca", attn_kwargs={"kernel_size": 9})
    assert sizes(given) == [9, 9, 9, 9]
    with pytest.raises(ValueError, match="eca_kernels"):
        create_model("resnet20", attn="eca", eca_kernels="released")  # 3 stages

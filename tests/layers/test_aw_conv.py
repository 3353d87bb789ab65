"""AWConv2d against an independent per-sample reference (forward and gradients, float64) and the spec's oracles."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convattn.layers import AWConv2d, SEModule


def reference(x, weight, bias, attn, stride, padding, dilation, groups, residual=True):
    """Slow oracle: one F.conv2d per sample with K * (1 + A_n) (or K * A_n)."""
    outs = []
    for n in range(x.shape[0]):
        a = attn[n].expand_as(weight)
        k = weight * (1 + a) if residual else weight * a
        outs.append(F.conv2d(x[n:n + 1], k, bias, stride, padding, dilation, groups))
    return torch.cat(outs)


GEOMS = [  # (cin, cout, k, stride, padding, dilation, groups, bias, H, W)
    (8, 12, 3, 1, 1, 1, 1, False, 9, 9),
    (8, 12, 3, 2, 1, 1, 1, True, 9, 7),
    (8, 8, 3, 1, 2, 2, 2, False, 10, 13),
    (6, 4, (3, 1), (2, 1), (1, 0), 1, 1, True, 7, 5),
    (4, 6, 1, 1, 0, 1, 1, False, 5, 6),
    (8, 8, 3, 1, 1, 1, 8, False, 6, 6),  # depthwise
]


@pytest.mark.parametrize("geom", GEOMS)
@pytest.mark.parametrize("mode", ["full", "full_g", "out", "outer"])
@pytest.mark.parametrize("impl", ["fold", "unfold", "loop", "taps"])
@pytest.mark.parametrize("batch", [1, 3])
def test_matches_per_sample_reference(geom, mode, impl, batch):
    cin, cout, k, s, p, d, g, bias, h, w = geom
    if impl == "taps" and mode == "full":
        pytest.skip("taps applies to modes full_g/out/outer")
    try:
        m = AWConv2d(cin, cout, k, s, p, d, g, bias, mode=mode, init="small", impl=impl, min_hidden=2).double()
    except ValueError:
        assert mode == "full_g"  # PW2 width (or, for taps, C_out) not divisible by the hidden width here
        return
    with torch.no_grad():
        m.pw2.weight.normal_(0, 0.3)
        m.pw2.bias.normal_(0, 0.3)
    x = torch.randn(batch, cin, h, w, dtype=torch.float64, requires_grad=True)
    y = m(x)
    a = m.attention(x)["kernel"]
    y_ref = reference(x, m.weight, m.bias, a, m.stride, m.padding, m.dilation, m.groups)
    torch.testing.assert_close(y, y_ref)
    # gradients w.r.t. input, static kernel and generator agree with the reference path
    gy = torch.randn_like(y)
    params = [x, m.weight, m.pw1.weight, m.pw2.weight]
    g1 = torch.autograd.grad((y * gy).sum(), params)
    y2 = reference(x, m.weight, m.bias, m.attention(x)["kernel"], m.stride, m.padding, m.dilation, m.groups)
    g2 = torch.autograd.grad((y2 * gy).sum(), params)
    for a1, a2 in zip(g1, g2):
        torch.testing.assert_close(a1, a2)


@pytest.mark.parametrize("geom", GEOMS)
@pytest.mark.parametrize("mode", ["full", "full_g", "out", "outer"])
def test_zero_init_is_plain_conv(geom, mode):
    cin, cout, k, s, p, d, g, bias, h, w = geom
    try:
        m = AWConv2d(cin, cout, k, s, p, d, g, bias, mode=mode, min_hidden=2)
    except ValueError:
        assert mode == "full_g"  # PW2 width not divisible by the hidden width for this geometry
        return
    x = torch.randn(2, cin, h, w)
    torch.testing.assert_close(m(x), F.conv2d(x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups),
                               atol=1e-6, rtol=1e-5)


def test_from_conv_and_state_dict_keys():
    conv = nn.Conv2d(8, 16, 3, 2, 1, bias=True)
    aw = AWConv2d.from_conv(conv, mode="out")
    x = torch.randn(2, 8, 11, 11)
    torch.testing.assert_close(aw(x), conv(x), atol=1e-6, rtol=1e-5)
    assert {"weight", "bias"} <= set(aw.state_dict())
    assert aw.weight.shape == conv.weight.shape


def test_se_on_input_special_case():
    """conv(X * s, K) equals AW with A[n,o,i,d] = s[n,i] - 1 (residual form) and A = s (core form)."""
    torch.manual_seed(1)
    se = SEModule(8).double()
    m = AWConv2d(8, 6, 3, 1, 1, mode="full").double()
    x = torch.randn(3, 8, 7, 7, dtype=torch.float64)
    s = se.attention(x)["channel"][:, :, 0, 0]  # (N, C_in)
    a = s[:, None, :, None, None].expand(3, 6, 8, 3, 3)
    expected = F.conv2d(x * s[:, :, None, None], m.weight, None, 1, 1)
    torch.testing.assert_close(m(x, attn=a - 1), expected)
    m.residual = False
    torch.testing.assert_close(m(x, attn=a), expected)


def test_rank_one_attention():
    m = AWConv2d(4, 5, 3, 1, 1, residual=False).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    a_o, b_i, c_t = torch.rand(2, 5), torch.rand(2, 4), torch.rand(2, 3, 3)
    attn = a_o[:, :, None, None, None] * b_i[:, None, :, None, None] * c_t[:, None, None]
    expected = []
    for n in range(2):
        k = m.weight * b_i[n][None, :, None, None] * c_t[n][None, None]
        expected.append(F.conv2d(x[n:n + 1], k, None, 1, 1) * a_o[n][None, :, None, None])
    torch.testing.assert_close(m(x, attn=attn), torch.cat(expected))


@pytest.mark.parametrize("mode,formula", [
    ("full", lambda ci, co, h: ci * h + h + h * co * ci + co * ci),
    ("full_g", lambda ci, co, h: ci * h + h + 2 * co * ci),
    ("out", lambda ci, co, h: ci * h + h + h * co + co),
    ("outer", lambda ci, co, h: ci * h + h + (h + 1) * (co + ci)),
])
@pytest.mark.parametrize("cin,cout", [(64, 64), (128, 256), (32, 16)])
def test_generator_param_counts(mode, formula, cin, cout):
    m = AWConv2d(cin, cout, 3, padding=1, mode=mode)
    hidden = max(cin // 16, 4)
    assert m.hidden_channels == hidden
    extra = sum(p.numel() for n, p in m.named_parameters() if n.startswith("pw"))
    assert extra == formula(cin, cout, hidden)


@pytest.mark.parametrize("pool", ["kernel", "global"])
@pytest.mark.parametrize("residual", [True, False])
def test_full_g_fused_weight_equals_generic_path(pool, residual):
    m = AWConv2d(32, 16, 3, 1, 1, mode="full_g", pool=pool, residual=residual, init="small").double()
    with torch.no_grad():
        m.pw2.weight.normal_(0, 0.5)
        m.pw2.bias.normal_(0, 0.5)
    x = torch.randn(3, 32, 9, 7, dtype=torch.float64)
    torch.testing.assert_close(m._full_g_weight(x), m.modulated_weight(m.attention(x)["kernel"]))


def test_full_g_inference_cache_follows_parameter_updates():
    m = AWConv2d(32, 32, 3, 1, 1, mode="full_g", init="small").eval()
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        y1 = m(x)
        torch.testing.assert_close(m(x), y1)  # served from the cache
        m.pw2.bias.add_(0.5)  # in-place update bumps the version: the cache must not be reused
        y2 = m(x)
        ref = torch.cat([F.conv2d(x[i:i + 1], m.weight * (1 + m.attention(x)["kernel"][i]), None, 1, 1) for i in range(2)])
    torch.testing.assert_close(y2, ref, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(y1, y2)


def test_global_pool_and_activations():
    x = torch.randn(2, 8, 9, 9)
    for pool, act in itertools.product(["kernel", "global"], ["identity", "sigmoid", "tanh"]):
        m = AWConv2d(8, 8, 3, 1, 1, mode="outer", pool=pool, attn_act=act, init="small")
        a = m.attention(x)["kernel"]
        assert a.shape == (2, 8, 8, 3, 3)
        assert m(x).shape == (2, 8, 9, 9)
        if act == "sigmoid":
            assert ((a > 0) & (a < 1)).all()
    # identity at init holds for identity and tanh activations, for both pools
    for pool in ("kernel", "global"):
        m = AWConv2d(8, 8, 3, 1, 1, mode="outer", pool=pool, attn_act="tanh")
        torch.testing.assert_close(m(x), F.conv2d(x, m.weight, None, 1, 1), atol=1e-6, rtol=1e-5)


def test_every_parameter_gets_a_gradient():
    for mode in ("full", "full_g", "out", "outer"):
        m = AWConv2d(16, 16, 3, 1, 1, mode=mode, init="small", bias=True)
        m(torch.randn(2, 16, 8, 8)).square().sum().backward()
        for n, p in m.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (mode, n)


def test_outer_zero_init_still_learns():
    """Zero-initialising both heads of the outer product would leave no gradient; the input head is random."""
    m = AWConv2d(8, 8, 3, 1, 1, mode="outer")
    m(torch.randn(2, 8, 6, 6)).square().sum().backward()
    assert m.pw2.weight.grad.abs().sum() > 0


def test_channels_last_and_bf16_autocast():
    m = AWConv2d(8, 16, 3, 2, 1, mode="full", init="small").eval()
    x = torch.randn(3, 8, 10, 10)
    y = m(x)
    torch.testing.assert_close(m(x.to(memory_format=torch.channels_last)), y, atol=1e-5, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = m(x)
    assert torch.isfinite(yb).all() and yb.shape == y.shape


def test_padding_strings_and_errors():
    m = AWConv2d(4, 4, 3, padding="same")
    assert m.padding == (1, 1)
    assert AWConv2d(4, 4, 3, padding="valid").padding == (0, 0)
    with pytest.raises(ValueError, match="same"):
        AWConv2d(4, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="taps"):
        AWConv2d(4, 4, 3, mode="full", impl="taps")
    with pytest.raises(ValueError, match="Unknown AW mode"):
        AWConv2d(4, 4, 3, mode="fancy")
    with pytest.raises(ValueError, match="divisible by groups"):
        AWConv2d(6, 4, 3, groups=4)
    with pytest.raises(ValueError, match="4 channels"):
        m(torch.randn(1, 3, 8, 8))
    assert AWConv2d(64, 64, 3, mode="full_grouped").mode == "full_g"


@pytest.mark.parametrize("mode, grad, batch, expected", [
    ("full_g", True, 8, "taps"), ("full_g", False, 8, "taps"), ("full_g", True, 2, "fold"),
    ("full", False, 8, "unfold"), ("full", True, 8, "fold"), ("outer", True, 1, "taps"), ("out", True, 8, "fold"),
])
def test_auto_rule_picks_measured_strategy_and_matches_fold(mode, grad, batch, expected):
    """The documented auto rule on a wide layer with a 4x4 output map, and the chosen path equals the fold."""
    m = AWConv2d(256, 256, 3, 1, 1, mode=mode, init="small", reduction=16).double()
    with torch.no_grad():
        m.pw2.weight.normal_(0, 0.2)
        m.pw2.bias.normal_(0, 0.2)
    x = torch.randn(batch, 256, 4, 4, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        assert m._auto_impl(x) == expected
        y = m(x)
        m.impl = "fold"
        torch.testing.assert_close(y, m(x))
    assert m._auto_impl(torch.randn(batch, 256, 9, 9)) == "fold"  # 81 output positions: always folded

"""STEAM reconstruction: exact 8d count, the literal multi-head graph attention as oracle, equivariance."""
import math

import pytest
import torch
import torch.nn.functional as F

from convattn.layers import STEAM, ScalarGraphAttention


def literal_gat(m: ScalarGraphAttention, z, nb, valid=None):
    """Textbook multi-head attention over scalar nodes: d-dim q/k/v per node, per-head softmax, output map."""
    n, mm, k = nb.shape
    h, dh = m.heads, m.d // m.heads
    q = (z[..., None] * m.w_q).reshape(n, mm, h, dh)  # (N, M, h, dh)
    kk = (nb[..., None] * m.w_k).reshape(n, mm, k, h, dh)  # (N, M, K, h, dh)
    v = (nb[..., None] * m.w_v).reshape(n, mm, k, h, dh)
    scores = torch.einsum("nmhd,nmkhd->nmkh", q, kk) / math.sqrt(dh)
    if valid is not None:
        scores = scores.masked_fill(~valid[None, :, :, None], float("-inf"))
    a = scores.softmax(2)
    out = torch.einsum("nmkh,nmkhd->nmhd", a, v).reshape(n, mm, h * dh)  # concat heads
    u = out @ m.w_o
    return u + z if m.residual else u


def literal_steam(m: STEAM, x):
    """STEAM forward from the spec's sketch (section 7.6), using the literal graph attention."""
    n, c, hh, ww = x.shape
    z = x.mean((2, 3))
    r = m.ring_radius
    zn = torch.stack([torch.cat([z[:, (i + o) % c:(i + o) % c + 1] for i in range(c)], 1) for o in range(-r, r + 1)], -1)
    xc = x * torch.sigmoid(literal_gat(m.cia, z, zn))[:, :, None, None]
    p = xc.mean(1, keepdim=True)
    ho, wo = min(7, hh), min(7, ww)
    pt = F.adaptive_avg_pool2d(p, (ho, wo))[:, 0]  # (N, Ho, Wo)
    nbs, valid = [], []
    for i in range(ho):
        for j in range(wo):
            row_n, row_v = [], []
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    y2, x2 = i + dy, j + dx
                    ok = 0 <= y2 < ho and 0 <= x2 < wo
                    row_n.append(pt[:, y2, x2] if ok else torch.zeros(n, dtype=x.dtype))
                    row_v.append(ok)
            nbs.append(torch.stack(row_n, -1))
            valid.append(row_v)
    nb = torch.stack(nbs, 1)  # (N, M, 9)
    s = literal_gat(m.sia, pt.reshape(n, -1), nb, torch.tensor(valid)).reshape(n, 1, ho, wo)
    s = F.interpolate(s, size=(hh, ww), mode="bilinear", align_corners=False)
    return xc * torch.sigmoid(s)


@pytest.mark.parametrize("c", [16, 64, 2048])
@pytest.mark.parametrize("d", [4, 8, 16])
def test_parameter_count_is_8d(c, d):
    assert sum(p.numel() for p in STEAM(c, d=d, heads=4 if d >= 4 else 1).parameters()) == 8 * d


@pytest.mark.parametrize("shape", [(2, 16, 13, 17), (3, 12, 7, 7), (2, 8, 20, 9)])
def test_module_equals_literal_definition(shape):
    m = STEAM(shape[1]).double()
    x = torch.randn(*shape, dtype=torch.float64)
    torch.testing.assert_close(m(x), literal_steam(m, x), atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("heads", [1, 2, 4, 8])
def test_collapsed_graph_attention_equals_literal(heads):
    g = ScalarGraphAttention(8, heads).double()
    z = torch.randn(3, 10, dtype=torch.float64)
    nb = torch.randn(3, 10, 5, dtype=torch.float64)
    valid = torch.rand(10, 5) > 0.3
    valid[:, 0] = True
    torch.testing.assert_close(g(z, nb, valid), literal_gat(g, z, nb, valid), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 8, 7, 7), (2, 8, 13, 17), (1, 8, 1, 1), (2, 8, 3, 5), (1, 8, 56, 56)])
def test_shapes(shape):
    x = torch.randn(shape)
    assert STEAM(8)(x).shape == x.shape


def test_roll_equivariance_over_channels():
    m = STEAM(16).double()
    x = torch.randn(2, 16, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(m(x.roll(5, 1)), m(x).roll(5, 1))
    torch.testing.assert_close(m.channel_logits(x.roll(5, 1)), m.channel_logits(x).roll(5, 1))


def test_gates_range_and_zero_output_vector():
    m = STEAM(16, residual=False)
    x = torch.randn(2, 16, 9, 9)
    cg, sg = m.gates(x)
    assert cg.shape == (2, 16, 1, 1) and sg.shape == (2, 1, 9, 9)
    assert ((cg > 0) & (cg < 1)).all() and ((sg > 0) & (sg < 1)).all()
    with torch.no_grad():
        m.cia.w_o.zero_()
        m.sia.w_o.zero_()
    torch.testing.assert_close(m(x), 0.25 * x)


def test_gradients_reach_all_vectors():
    m = STEAM(16)
    m(torch.randn(2, 16, 9, 9)).square().sum().backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("kwargs", [
    dict(order="parallel"), dict(branches="channel"), dict(branches="spatial"), dict(channel_graph="adaptive"),
    dict(channel_graph="knn", ring_radius=2), dict(ring_radius=3), dict(spatial_window=5),
    dict(spatial_border="wrap"), dict(spatial_neighbourhood="cross"), dict(spatial_squeeze="max"),
    dict(ogp_pool="max"), dict(ogp_pool="avgmax"), dict(upsample="nearest"), dict(node_norm=True),
    dict(ogp_size=(4, 4)), dict(ogp_size="input/32", feature_stride=8), dict(heads=1), dict(d=16, heads=8),
])
def test_options_run_and_keep_shape(kwargs):
    m = STEAM(32, **kwargs)
    x = torch.randn(2, 32, 12, 10)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.sum().backward()


def test_bf16_autocast_no_nan_and_channels_last():
    m = STEAM(32).eval()
    x = torch.randn(2, 32, 14, 14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(m(x.bfloat16())).all()
    torch.testing.assert_close(m(x.to(memory_format=torch.channels_last)), m(x), atol=1e-6, rtol=1e-5)


def test_bad_options():
    with pytest.raises(ValueError, match="divisible by heads"):
        STEAM(8, d=8, heads=3)
    with pytest.raises(ValueError, match="order"):
        STEAM(8, order="spatial_first")
    with pytest.raises(ValueError, match="feature_stride"):
        STEAM(8, ogp_size="input/32")
    with pytest.raises(ValueError, match="8 channels"):
        STEAM(8)(torch.randn(1, 4, 5, 5))


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_gate_matches_autograd_chain(channels_last):
    """channel_spatial_gate: value and gradients equal to x * cg * sg (gradcheck in float64, both layouts)."""
    from convattn.layers.steam import channel_spatial_gate
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    cg = torch.rand(2, 5, 1, 1, dtype=torch.float64, requires_grad=True)
    sg = torch.rand(2, 1, 4, 3, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(channel_spatial_gate(x, cg, sg), x * cg * sg)
    assert torch.autograd.gradcheck(channel_spatial_gate, (x, cg, sg))
    with torch.no_grad():
        torch.testing.assert_close(channel_spatial_gate(x, cg, sg), x * cg * sg)


@pytest.mark.parametrize("order", ["channel_first", "parallel"])
@pytest.mark.parametrize("squeeze", ["mean", "max"])
def test_forward_equals_unfused_definition(order, squeeze):
    """The fused forward equals gating by the two sigmoid maps built the literal way (x * cg materialised)."""
    m = STEAM(12, order=order, spatial_squeeze=squeeze).double()
    x = torch.randn(3, 12, 9, 10, dtype=torch.float64, requires_grad=True)
    cg = torch.sigmoid(m.channel_logits(x))[:, :, None, None]
    src = x * cg if order == "channel_first" else x
    p = src.mean(1, keepdim=True) if squeeze == "mean" else src.amax(1, keepdim=True)
    s = m.sia(m._norm(m._ogp(p, (7, 7)).flatten(1)), *_mask_neighbours(m, m._ogp(p, (7, 7))))
    sg = torch.sigmoid(torch.nn.functional.interpolate(s.reshape(3, 1, 7, 7), size=(9, 10), mode="bilinear",
                                                       align_corners=False))
    ref = x * cg * sg
    y = m(x)
    torch.testing.assert_close(y, ref)
    gy = torch.randn_like(y)
    g1 = torch.autograd.grad((y * gy).sum(), [x, m.cia.w_q, m.sia.w_v])
    g2 = torch.autograd.grad((ref * gy).sum(), [x, m.cia.w_q, m.sia.w_v])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def _mask_neighbours(m, grid):
    """Independent 3x3 masked neighbourhood of a (N, 1, Ho, Wo) grid: values (N, M, 9) and validity (M, 9)."""
    n, _, ho, wo = grid.shape
    g = grid[:, 0]
    vals, valid = [], []
    for i in range(ho):
        for j in range(wo):
            row_v, row_ok = [], []
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ok = 0 <= i + dy < ho and 0 <= j + dx < wo
                    row_ok.append(ok)
                    row_v.append(g[:, i + dy, j + dx] if ok else torch.zeros(n, dtype=g.dtype))
            vals.append(torch.stack(row_v, -1))
            valid.append(row_ok)
    return torch.stack(vals, 1), torch.tensor(valid)


def test_inplace_only_in_inference():
    """inplace=True gates x itself under no_grad (same values), and never touches x when autograd records."""
    m = STEAM(8, inplace=True)
    assert "inplace=True" in repr(m) and "ogp_size=(7, 7)" in repr(m)
    x = torch.randn(2, 8, 6, 6)
    ref = STEAM(8)
    ref.load_state_dict(m.state_dict())
    expected = ref(x)
    x_grad = x.clone().requires_grad_()
    y = m(x_grad)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(x_grad.detach(), x)  # input untouched in training
    with torch.no_grad():
        xi = x.clone()
        yi = m(xi)
    torch.testing.assert_close(yi, expected)
    assert yi.data_ptr() == xi.data_ptr()


def test_weight_decay_option_declares_every_vector():
    from convattn.models import create_model
    from convattn.engine.optim import param_groups
    m = STEAM(64, weight_decay=False)
    assert m.no_weight_decay() == {n for n, _ in m.named_parameters()} and len(m.no_weight_decay()) == 8  # q, k, v, o x 2
    assert STEAM(64).no_weight_decay() == set()
    net = create_model("resnet20", attn="steam", attn_kwargs={"weight_decay": False})
    groups = param_groups(net, 0.1, 5e-4, "declared", 1.0)
    no_decay = [g for g in groups if g["weight_decay"] == 0.0]
    assert sum(p.numel() for g in no_decay for p in g["params"]) == 4 * 64  # 4 units x 8 * d at d = 8

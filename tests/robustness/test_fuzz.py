"""Property-based tests (hypothesis) over shapes, dtypes, strides, groups and batch sizes for every layer."""
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from convattn.layers import AWConv2d, CBAM, ECA, GCT, SEModule, STEAM

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
dims = st.integers(1, 13)
batch = st.integers(1, 4)
channels = st.integers(1, 48)
dtypes = st.sampled_from([torch.float32, torch.float64])


@FUZZ
@given(n=batch, c=channels, h=dims, w=dims, dtype=dtypes, kind=st.sampled_from(["se", "cbam", "eca", "ceca", "gct"]))
def test_activation_attention_shapes_and_finite(n, c, h, w, dtype, kind):
    m = {"se": lambda: SEModule(c), "cbam": lambda: CBAM(c), "eca": lambda: ECA(c),
         "ceca": lambda: ECA(c, padding="circular"), "gct": lambda: GCT(c)}[kind]().to(dtype).eval()
    x = torch.randn(n, c, h, w, dtype=dtype) * 3
    y = m(x)
    assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y).all()
    if kind == "gct":
        assert torch.equal(y, x)  # identity at init for any input


@FUZZ
@given(n=batch, c=channels, h=dims, w=dims, dtype=dtypes, heads=st.sampled_from([1, 2, 4, 8]),
       order=st.sampled_from(["channel_first", "parallel"]), border=st.sampled_from(["mask", "wrap"]),
       graph=st.sampled_from(["ring", "knn"]), radius=st.integers(0, 3))
def test_steam_shapes_finite_and_equivariance(n, c, h, w, dtype, heads, order, border, graph, radius):
    m = STEAM(c, heads=heads, order=order, spatial_border=border, channel_graph=graph, ring_radius=radius).to(dtype)
    x = torch.randn(n, c, h, w, dtype=dtype)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    att = m.attention(x)
    cg, sg = att["channel"], att["spatial"]
    assert ((cg > 0) & (cg < 1)).all() and ((sg > 0) & (sg < 1)).all()
    if graph == "ring" and dtype == torch.float64:
        s = int(torch.randint(0, c, ()).item())
        torch.testing.assert_close(m(x.roll(s, 1)), y.roll(s, 1))


@st.composite
def conv_geometry(draw):
    g = draw(st.sampled_from([1, 1, 2, 4]))
    cin = g * draw(st.integers(1, 6))
    cout = g * draw(st.integers(1, 6))
    k = draw(st.sampled_from([1, 2, 3, 5]))
    s = draw(st.integers(1, 3))
    d = draw(st.integers(1, 2))
    p = draw(st.integers(0, 2))
    h = draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), 12))
    w = draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), 12))
    return cin, cout, k, s, p, d, g, h, w


@FUZZ
@given(geom=conv_geometry(), n=batch, mode=st.sampled_from(["full", "full_g", "out", "outer"]),
       impl=st.sampled_from(["fold", "unfold", "loop", "taps"]), pool=st.sampled_from(["kernel", "global"]),
       bias=st.booleans())
def test_aw_conv_matches_reference(geom, n, mode, impl, pool, bias):
    cin, cout, k, s, p, d, g, h, w = geom
    if impl == "taps" and mode == "full":
        impl = "fold"
    try:
        m = AWConv2d(cin, cout, k, s, p, d, g, bias, mode=mode, impl=impl, pool=pool, init="small", min_hidden=2).double()
    except ValueError as e:  # full_g needs PW2 width (and for taps C_out) divisible by the hidden width
        assert mode == "full_g" and "divisible" in str(e)
        assume(False)
    with torch.no_grad():
        m.pw2.weight.normal_(0, 0.5)
        m.pw2.bias.normal_(0, 0.5)
    x = torch.randn(n, cin, h, w, dtype=torch.float64)
    y = m(x)
    a = m.attention(x)["kernel"].expand(n, cout, cin // g, k, k)
    ref = torch.cat([F.conv2d(x[i:i + 1], m.weight * (1 + a[i]), m.bias, s, p, d, g) for i in range(n)])
    assert y.shape == ref.shape and torch.isfinite(y).all()
    torch.testing.assert_close(y, ref)


@FUZZ
@given(c=st.integers(1, 40), h=st.integers(1, 9), w=st.integers(1, 9))
def test_small_inputs_work_or_raise_value_error(c, h, w):
    """Fewer channels than the reduction and 1x1 maps work; AW full_g either works or explains why not."""
    x = torch.randn(2, c, h, w)
    for m in (SEModule(c), CBAM(c), ECA(c), GCT(c), STEAM(c), AWConv2d(c, c, 3, 1, 1, mode="out")):
        assert m(x).shape[0] == 2
    try:
        AWConv2d(c, c, 3, 1, 1, mode="full_g")(x)
    except ValueError as e:
        assert "divisible" in str(e)


def test_bf16_autocast_for_every_layer():
    x = torch.randn(2, 16, 9, 9)
    for m in (SEModule(16), CBAM(16), ECA(16), GCT(16), STEAM(16), AWConv2d(16, 16, 3, 1, 1, mode="full")):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.isfinite(m(x)).all()

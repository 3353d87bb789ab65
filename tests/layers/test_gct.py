"""GCT against the official formula (z-x-yang/GCT), identity at init, weight-decay declaration."""
import pytest
import torch

from convattn.layers import GCT


def test_identity_at_init_exact():
    x = torch.randn(3, 16, 7, 5) * 10
    assert torch.equal(GCT(16)(x), x)


@pytest.mark.parametrize("mode", ["l2", "l1"])
def test_formula_float64(mode):
    m = GCT(8, mode=mode).double()
    with torch.no_grad():
        for p in (m.alpha, m.gamma, m.beta):
            p.normal_()
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    eps = 1e-5
    if mode == "l2":
        emb = (x.pow(2).sum((2, 3), keepdim=True) + eps).pow(0.5) * m.alpha
        norm = m.gamma / (emb.pow(2).mean(1, keepdim=True) + eps).pow(0.5)
    else:
        emb = x.abs().sum((2, 3), keepdim=True) * m.alpha
        norm = m.gamma / (emb.abs().mean(1, keepdim=True) + eps)
    gate = 1.0 + torch.tanh(emb * norm + m.beta)
    torch.testing.assert_close(m(x), x * gate)
    g = m.attention(x)["channel"]
    assert ((g > 0) & (g < 2)).all()


def test_no_weight_decay_and_param_count():
    m = GCT(10)
    assert m.no_weight_decay() == {"beta"}
    assert GCT(10, no_decay=("alpha", "gamma", "beta")).no_weight_decay() == {"alpha", "gamma", "beta"}
    assert sum(p.numel() for p in m.parameters()) == 30
    with pytest.raises(ValueError):
        GCT(10, no_decay=("delta",))


def test_half_precision_embedding_does_not_overflow():
    m = GCT(4)
    with torch.no_grad():
        m.gamma.fill_(1.0)
    x = torch.full((1, 4, 64, 64), 300.0).half()  # sum of squares 3.7e8 overflows fp16
    y = m.half()(x)
    assert torch.isfinite(y).all()

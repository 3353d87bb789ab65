"""attention_statistics: oracles from known special cases (constant gates at init, a hand-set SE gate)."""
import math

import pytest
import torch
from torch import nn

from convattn.analysis.maps import attention_statistics, save_statistics
from convattn.layers import SEModule
from convattn.models import create_model


def test_identity_at_init_modules_report_constant_attention():
    torch.manual_seed(0)
    rows = attention_statistics(create_model("resnet20", attn="gct", conv="aw", in_chans=1), torch.randn(4, 1, 28, 28))
    gct = [r for r in rows if r["kind"] == "channel"]
    aw = [r for r in rows if r["kind"] == "aw"]
    assert len(aw) == 18 and len(gct) > 0
    # GCT (γ = β = 0): gate 1 + tanh(0) = 1 everywhere; AW (zero PW2): A = 0 everywhere
    for r, value in [(r, 1.0) for r in gct] + [(r, 0.0) for r in aw]:
        assert r["mean"] == r["min"] == r["max"] == value and r["std"] == 0.0 and r["sample_std"] == 0.0


def test_se_gate_statistics_match_hand_computation():
    se = SEModule(4, rd_channels=1)
    with torch.no_grad():  # gate_c = σ(w2_c · relu(w1 · mean(x)) + b2_c) with w1 = 1, b1 = 0, w2 = 1, b2_c = c
        se.fc1.weight.fill_(1.0), se.fc1.bias.zero_(), se.fc2.weight.fill_(1.0)
        se.fc2.bias.copy_(torch.arange(4.0))
    model = nn.Sequential(se)
    # image n is constant 0.25·n on each of the 4 channels: the hidden unit is relu(4 · 0.25·n) = n
    x = torch.arange(3.0).view(3, 1, 1, 1).mul(0.25).expand(3, 4, 5, 5).contiguous()
    (row,) = attention_statistics(model, x)
    g = [[1 / (1 + math.exp(-(n + c))) for c in range(4)] for n in range(3)]  # (N, C)
    flat = [v for r in g for v in r]
    mean = sum(flat) / 12
    sample_std = sum(math.sqrt(sum((g[n][c] - sum(g[k][c] for k in range(3)) / 3) ** 2 for n in range(3)) / 2)
                     for c in range(4)) / 4
    assert row["module"] == "0" and row["kind"] == "channel" and row["shape"] == [4]
    assert row["mean"] == pytest.approx(mean) and row["sample_std"] == pytest.approx(sample_std)
    assert row["min"] == pytest.approx(g[0][0]) and row["max"] == pytest.approx(g[2][3])


def test_statistics_need_a_batch_and_write_csv_and_markdown(tmp_path):
    model = nn.Sequential(SEModule(8))
    with pytest.raises(ValueError, match="at least 2 images"):
        attention_statistics(model, torch.randn(1, 8, 4, 4))
    files = save_statistics(attention_statistics(model, torch.randn(3, 8, 4, 4)), tmp_path, "t")
    assert [f.name for f in files] == ["attention_stats.csv", "attention_stats.md"]
    assert "std across images" in files[1].read_text()

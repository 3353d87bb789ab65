"""MAC counters against hand-computed values, and the profile command end to end."""
import csv

import torch
import torch.nn.functional as F
from torch import nn

from convattn.cli import main
from convattn.layers import AWConv2d
from convattn.models import create_model
from convattn.profile import count_complexity, count_macs_dispatch, count_macs_hooks, measure_latency


def test_conv_macs_by_hand():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 10 * 10, 5))
    x = torch.randn(1, 3, 10, 10)
    expected = 8 * 10 * 10 * 3 * 9 + 800 * 5
    assert count_macs_hooks(m, x) == expected
    assert count_macs_dispatch(m, x)[0] == expected


def test_dispatch_sees_functional_conv_and_hooks_do_not():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 2, 3, 3))

        def forward(self, x):
            return torch.sigmoid(F.conv2d(x, self.w, padding=1)) * 2

    x = torch.randn(1, 2, 6, 6)
    macs, elementwise = count_macs_dispatch(Functional(), x)
    assert macs == 4 * 36 * 2 * 9 and count_macs_hooks(Functional(), x) == 0
    assert elementwise == 2 * 4 * 36  # sigmoid + mul


def test_aw_dispatch_counts_folded_conv_as_batch_times_plain():
    aw = AWConv2d(8, 8, 3, padding=1, mode="out")
    x = torch.randn(2, 8, 6, 6)
    macs, _ = count_macs_dispatch(aw, x)
    plain = 2 * 8 * 36 * 8 * 9
    generator = 2 * 9 * (8 * aw.hidden_channels + aw.hidden_channels * 8)
    assert macs == plain + generator


def test_resnet50_macs_match_torchvision_metadata():
    # torchvision's IMAGENET1K weights meta: 4.089 GFLOPS (its "FLOPS" are MACs)
    c = count_complexity(create_model("resnet50"), torch.randn(1, 3, 224, 224))
    assert c.params == 25_557_032
    assert round(c.macs / 1e9, 3) == 4.089 and c.hook_macs == c.macs


def test_latency_rows():
    a, b = nn.Conv2d(3, 8, 3), nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3))
    ts = measure_latency([a, b], torch.randn(2, 3, 16, 16), warmup=1, repeats=5)
    assert len(ts) == 2 and all(t.runs == 5 and t.median_ms > 0 and t.throughput > 0 for t in ts)


def test_profile_command(tmp_path, capsys):
    rc = main(["profile", "--models", "resnet20", "--variants", "se,steam,aw,cbam+aw", "--repeats", "2",
               "--warmup", "1", "--batch-size", "2", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "cbam+aw" in out and "latency" in out
    rows = list(csv.DictReader(open(tmp_path / "profile.csv")))
    assert [r["variant"] for r in rows] == ["none", "se", "steam", "aw", "cbam+aw"]
    assert float(rows[0]["latency_ratio"]) == 1.0
    assert int(rows[2]["added_params"]) == 4 * 64  # STEAM in 4 blocks of the CIFAR net
    md = (tmp_path / "profile.md").read_text()
    assert "multiply-accumulates" in md and "| resnet20 | se |" in md


def test_profile_command_errors(capsys):
    assert main(["profile", "--models", "resnet51", "--no-latency"]) == 2
    assert "Valid names" in capsys.readouterr().err
    assert main(["profile", "--models", "resnet20", "--variants", "sse", "--no-latency"]) == 2

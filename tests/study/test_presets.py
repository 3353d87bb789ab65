"""The papers' tables as named studies: the dry-run plan (runs, estimated hours from MACs and a throughput measured
here, each run's command, where results go), the one-line refusals, and a named study end to end (tiny epochs) on
an ImageNet-layout folder of real images (embedded Fashion-MNIST written as PNGs) through the processes pool."""
import json

import pytest
from _folders import imagenet_folder  # beside this file

from convattn.cli import main
from convattn.study.presets import PAPER_STUDIES, measure_throughput

def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    data = imagenet_folder(tmp_path / "imagenet")
    out = tmp_path / "study"
    assert main(["compare", "--study", "steam-imagenet", "--dry-run", "--data-dir", str(data), "--out", str(out),
                 "--executor", "processes", "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert "runs: 6 = 1 model x 6 arms (none, se, eca, gct, cbam, steam) x 1 seed" in text
    assert "24 training / 12 validation images (counted)" in text and "preset imagenet" in text
    assert "GMAC/s of training on cpu" in text and "CPU-hours in all" in text
    assert "| resnet50 | steam |" in text and "executor: processes (2 workers)" in text
    cmds = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("convattn train")]
    assert len(cmds) == 6 and f"--data-dir {data}" in cmds[0] and f"--out {out}/runs/steam/seed0" in cmds[-1]
    assert f"results: {out}/report.md" in text
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--dry-run"], "--dry-run plans a named study: give --study aw-imagenet | steam-imagenet | aw-coco"),
    (["--study", "aw-cifar"], "--study 'aw-cifar' is not a named study; valid: aw-imagenet, steam-imagenet, aw-coco"),
    (["--study", "aw-imagenet"], "--study aw-imagenet trains on a local ImageNet folder: give --data-dir"),
    (["--study", "aw-coco"], "give --data-dir with train/, val/ and annotations/"),
    (["--study", "steam-imagenet", "--variants", "aw", "--dry-run"], "--variants aw: not an arm of steam-imagenet"),
    (["--study", "steam-imagenet", "--data-dir", "/nonexistent/imagenet"], "no such folder"),
])
def test_bad_study_input_is_one_line(argv, message, capsys, tmp_path):
    assert main(["compare", *argv, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_throughput_is_measured():
    tp = measure_throughput("resnet50", image=32, batch=2, steps=1)
    assert tp["device"] == "cpu" and tp["macs_per_s"] > 0 and tp["step_s"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["aw-imagenet", "aw-coco"])
def test_dry_run_of_every_paper_study(name, capsys):
    assert main(["compare", "--study", name, "--dry-run"]) == 0
    text = capsys.readouterr().out
    s = PAPER_STUDIES[name]
    runs = len(s.models) * (len(s.variants) + 1)
    assert f"runs: {runs} = " in text and "hours in all" in text
    assert sum(ln.strip().startswith("convattn ") for ln in text.splitlines()) == runs
    if name == "aw-coco":
        assert "convattn detect train --detector fasterrcnn --backbone resnet101" in text and "preset 1x" in text


TINY = ["--epochs", "1", "--batch-size", "8", "--image-size", "32", "--loader-workers", "0", "--threads", "1",
        "--latency-batch", "4", "--quiet"]


def test_named_study_end_to_end_through_processes(tmp_path, capsys):
    data = imagenet_folder(tmp_path / "imagenet")
    out = tmp_path / "study"
    assert main(["compare", "--study", "steam-imagenet", "--data-dir", str(data), "--variants", "steam", "--out",
                 str(out), "--executor", "processes", "--workers", "2", *TINY]) == 0
    study = json.loads((out / "study.json").read_text())
    assert study["model"] == "resnet50" and study["recipe"]["preset"] == "imagenet"
    assert study["recipe"]["data"] == "folder" and study["variants"] == ["none", "steam"]
    md = (out / "report.md").read_text()
    assert "| steam |" in md and "executor processes (2 workers x 1 thread)" in md
    for v in ("none", "steam"):
        final = json.loads((out / "runs" / v / "seed0" / "final.json").read_text())
        assert final["train_images"] == 24 and final["val_images"] == 12 and final["epochs"] == 1

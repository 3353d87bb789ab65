"""Killing a training run or a compare study at a random moment loses nothing and resumes to the same result."""
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from convattn.engine.checkpoint import latest_checkpoint, load_checkpoint
from convattn.models import create_model

ARGS = ["--model", "resnet20", "--epochs", "3", "--train-size", "512", "--batch-size", "64", "--quiet",
        "--threads", "1", "--variant", "steam"]


def _train(out, extra=()):
    return [sys.executable, "-m", "convattn", "train", *ARGS, *extra, "--out", str(out)]


def _wait_for(path, proc, timeout=300):
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None or time.time() - t0 > timeout:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


def _check_consistent(out):
    """Whatever is on disk after a kill is complete: the latest checkpoint loads, metrics parse."""
    folder = latest_checkpoint(out / "checkpoints")
    if folder is not None:
        m = create_model("resnet20", variant="steam", in_chans=1)
        load_checkpoint(folder, m)
    if (out / "metrics.csv").exists():
        rows = list(csv.DictReader(open(out / "metrics.csv")))
        assert all(r["val_top1"] for r in rows)
    for f in out.rglob("*"):
        if f.is_file() and f.suffix == ".json" and not f.name.startswith("."):
            json.loads(f.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("kill_seed", [0, 1])
def test_sigkill_training_then_resume_matches_uninterrupted(tmp_path, kill_seed):
    ref = tmp_path / "ref"
    subprocess.run(_train(ref), check=True, capture_output=True, timeout=600)
    run = tmp_path / "run"
    proc = subprocess.Popen(_train(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(run / "checkpoints" / "latest.json", proc)
    time.sleep(random.Random(kill_seed).uniform(0.0, 1.5))  # somewhere in epoch 2 (or while it checkpoints)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _check_consistent(run)
    subprocess.run(_train(run), check=True, capture_output=True, timeout=600)
    wa = load_file(str(ref / "checkpoints/epoch_0003/model.safetensors"))
    wb = load_file(str(run / "checkpoints/epoch_0003/model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((ref / "final.json").read_text())["val_top1"] == json.loads((run / "final.json").read_text())["val_top1"]


@pytest.mark.slow
def test_sigint_compare_then_resume(tmp_path):
    cmd = [sys.executable, "-m", "convattn", "compare", "--variants", "se,aw", "--seeds", "2", "--train-size", "128",
           "--epochs", "2", "--batch-size", "64", "--quiet", "--threads", "1", "--latency-batch", "4"]
    ref = subprocess.run(cmd + ["--out", str(tmp_path / "ref")], check=True, capture_output=True, timeout=600)
    assert ref.returncode == 0
    out = tmp_path / "study"
    proc = subprocess.Popen(cmd + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(out / "runs" / "se" / "seed0" / "final.json", proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT if os.name != "nt" else signal.SIGTERM)
    proc.wait(timeout=120)
    for run_dir in (out / "runs").glob("*/seed*"):  # every file left behind is complete
        folder = latest_checkpoint(run_dir / "checkpoints")
        if folder is not None:
            load_file(str(folder / "model.safetensors"))
            torch.load(folder / "state.pt", weights_only=True)
        for f in run_dir.glob("*.json"):
            json.loads(f.read_text())
    subprocess.run(cmd + ["--out", str(out)], check=True, capture_output=True, timeout=600)
    a = list(csv.DictReader(open(tmp_path / "ref" / "runs.csv")))
    b = list(csv.DictReader(open(out / "runs.csv")))
    assert [(r["variant"], r["seed"], r["val_top1"]) for r in a] == [(r["variant"], r["seed"], r["val_top1"]) for r in b]

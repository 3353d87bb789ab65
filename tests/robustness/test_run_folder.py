"""Run folders are owned while written, their pointers stay inside them, and a failed save keeps the last good
checkpoint."""
import json

import pytest
import torch
from torch import nn

from convattn.cli import main
from convattn.engine import checkpoint as ckpt
from convattn.engine.checkpoint import CheckpointError, RunInUseError, latest_checkpoint, run_lock, save_checkpoint
from convattn.tasks.classification import TrainConfig, train


def test_second_writer_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with run_lock(out):
        with pytest.raises(RunInUseError, match=r"run is in use by pid \d+ on .*; wait for it to finish or use another --out"):
            train(TrainConfig(out=str(out), epochs=1, train_size=32, batch_size=32, progress=False))
        assert main(["train", "--out", str(out), "--epochs", "1", "--train-size", "32", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "is in use by pid" in err and err.count("\n") == 1
        assert not (out / "checkpoints").exists() and not (out / "config.json").exists()
    # released: the same command now runs
    assert main(["train", "--out", str(out), "--epochs", "1", "--train-size", "32", "--batch-size", "32",
                 "--quiet"]) == 0
    assert (out / "final.json").exists()


def test_latest_json_cannot_point_outside(tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    (tmp_path / "x").mkdir()
    for bad in ("../x", "/etc", "epoch_0001/../../x", 3):
        (root / "latest.json").write_text(json.dumps({"epoch": 1, "path": bad}))
        with pytest.raises(CheckpointError, match="not a checkpoint folder inside"):
            latest_checkpoint(root)


def test_failed_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    model = nn.Linear(3, 2)
    save_checkpoint(root, 1, model, {"updates": 1}, {"epoch": 1})
    (root / ".epoch_0002.stale.tmp").mkdir()  # left by a killed writer: does not block the next one

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", disk_full)
    with pytest.raises(OSError, match="could not write checkpoint epoch_0002 .*No space left on device.*the last "
                                      "good checkpoint epoch_0001 is kept"):
        save_checkpoint(root, 2, model, {"updates": 2}, {"epoch": 2})
    assert latest_checkpoint(root).name == "epoch_0001"
    assert sorted(p.name for p in root.iterdir() if p.name.endswith(".tmp")) == [".epoch_0002.stale.tmp"]
    monkeypatch.undo()
    assert save_checkpoint(root, 2, model, {"updates": 2}, {"epoch": 2}).name == "epoch_0002"
    fresh = nn.Linear(3, 2)
    ckpt.load_weights(root / "epoch_0002" / "model.safetensors", fresh)
    assert torch.equal(fresh.weight, model.weight)

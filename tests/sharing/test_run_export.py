"""A run folder shared and reloaded: ``convattn export --run R --formats hf`` writes the folder, timm's own loader
gives back the run's validation accuracy, and ``convattn train --pretrained-path DIR`` starts from exactly it."""
import json

import pytest
import timm
import torch

from convattn.cli import main
from convattn.engine.run import read_run
from convattn.tasks.classification import TrainConfig, train
from convattn.tasks.classification.run import data_for, evaluate

TINY = dict(model="resnet20", train_size=256, batch_size=64, eval_batch_size=500, epochs=1, warmup_epochs=0.5,
            progress=False, threads=2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    final = train(TrainConfig(variant="se+steam", out=str(out), **TINY))
    return out, final


def test_exported_run_reloads_with_the_runs_accuracy(run, tmp_path, capsys):
    out, final = run
    assert main(["export", "--run", str(out), "--formats", "hf", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "hf: " in printed and "relative 0.00e+00" in printed
    folder = tmp_path / "resnet20_se_steam_hf"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["pretrained_cfg"]["input_size"] == [1, 28, 28] and len(cfg["label_names"]) == 10
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    run_cfg, _ = read_run(TrainConfig, out)
    data = data_for(run_cfg, 64, 500, workers=0)
    # the folder's preprocessing is the run's
    assert cfg["pretrained_cfg"]["mean"] == pytest.approx(list(data.mean))
    res = evaluate(model, data.val, torch.device("cpu"))
    assert res["top1"] == pytest.approx(final["val_top1"]) and res["loss"] == pytest.approx(final["val_loss"])
    card = (folder / "README.md").read_text()
    assert f"**{final['val_top1']:.2f} %**" in card and "| epochs | `1` |" in card and "Reconstruction" in card


@pytest.mark.slow
def test_train_from_a_shared_folder_starts_from_its_weights(run, tmp_path):
    out, final = run
    assert main(["export", "--run", str(out), "--formats", "hf", "--out", str(tmp_path / "exp")]) == 0
    folder = tmp_path / "exp" / "resnet20_se_steam_hf"
    ft = train(TrainConfig(variant="se+steam", out=str(tmp_path / "ft"), pretrained_path=str(folder),
                           **{**TINY, "train_size": 64}))
    # every tensor loaded (none new), the run's statistics: the start is the shared network's accuracy
    assert ft["start_val_top1"] == pytest.approx(final["val_top1"])

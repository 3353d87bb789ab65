"""convattn export and maps end to end on a tiny trained run; bad inputs in the CLI paths."""
import json

import numpy as np
import pytest
from PIL import Image

from convattn.cli import main
from convattn.tasks.classification import TrainConfig, train

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(model="resnet20", variant="cbam+aw", train_size=128, batch_size=64, epochs=1, progress=False,
                      out=str(out), conv_kwargs={"init": "small"}))
    return out


def test_export_run(run_dir, tmp_path, capsys):
    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "onnx" in out and "torchscript" in out
    diffs = [float(line.rsplit(" ", 1)[1].rstrip(")")) for line in out.splitlines() if "max |diff|" in line]
    assert len(diffs) == 2 and max(diffs) < 1e-4
    assert (tmp_path / "resnet20_cbam_aw.onnx").exists()


def test_export_fresh_model_and_bad_format(tmp_path, capsys):
    assert main(["export", "--model", "resnet20", "--variant", "steam", "--formats", "onnx", "--out", str(tmp_path)]) == 0
    assert main(["export", "--model", "resnet20", "--formats", "tflite", "--out", str(tmp_path)]) == 2
    assert "unknown export format" in capsys.readouterr().err


def test_maps_from_validation_images_and_files(run_dir, tmp_path):
    assert main(["maps", "--run", str(run_dir), "--index", "0,7", "--out", str(tmp_path)]) == 0
    files = {p.name for p in (tmp_path / "val7").iterdir()}
    assert {"channel_gates.png", "spatial_maps.png", "aw_modulation.png", "gradcam.png", "maps.json"} <= files
    summary = json.loads((tmp_path / "val7" / "maps.json").read_text())
    gates = [v["channel"] for v in summary["modules"].values() if "channel" in v]
    assert gates and all(0 < g["min"] <= g["max"] < 1 for g in gates)
    assert any("aw" in v for v in summary["modules"].values())
    img = tmp_path / "shirt.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(img)
    assert main(["maps", "--run", str(run_dir), "--image", str(img), "--out", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f" / "shirt" / "gradcam.png").exists()


def test_maps_statistics_over_validation_images(run_dir, tmp_path, capsys):
    assert main(["maps", "--run", str(run_dir), "--stats", "6", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attention_stats.csv", "attention_stats.md"]
    md = (tmp_path / "attention_stats.md").read_text()
    assert "| layer1.0.bn2.attn | channel |" in md and "| layer1.0.bn2.attn | spatial |" in md and "| aw |" in md
    assert main(["maps", "--run", str(run_dir), "--stats", "1", "--out", str(tmp_path)]) == 2
    assert "at least 2 images" in capsys.readouterr().err


def test_maps_bad_inputs(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["maps", "--run", str(run_dir), "--image", str(bad)]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert main(["maps", "--run", str(run_dir), "--index", "99999"]) == 2
    assert main(["maps", "--run", str(tmp_path), "--index", "0"]) == 2

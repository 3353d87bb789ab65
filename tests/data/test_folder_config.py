"""A folder's data config follows the model's cfg and the images (timm's resolve_data_config way), and its
recipe follows its size."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from convattn.data import build_data, resolve_folder_data_config, survey_folder
from convattn.models import default_data_cfg
from convattn.tasks.classification import LARGE_FOLDER, TrainConfig, folder_recipe, resolve_config, train


def _grey_folder(root, n_train=6, n_val=2, size=(28, 28), classes=("a", "b", "c")):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for k, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                img = np.clip(rng.normal(60 + 60 * k, 30, size), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return root


def _rgb_folder(root, n=3, size=(300, 400)):
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for c in ("x", "y"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
    return root


def test_survey_counts_sizes_and_statistics(tmp_path):
    root = _grey_folder(tmp_path)
    s = survey_folder(root)
    assert (s.num_train, s.num_val, s.classes, s.size, s.grey, s.sampled) == (18, 6, ("a", "b", "c"), (28, 28), True, 18)
    pixels = np.concatenate([np.asarray(Image.open(p), dtype=np.float64).ravel() / 255
                             for p in sorted((root / "train").rglob("*.png"))])
    assert s.mean[0] == pytest.approx(pixels.mean(), abs=1e-9)  # every image sampled: the exact statistics
    assert s.std[0] == pytest.approx(pixels.std(), abs=1e-9)


def test_small_grey_images_are_not_upscaled(tmp_path):
    s = survey_folder(_grey_folder(tmp_path))
    cfg = resolve_folder_data_config(s, default_data_cfg("resnet20"))
    assert cfg.input_size == (1, 28, 28) and cfg.crop_pct == 1.0 and cfg.augment == "pad_crop" and cfg.pad == 3
    assert cfg.mean == s.mean and "not upscaled" in cfg.source["input_size"]
    big = resolve_folder_data_config(s, default_data_cfg("resnet50"))  # an ImageNet ResNet: still 28, not 224
    assert big.input_size == (1, 28, 28)
    pre = resolve_folder_data_config(s, default_data_cfg("resnet50"), pretrained=True)  # the weights' pipeline
    assert pre.input_size == (3, 28, 28) and pre.mean == (0.485, 0.456, 0.406)
    given = resolve_folder_data_config(s, default_data_cfg("resnet20"), image_size=24)
    assert given.input_size == (1, 24, 24) and given.source["input_size"] == "--image-size"


def test_large_images_follow_the_model_cfg(tmp_path):
    s = survey_folder(_rgb_folder(tmp_path))
    assert s.size == (300, 400) and not s.grey
    cfg = resolve_folder_data_config(s, default_data_cfg("timm:mobilenetv3_large_100"))
    assert cfg.input_size == (3, 224, 224) and cfg.crop_pct == 0.875 and cfg.interpolation == "bicubic"
    assert cfg.augment == "random_resized_crop" and len(cfg.mean) == 3
    d = build_data("folder", tmp_path, batch_size=2, workers=0, model_cfg=default_data_cfg("resnet50"))
    x, _ = next(iter(d.train.epoch(0)))
    xv, _ = next(iter(d.val.epoch(0)))
    assert x.shape == xv.shape == (2, 3, 224, 224) and d.folder_cfg.input_size == (3, 224, 224)


def test_folder_batches_match_the_config(tmp_path):
    d = build_data("folder", _grey_folder(tmp_path), batch_size=4, workers=0, model_cfg=default_data_cfg("resnet20"))
    x, y = next(iter(d.train.epoch(1)))
    assert x.shape == (4, 1, 28, 28) and d.in_chans == 1 and d.image_size == 28
    xv, _ = next(iter(d.val.epoch(0)))
    # evaluation: the images themselves, normalised with the sampled statistics
    first = np.asarray(Image.open(tmp_path / "val" / "a" / "0.png"), dtype=np.float32) / 255
    expect = (torch.from_numpy(first) - d.mean[0]) / d.std[0]
    torch.testing.assert_close(xv[0, 0], expect, atol=1e-5, rtol=1e-5)


def test_recipe_scales_with_the_folder():
    assert folder_recipe(1_400) == ("small", dict(batch_size=64))
    assert folder_recipe(100) == ("small", dict(batch_size=16))
    assert folder_recipe(12) == ("small", dict(batch_size=12))  # never larger than the data set
    assert folder_recipe(20_000) == ("small", dict(batch_size=128))
    assert folder_recipe(LARGE_FOLDER) == ("imagenet", {})


def test_resolve_config_uses_the_folder_recipe(tmp_path):
    root = _grey_folder(tmp_path, n_train=30)  # 90 images: batch 16
    cfg = resolve_config(TrainConfig(data="folder", data_dir=str(root), epochs=8))
    assert (cfg.preset, cfg.batch_size, cfg.lr, cfg.schedule, cfg.epochs) == ("small", 16, 0.1 * 16 / 128, "cosine", 8)
    assert cfg.warmup_epochs == 1.0
    short = resolve_config(TrainConfig(data="folder", data_dir=str(root), epochs=2, batch_size=32))
    assert short.batch_size == 32 and short.lr == pytest.approx(0.025) and short.warmup_epochs == pytest.approx(0.4)
    kept = resolve_config(TrainConfig(data="folder", data_dir=str(root), preset="imagenet", lr=0.3))
    assert (kept.preset, kept.batch_size, kept.lr, kept.epochs) == ("imagenet", 256, 0.3, 100)


def test_train_on_a_grey_folder_prints_what_it_resolved(tmp_path, capsys):
    root = _grey_folder(tmp_path / "data", n_train=16)
    res = train(TrainConfig(model="resnet20", data="folder", data_dir=str(root), epochs=1, workers=0,
                            out=str(tmp_path / "run"), progress=False))
    out = capsys.readouterr().out
    assert "input 1x28x28 (images 28x28 < model's 32: not upscaled)" in out
    assert "recipe (preset small" in out and "batch 16" in out
    info = json.loads((tmp_path / "run" / "data.json").read_text())
    assert info["in_chans"] == 1 and info["image_size"] == 28 and info["folder_cfg"]["augment"] == "pad_crop"
    assert res["train_images"] == 48

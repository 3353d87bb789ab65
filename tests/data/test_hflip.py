"""Horizontal flips are a resolved, printed choice (--hflip/--no-hflip): on by default (timm's convention for
folders, the built-in sets' recipe), honoured by the folder pipeline and the in-memory loader, and part of a run's
identity (a checkpoint trained with the other choice is not resumed)."""
import numpy as np
import pytest
import torch
from PIL import Image

from convattn.cli import build_parser
from convattn.cli.tasks import train_overrides
from convattn.data import build_data
from convattn.data.loaders import TensorLoader, folder_transform
from convattn.engine.checkpoint import CheckpointError
from convattn.tasks.classification import TrainConfig, data_for, resolve_config, train
from convattn.validate import ConfigError


def _asymmetric(n: int, side: int) -> np.ndarray:
    """Images bright in the left half only: a mirrored one is bright on the right."""
    x = np.zeros((n, side, side), dtype=np.uint8)
    x[:, :, : side // 2] = 255
    return x


def _left_brighter(x: torch.Tensor) -> torch.Tensor:
    """Per sample: the left half is brighter than the right (shifts of a few pixels keep that unless mirrored)."""
    w = x.shape[-1]
    return x[..., : w // 2].mean((1, 2, 3)) > x[..., w // 2:].mean((1, 2, 3))


def _folder(root, side=28, n=8):
    for split in ("train", "val"):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(_asymmetric(1, side)[0]).save(d / f"{i}.png")
    return root


def test_resolved_default_given_values_and_cli():
    assert resolve_config(TrainConfig()).hflip is True
    assert resolve_config(TrainConfig(hflip=False)).hflip is False
    assert resolve_config(TrainConfig(hflip=True)).hflip is True
    with pytest.raises(ConfigError, match="hflip"):
        resolve_config(TrainConfig(hflip="no"))
    for argv, want in ((["--no-hflip"], False), (["--hflip"], True), ([], None)):
        args = build_parser().parse_args(["train", *argv])
        assert train_overrides(args).get("hflip") is want


@pytest.mark.parametrize("flip", [True, False])
def test_tensor_loader_flips_only_when_on(flip):
    x, y = _asymmetric(64, 16), np.arange(64) % 4
    loader = TensorLoader(x, y, 16, True, (0.5,), (0.25,), pad=2, flip=flip, seed=0)
    left = torch.cat([_left_brighter(b) for e in range(2) for b, _ in loader.epoch(e)])
    assert left.all() if not flip else 0.3 < left.float().mean() < 0.7


@pytest.mark.parametrize("hflip", [True, False])
def test_flag_reaches_the_in_memory_loader(hflip):
    cfg = resolve_config(TrainConfig(train_size=64, batch_size=16, hflip=hflip))
    assert data_for(cfg, 16, workers=0).train.flip is hflip
    assert data_for(TrainConfig(train_size=64), 16, workers=0).train.flip is True  # unresolved / older runs: on


@pytest.mark.parametrize("hflip", [True, False])
def test_flag_reaches_the_folder_pipeline(tmp_path, hflip):
    root = _folder(tmp_path)
    cfg = resolve_config(TrainConfig(data="folder", data_dir=str(root), batch_size=8, hflip=hflip, workers=0))
    data = data_for(cfg, 8, workers=0)
    assert data.folder_cfg.hflip is hflip
    assert ("+ flip" if hflip else "(no flip)") in data.folder_cfg.summary()
    assert ("RandomHorizontalFlip" in repr(folder_transform(data.folder_cfg, True))) is hflip
    assert "RandomHorizontalFlip" not in repr(folder_transform(data.folder_cfg, False))  # never in evaluation
    left = torch.cat([_left_brighter(b) for e in range(3) for b, _ in data.train.epoch(e)])
    assert left.all() if not hflip else 0 < left.float().mean() < 1
    assert all(_left_brighter(b).all() for b, _ in data.val.epoch(0))


@pytest.mark.parametrize("hflip", [True, False])
def test_large_images_timm_transform_honours_the_flag(tmp_path, hflip):
    d = build_data("folder", _folder(tmp_path, side=96, n=2), batch_size=2, workers=0, flip=hflip)
    assert d.folder_cfg.augment == "random_resized_crop"
    assert ("RandomHorizontalFlip" in repr(folder_transform(d.folder_cfg, True))) is hflip


def test_hflip_is_part_of_the_run_identity(tmp_path, capsys):
    opts = dict(train_size=64, batch_size=32, epochs=2, warmup_epochs=0, progress=False, threads=1,
                out=str(tmp_path))
    train(TrainConfig(stop_after=1, hflip=False, **opts))
    printed = capsys.readouterr().out
    assert "horizontal flips: off (--no-hflip)" in printed
    with pytest.raises(CheckpointError, match=r"hflip: False -> True"):
        train(TrainConfig(**opts))  # the default (on) is another run
    assert train(TrainConfig(hflip=False, **opts))["epochs"] == 2

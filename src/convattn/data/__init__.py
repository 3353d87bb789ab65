"""Data sets by name: the embedded Fashion-MNIST subset (default), full Fashion-MNIST, CIFAR-10/100, ImageFolder.

Nothing is ever downloaded: every source is a package resource or a local folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cifar import load_cifar
from .fashion_mnist import CLASSES as FMNIST_CLASSES
from .fashion_mnist import find_fashion_mnist, load_embedded, load_fashion_mnist_split
from .folder import FolderDataConfig, FolderSurvey, resolve_folder_data_config, survey_folder
from .loaders import FolderLoader, TensorLoader

__all__ = ["DataBundle", "build_data", "list_datasets", "DATASETS", "stratified_subset", "list_image_files",
           "FolderDataConfig", "FolderSurvey", "survey_folder", "resolve_folder_data_config"]

DATASETS = {
    "embedded": "Fashion-MNIST subset shipped in the package (10k train / 2k test, 28x28 grey)",
    "fashion-mnist": "full Fashion-MNIST (60k / 10k) from its idx files (apt-get install dataset-fashion-mnist)",
    "cifar10": "CIFAR-10 python version from --data-dir",
    "cifar100": "CIFAR-100 python version from --data-dir",
    "folder": "ImageFolder tree at --data-dir with train/ and val/",
}
_ALIASES = {"default": "embedded", "fashion-mnist-subset": "embedded", "fmnist": "fashion-mnist",
            "imagefolder": "folder", "imagenet": "folder"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# the data cfg of an ImageNet network (timm pretrained_cfg keys); also the fallback of models without one
IMAGENET_DATA_CFG = dict(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bilinear", mean=IMAGENET_MEAN,
                         std=IMAGENET_STD)


@dataclass
class DataBundle:
    name: str
    train: Any  # TensorLoader | FolderLoader
    val: Any
    num_classes: int
    in_chans: int
    image_size: int
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    folder_cfg: FolderDataConfig | None = None  # how a folder's images are read (None for tensor data sets)
    source: dict[str, str] = field(default_factory=dict)  # tensor data sets: where size/mean/channels came from


def list_datasets() -> list[str]:
    return list(DATASETS)


def resolve_name(name: str) -> str:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        raise ValueError(f"Unknown data set '{name}'. Valid names: {', '.join(DATASETS)}")
    return key


def stratified_subset(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Indices of a class-balanced subset of ``size`` samples (sorted), reproducible from ``seed``."""
    classes = np.unique(labels)
    if size > len(labels):
        raise ValueError(f"subset of {size} requested from {len(labels)} samples")
    rng = np.random.default_rng(seed)
    per = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    take, i = [], 0
    while len(take) < size:  # round-robin over classes
        for p in per:
            if i < len(p) and len(take) < size:
                take.append(p[i])
        i += 1
    return np.sort(np.asarray(take))


def _stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xf = x.reshape(len(x), -1, x.shape[-1] if x.ndim == 4 else 1).astype(np.float64) / 255.0
    return tuple(xf.mean((0, 1)).tolist()), tuple(xf.std((0, 1)).tolist())


def build_data(name: str = "embedded", data_dir: str | os.PathLike | None = None, batch_size: int = 128,
               eval_batch_size: int | None = None, seed: int = 0, rank: int = 0, world_size: int = 1,
               workers: int = 2, train_size: int | None = None, image_size: int | None = None,
               pad: int | None = None, flip: bool = True, model_cfg: dict[str, Any] | None = None,
               pretrained: bool = False, rgb: bool = False,
               norm: tuple[tuple[float, ...], tuple[float, ...], str] | None = None) -> DataBundle:
    """Build train/val loaders for a named data set (see ``DATASETS``).

    For a folder, the input pipeline is resolved from the images and ``model_cfg`` (the model's data cfg,
    ``convattn.models.default_data_cfg``; ImageNet's if None) as :func:`resolve_folder_data_config` describes;
    ``pretrained`` keeps the model's normalisation and three channels.

    For the in-memory data sets (embedded, fashion-mnist, cifar*): ``image_size`` resizes every batch (bilinear,
    after the augmentation at the images' own size; default: the images' size), ``rgb`` makes grey images three
    identical channels, and ``norm`` = (mean, std, where they come from) replaces the normalisation with the
    training images' own statistics (one value serves every channel).

    ``flip``: random horizontal flips in training, for folders and in-memory data sets alike (``--no-hflip`` turns
    them off for data whose class a mirror changes: digits, text).
    """
    key = resolve_name(name)
    eval_batch_size = eval_batch_size or batch_size
    if key == "folder":
        if data_dir is None:
            raise FileNotFoundError("--data folder needs --data-dir pointing to a tree with train/ and val/ sub-folders")
        cfg = resolve_folder_data_config(survey_folder(data_dir), model_cfg or IMAGENET_DATA_CFG, image_size,
                                         pretrained, hflip=flip)
        common = dict(data_cfg=cfg, workers=workers, seed=seed, rank=rank, world_size=world_size)
        train = FolderLoader(data_dir, "train", batch_size, True, **common)
        val = FolderLoader(data_dir, "val", eval_batch_size, False, **common)
        if train.classes != val.classes:
            raise ValueError(f"{data_dir}: train/ and val/ have different class folders")
        return DataBundle(key, train, val, len(train.classes), cfg.input_size[0], cfg.input_size[-1], train.classes,
                          cfg.mean, cfg.std, cfg)
    if key == "embedded":
        z = load_embedded()
        xtr, ytr, xte, yte, classes = z["x_train"], z["y_train"].astype(np.int64), z["x_test"], z["y_test"].astype(
            np.int64), FMNIST_CLASSES
    elif key == "fashion-mnist":
        root = find_fashion_mnist(data_dir)
        (xtr, ytr), (xte, yte) = load_fashion_mnist_split(root, "train"), load_fashion_mnist_split(root, "test")
        classes = FMNIST_CLASSES
    else:
        xtr, ytr, classes = load_cifar(key, data_dir, "train")
        xte, yte, _ = load_cifar(key, data_dir, "test")
    if train_size is not None:
        if not 0 < train_size <= len(ytr):
            raise ValueError(f"--train-size {train_size} must be in 1..{len(ytr)} for {key}")
        keep = stratified_subset(ytr, train_size, seed=0)
        xtr, ytr = xtr[keep], ytr[keep]
    own_chans = 1 if xtr.ndim == 3 else xtr.shape[-1]
    in_chans = 3 if rgb and own_chans == 1 else own_chans
    native = xtr.shape[1]
    size = native if image_size is None else int(image_size)
    src = {"input_size": f"images {native}x{native}" if image_size is None else
           f"--image-size (images {native}x{native}, resized per batch)"}
    src["channels"] = "grey images as 3 channels" if in_chans != own_chans else \
        ("grey images" if own_chans == 1 else "colour images")
    if norm is None:
        mean, std = _stats(xtr)
        src["mean"] = f"{len(ytr):,} training images"
    else:
        mean, std, src["mean"] = tuple(norm[0]), tuple(norm[1]), norm[2]
    if len(mean) != in_chans:
        if in_chans == 1:  # a 1-channel network (e.g. a grey-adapted stem) with an RGB cfg: the channels' average
            mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
            src["mean"] += ", averaged over its channels for grey images"
        elif len(mean) != 1:
            raise ValueError(f"normalisation with {len(mean)} channel values ({src['mean']}) for {in_chans}-channel "
                             f"{key} images")
        else:
            mean, std = mean * in_chans, std * in_chans
    pad = (2 if native <= 28 else 4) if pad is None else pad
    common = dict(mean=mean, std=std, seed=seed, rank=rank, world_size=world_size, size=size,
                  rgb=in_chans != own_chans)
    train = TensorLoader(xtr, ytr, batch_size, True, pad=pad, flip=flip, **common)
    val = TensorLoader(xte, yte, eval_batch_size, False, **common)
    num_classes = int(max(ytr.max(), yte.max())) + 1
    return DataBundle(key, train, val, num_classes, in_chans, size, list(classes), mean, std, source=src)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def list_image_files(sources: list[str | os.PathLike]) -> list[Path]:
    """Image files named directly or found (sorted, not recursively) in the given folders."""
    files: list[Path] = []
    for src in sources:
        p = Path(src)
        if not p.exists():
            raise FileNotFoundError(f"image or folder {p} not found")
        files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [p]
    return files

"""What an ImageFolder tree holds, and the data config resolved from it and the model, as timm's
``resolve_data_config`` resolves one from a model's ``pretrained_cfg``.

The model's cfg gives the input size, crop, interpolation and normalisation it was designed (or pretrained) for;
the images say what they are. Images smaller than the model's input are used at their own size (28 x 28 digits
are not upscaled to 224), grey images are read as one channel, and a network trained from scratch is normalised
with the images' own statistics. Loading pretrained weights keeps the model's normalisation and three channels.

What counts as a class (our choice, unlike torchvision's ``find_classes``, which takes every sub-folder): every
sub-folder of ``train/`` and ``val/`` whose name does not start with ``.``; hidden folders (``.ipynb_checkpoints``,
``.git``, ...) are skipped, as are hidden folders inside a class folder. A class folder without an image file
(empty, or only a README) is refused with its path, as torchvision's ``make_dataset`` refuses it. Images smaller
than :data:`MIN_SIDE` pixels are refused unless ``--image-size`` upscales them.

Grey or colour is never decided silently from a sample alone: when every sampled image is grey, the mode of every
other image of ``train/`` and ``val/`` is read from its header (PIL opens headers lazily, without decoding the
pixels); one colour image makes the folder a colour (three-channel) data set, and the data config says which file
decided it. Images are then converted explicitly to the decided mode when loaded (``convert("L")`` or
``convert("RGB")``, 16-bit grey scaled by its depth).
"""
from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .files import class_files, class_folders, no_images_error, open_image

__all__ = ["FolderSurvey", "FolderDataConfig", "survey_folder", "resolve_folder_data_config", "SMALL_IMAGE"]

SMALL_IMAGE = 64  # at or below this side, augment as for CIFAR (pad + random crop + flip), not RandomResizedCrop
MIN_SIDE = 8  # smallest input side (as --image-size): smaller images train into NaN losses, not into a model
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


@dataclass(frozen=True)
class FolderSurvey:
    """Counts and a sample's properties of ``root/train`` and ``root/val``.

    Attributes:
        num_train, num_val: Image files per split.
        classes: Class folder names.
        size: Median (height, width) of the sampled training images.
        grey: Every sampled image is single-channel.
        mean, std: Per-channel statistics of the sampled images (0..1 scale; one value for grey).
        sampled: How many images the properties come from.
        colour_file: When the sample was grey but another image is colour: that image (the folder is colour).
    """

    root: str
    num_train: int
    num_val: int
    classes: tuple[str, ...]
    size: tuple[int, int]
    grey: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sampled: int
    colour_file: str = ""


@dataclass(frozen=True)
class FolderDataConfig:
    """The resolved input pipeline of a folder data set; ``source`` says where each choice came from."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    interpolation: str
    augment: str  # "pad_crop" (small images) | "random_resized_crop"
    pad: int
    source: dict[str, str] = field(default_factory=dict)
    hflip: bool = True  # random horizontal flips in training (--hflip/--no-hflip; timm's convention: on)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        c, h, w = self.input_size
        flip = " + flip" if self.hflip else " (no flip)"
        aug = (f"pad {self.pad} + random crop" if self.augment == "pad_crop" else "RandomResizedCrop") + flip
        chans = f", channels: {self.source['channels']}" if self.source.get("channels") else ""
        return (f"input {c}x{h}x{w} ({self.source.get('input_size', '')}), crop_pct {self.crop_pct}, "
                f"{self.interpolation}, mean/std {_fmt(self.mean)}/{_fmt(self.std)} ({self.source.get('mean', '')}), "
                f"train augmentation: {aug}{chans}")


def _fmt(v: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{x:.3f}" for x in v) + ")"


def _image_files(split: Path) -> list[Path]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    exts = tuple(IMG_EXTENSIONS)
    files = []
    for cls in class_folders(split):
        found = class_files(str(split / cls), exts)
        if not found:
            raise no_images_error(split / cls, exts)
        files += [Path(f) for f in found]
    return files


def _first_colour(files: list[Path]) -> Path | None:
    """The first of ``files`` whose header says colour (headers only: no pixels are decoded); None if all are grey.
    Unreadable files are left to the loader, which names them."""
    from PIL import Image
    for p in files:
        try:
            with Image.open(p) as img:
                if img.mode not in _GREY_MODES:
                    return p
        except Exception:  # noqa: BLE001 - reported by name when the loader reads it
            continue
    return None


@functools.lru_cache(maxsize=8)
def _survey(root: str, mtime: float, sample: int) -> FolderSurvey:
    train, val = Path(root) / "train", Path(root) / "val"
    for split in (train, val):
        if not split.is_dir():
            raise FileNotFoundError(f"ImageFolder split {split} not found: expected {root}/train/<class>/... and "
                                    f"{root}/val/<class>/...")
    files = _image_files(train)
    if not files:
        raise FileNotFoundError(f"no image files under {train}: expected one sub-folder per class holding images")
    picks = [files[i] for i in np.unique(np.linspace(0, len(files) - 1, min(sample, len(files))).astype(int))]
    sizes, grey = [], True
    # statistics in both modes the images may be read in, from one decode of each image; the mode is known at the end
    sums = {m: np.zeros(c) for m, c in (("L", 1), ("RGB", 3))}
    sq = {m: np.zeros(c) for m, c in (("L", 1), ("RGB", 3))}
    count = 0
    for p in picks:
        img = open_image(p, mode="keep")
        grey &= img.mode in _GREY_MODES
        sizes.append((img.height, img.width))
        for m in sums:
            a = np.asarray(img.convert(m), dtype=np.float64).reshape(-1, len(sums[m])) / 255.0
            sums[m] += a.sum(0)
            sq[m] += (a * a).sum(0)
        count += img.height * img.width
    val_files = _image_files(val)
    colour = None
    if grey:  # a sample of grey images decides nothing alone: every other header is read (cheap, no decoding)
        picked = set(picks)
        colour = _first_colour([f for f in files if f not in picked] + val_files)
        grey = colour is None
    mode = "L" if grey else "RGB"
    mean = sums[mode] / count
    std = np.sqrt(np.maximum(sq[mode] / count - mean * mean, 1e-12))
    h, w = np.median(np.asarray(sizes), axis=0).astype(int)
    classes = tuple(class_folders(train))
    return FolderSurvey(root, len(files), len(val_files), classes, (int(h), int(w)), grey,
                        tuple(float(x) for x in mean), tuple(float(x) for x in std), len(picks),
                        str(colour) if colour else "")


def survey_folder(root: str | os.PathLike, sample: int = 256) -> FolderSurvey:
    """Count the images of ``root/train`` and ``root/val`` and read ``sample`` training images spread over the
    sorted file list (sizes, channels, statistics); when they are all grey, the header of every other image is
    checked for colour. Cached per folder while it is unchanged."""
    root = str(Path(root))
    train = Path(root) / "train"
    mtime = train.stat().st_mtime if train.is_dir() else 0.0
    return _survey(root, mtime, sample)


def resolve_folder_data_config(survey: FolderSurvey, model_cfg: dict[str, Any], image_size: int | None = None,
                               pretrained: bool = False, hflip: bool = True) -> FolderDataConfig:
    """The input pipeline for ``survey``'s images and a model's data cfg (timm ``pretrained_cfg`` keys
    ``input_size``, ``crop_pct``, ``interpolation``, ``mean``, ``std``).

    Size: ``image_size`` if given; else the model's input size, or the images' own (shorter median side) when they
    are smaller, which are then not cropped. Channels: one for grey images unless pretrained weights are loaded.
    Normalisation: the model's for pretrained weights, else the images' own. ``hflip``: random horizontal flips
    in training (the caller's choice: whether a mirror changes an image's class cannot be told from the images).
    """
    src: dict[str, str] = {}
    model_side = int(model_cfg["input_size"][-1])
    image_side = min(survey.size)
    if image_size is None and image_side < MIN_SIDE:
        raise ValueError(f"the images of {survey.root}/train are {survey.size[0]}x{survey.size[1]} pixels (median of "
                         f"{survey.sampled}), too small for the models: at least {MIN_SIDE}x{MIN_SIDE}; use larger "
                         f"images, or give --image-size {MIN_SIDE} or more to upscale them")
    if image_size is not None:
        side, src["input_size"] = int(image_size), "--image-size"
        crop = float(model_cfg.get("crop_pct", 0.875)) if side < image_side else 1.0
    elif image_side < model_side:
        side, crop = image_side, 1.0
        src["input_size"] = f"images {survey.size[0]}x{survey.size[1]} < model's {model_side}: not upscaled"
    else:
        side, crop = model_side, float(model_cfg.get("crop_pct", 0.875))
        src["input_size"] = f"model cfg (images {survey.size[0]}x{survey.size[1]})"
    grey = survey.grey and not pretrained
    if pretrained:
        mean, std = tuple(model_cfg["mean"]), tuple(model_cfg["std"])
        src["mean"] = "model cfg (pretrained weights)"
    else:
        mean, std = survey.mean, survey.std
        if not grey and len(mean) == 1:
            mean, std = mean * 3, std * 3
        src["mean"] = f"{survey.sampled} training images"
    chans = 1 if grey else 3
    src["channels"] = "grey images" if grey else ("pretrained weights" if survey.grey else
                                                  f"colour image {survey.colour_file} among grey ones"
                                                  if survey.colour_file else "colour images")
    small = side <= SMALL_IMAGE
    return FolderDataConfig((chans, side, side), tuple(mean), tuple(std), crop,
                            str(model_cfg.get("interpolation", "bilinear")),
                            "pad_crop" if small else "random_resized_crop", max(1, side // 8) if small else 0, src,
                            bool(hflip))

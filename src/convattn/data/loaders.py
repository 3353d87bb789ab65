"""Epoch loaders: in-memory image tensors with batched augmentation, and ImageFolder trees via DataLoader.

Both yield normalised float batches ``(x (B, C, H, W), y (B,))`` and make every epoch's order and
augmentation a function of ``(seed, epoch)`` alone, so a resumed run sees exactly the batches an
uninterrupted run would. Under DistributedDataParallel each global batch is split across ranks, so N
processes see the same samples per step as one process with the same total batch.
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from .folder import FolderDataConfig

import numpy as np
import torch

from .files import class_files, class_folders, no_images_error, open_image

__all__ = ["TensorLoader", "FolderLoader", "epoch_generator", "folder_transform"]


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7919 + salt) % (2**63 - 1))


class _EpochLoader:
    """Batch counting shared by the loaders: training drops the last partial batch, evaluation keeps it."""

    batch_size: int
    train: bool

    @property
    def num_samples(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.train else math.ceil(n / self.batch_size)


class TensorLoader(_EpochLoader):
    """Batches from uint8 images (N, H, W) or (N, H, W, C) held in memory.

    Args:
        images, labels: The data set.
        batch_size: Global batch size (split across ranks).
        train: Shuffle, drop the last partial batch and augment (random crop after zero padding, h-flip).
        mean, std: Per-channel normalisation (on the 0..1 scale) of the batches as yielded.
        pad, flip: Augmentation settings (pad 0 disables the crop; ``flip``: random horizontal flips).
        size: Resize every batch to ``size`` x ``size`` (bilinear, after the augmentation; antialiased when
            shrinking); None keeps the images' size.
        rgb: Yield grey images as three identical channels (timm's convention for RGB-pretrained stems).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, train: bool,
                 mean: tuple[float, ...], std: tuple[float, ...], pad: int = 0, flip: bool = False, seed: int = 0,
                 rank: int = 0, world_size: int = 1, size: int | None = None, rgb: bool = False) -> None:
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"images {images.shape} and labels {labels.shape} do not form a data set")
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} must be divisible by the number of processes ({world_size})")
        if train and batch_size > len(images):
            raise ValueError(f"batch size {batch_size} is larger than the training set ({len(images)} images); "
                             f"use --batch-size {len(images)} or less")
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # (N, C, H, W) uint8
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.batch_size, self.train = batch_size, train
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.pad, self.flip, self.seed = pad, flip, seed
        self.rank, self.world_size = rank, world_size
        self.size = size if size is not None and tuple(self.images.shape[-2:]) != (size, size) else None
        self.rgb = rgb and self.images.shape[1] == 1

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.pad:
            p = self.pad
            xp = torch.nn.functional.pad(x, (p, p, p, p))  # (B, C, H+2p, W+2p), zero padding
            oy = torch.randint(0, 2 * p + 1, (b,), generator=g)
            ox = torch.randint(0, 2 * p + 1, (b,), generator=g)
            rows = (oy[:, None] + torch.arange(h))[:, None, :, None]  # (B, 1, H, 1)
            cols = (ox[:, None] + torch.arange(w))[:, None, None, :]  # (B, 1, 1, W)
            x = xp[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
        if self.flip:
            m = torch.rand(b, generator=g) < 0.5
            x = torch.where(m[:, None, None, None], x.flip(-1), x)
        return x

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = epoch_generator(self.seed, epoch)
        n = self.num_samples
        order = torch.randperm(n, generator=g) if self.train else torch.arange(n)
        local = self.batch_size // self.world_size
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx].float()  # (B, C, H, W) on the 0..255 scale
            if self.train:
                x = self._augment(x, g)  # augmentation drawn for the global batch: same on every rank
            if self.world_size > 1:
                lo = self.rank * local if self.train else None
                sl = slice(lo, lo + local) if self.train else slice(self.rank, None, self.world_size)
                x, yb = x[sl], self.labels[idx][sl]
            else:
                yb = self.labels[idx]
            if self.size is not None:
                x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                                    align_corners=False, antialias=self.size < x.shape[-1])
            if self.rgb:
                x = x.expand(-1, 3, -1, -1)
            yield (x - self.mean) / self.std, yb


def folder_transform(cfg: "FolderDataConfig", train: bool):
    """The image transform of a folder data config: small images are resized (if needed) to the input size, then
    padded, randomly cropped and flipped as in the CIFAR recipes; larger ones go through timm's ImageNet transforms
    (RandomResizedCrop + flip for training, resize + centre crop at ``crop_pct`` for evaluation). Training flips
    only when ``cfg.hflip`` is on (``--no-hflip``: none)."""
    from torchvision import transforms as T
    size = cfg.input_size[-1]
    if cfg.augment == "pad_crop":
        from timm.data.transforms import str_to_interp_mode
        steps = [T.Resize(size, interpolation=str_to_interp_mode(cfg.interpolation)), T.CenterCrop(size)]
        if train:
            steps += [T.RandomCrop(size, padding=cfg.pad)] + ([T.RandomHorizontalFlip()] if cfg.hflip else [])
        return T.Compose(steps + [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])
    from timm.data import create_transform
    return create_transform(size, is_training=train, hflip=0.5 if train and cfg.hflip else 0.0, color_jitter=None,
                            mean=cfg.mean, std=cfg.std, crop_pct=cfg.crop_pct, interpolation=cfg.interpolation)


class _CheckedImageFolder:
    """torchvision ImageFolder that names the file it could not read, scales 16-bit images correctly and lists
    each real folder once (symlink loops)."""

    def __new__(cls, root: Path, transform, mode: str = "RGB"):
        from torchvision.datasets import ImageFolder
        from torchvision.datasets.folder import IMG_EXTENSIONS


        class _Folder(ImageFolder):
            @staticmethod
            def find_classes(directory):  # hidden folders (.ipynb_checkpoints) are not classes: see data.folder
                classes = class_folders(directory)
                if not classes:
                    raise FileNotFoundError(f"no class folder in {directory}")
                return classes, {c: i for i, c in enumerate(classes)}

            @staticmethod
            def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
                exts = tuple(extensions or IMG_EXTENSIONS)
                samples = []
                for name in sorted(class_to_idx):
                    found = [(f, class_to_idx[name]) for f in class_files(os.path.join(directory, name), exts)
                             if is_valid_file is None or is_valid_file(f)]
                    if not found and not allow_empty:  # a class without images: refused by name, as torchvision
                        raise no_images_error(os.path.join(directory, name), exts)
                    samples += found
                if not samples and not allow_empty:
                    raise FileNotFoundError(f"no image files ({', '.join(exts)}) under {directory}")
                return samples

        try:
            return _Folder(str(root), transform=transform, loader=functools.partial(open_image, mode=mode))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{root}: {e}. Expected one sub-folder per class holding images") from e


class FolderLoader(_EpochLoader):
    """An ImageFolder tree (``root/train/<class>/*``, ``root/val/<class>/*``) through a DataLoader, read and
    augmented as a resolved :class:`~convattn.data.folder.FolderDataConfig` says."""

    def __init__(self, root: str | os.PathLike, split: str, batch_size: int, train: bool, data_cfg: "FolderDataConfig",
                 workers: int = 2, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        folder = Path(root) / split
        if not folder.is_dir():
            raise FileNotFoundError(f"ImageFolder split {folder} not found: expected {root}/train/<class>/... and "
                                    f"{root}/val/<class>/...")
        self.dataset = _CheckedImageFolder(folder, folder_transform(data_cfg, train),
                                           "L" if data_cfg.input_size[0] == 1 else "RGB")
        if train and batch_size > len(self.dataset):
            raise ValueError(f"batch size {batch_size} is larger than the training set ({len(self.dataset)} images)")
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} must be divisible by the number of processes ({world_size})")
        self.classes = self.dataset.classes
        self.batch_size, self.train, self.workers, self.seed = batch_size, train, workers, seed
        self.rank, self.world_size = rank, world_size

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from torch.utils.data import DataLoader, DistributedSampler
        g = epoch_generator(self.seed, epoch)
        local = self.batch_size // self.world_size
        if self.world_size > 1:
            sampler = DistributedSampler(self.dataset, self.world_size, self.rank, shuffle=self.train, seed=self.seed,
                                         drop_last=self.train)
            sampler.set_epoch(epoch)
        else:
            sampler = (torch.utils.data.RandomSampler(self.dataset, generator=g) if self.train
                       else torch.utils.data.SequentialSampler(self.dataset))
        base = int(torch.randint(0, 2**31 - 1, (1,), generator=g))

        def init_fn(worker_id: int) -> None:  # per-epoch, per-worker seeds for the random transforms
            torch.manual_seed(base + worker_id)
            np.random.seed((base + worker_id) % 2**32)

        loader = DataLoader(self.dataset, batch_size=local, sampler=sampler, num_workers=self.workers,
                            drop_last=self.train, worker_init_fn=init_fn, persistent_workers=False)
        if self.workers == 0:
            torch.manual_seed(base)
        yield from loader

"""Pieces of the engine every task uses: seeding, autocast, input checks, progress bars."""
from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_all", "autocast", "check_finite", "Progress"]


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """Autocast context for ``amp`` in {"none", "bf16", "fp16"}."""
    if amp == "none":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def check_finite(x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise ValueError("the input batch contains NaN or Inf values; check the data files and normalisation")


class Progress:
    """A rich progress bar on rank 0 (silent elsewhere or when disabled)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress
            self.progress = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), transient=True)

    def __enter__(self):
        if self.progress:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress:
            self.progress.__exit__(*exc)

    def add(self, desc: str, total: int):
        return self.progress.add_task(desc, total=total, stats="") if self.progress else None

    def update(self, task, stats: str) -> None:
        if self.progress:
            self.progress.update(task, advance=1, stats=stats)

    def print(self, msg: str) -> None:
        if self.progress:
            self.progress.console.print(msg)
        elif self.enabled:
            print(msg, flush=True)

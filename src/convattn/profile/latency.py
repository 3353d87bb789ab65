"""Measured forward latency: warm-up, fixed threads, interleaved repeated runs, median and spread.

Models are timed round-robin (each round runs every model once, in a rotated order), so drifts of a noisy
machine (frequency scaling, other processes) hit every model alike and ratios to the baseline stay fair.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

__all__ = ["Timing", "measure_latency", "prepare_for_timing"]


@dataclass
class Timing:
    median_ms: float
    iqr_ms: float  # interquartile range
    min_ms: float
    runs: int
    batch_size: int

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return self.batch_size / (self.median_ms / 1000.0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare_for_timing(model: nn.Module, device: torch.device, channels_last: bool = False,
                       compile: bool = False, dtype: torch.dtype | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Move to device/layout/dtype in eval mode; optionally ``torch.compile``."""
    model = model.eval().to(device)
    if dtype is not None:
        model = model.to(dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile else model


@torch.inference_mode()
def measure_latency(models: Sequence[Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, warmup: int = 3,
                    repeats: int = 10, min_time_s: float = 0.0) -> list[Timing]:
    """Time each model's forward on ``x``; returns one Timing per model in input order."""
    device = x.device
    for m in models:
        for _ in range(warmup):
            m(x)
    _sync(device)
    times: list[list[float]] = [[] for _ in models]
    start = time.perf_counter()
    r = 0
    while r < repeats or (time.perf_counter() - start) < min_time_s:
        order = list(range(len(models)))
        order = order[r % len(order):] + order[:r % len(order)]
        for i in order:
            _sync(device)
            t0 = time.perf_counter()
            models[i](x)
            _sync(device)
            times[i].append((time.perf_counter() - t0) * 1000.0)
        r += 1
    out = []
    for ts in times:
        q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0]] * 3
        out.append(Timing(statistics.median(ts), q[2] - q[0], min(ts), len(ts), x.shape[0]))
    return out

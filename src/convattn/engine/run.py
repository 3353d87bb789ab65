"""The skeleton of a task's run, shared by every task (classification, detection).

A task declares a config dataclass derived from :class:`RunConfig` and gives it the numeric ranges of its own
fields, the settings a resumed run must agree on and the command that writes its folders; the steps
that are the same for every task live here once: preset filling, range and option checks, the process set-up,
the run folder's lock and files, the SGD optimizer with convattn's parameter groups, and reading a run back.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

import torch
from torch import nn

from ..report import atomic_write_text
from ..validate import ConfigError, check_values, option
from .checkpoint import read_run_config, run_lock
from .common import seed_all
from .distributed import DistInfo, distributed_session
from .optim import check_attn_lr_mult, check_wd_exclude, param_groups

__all__ = ["RunConfig", "COMMON_RANGES", "COMMON_RESUME_KEYS", "AMP_MODES", "fill_preset", "check_settings",
           "run_task", "start_process", "write_run_info", "build_sgd", "read_run"]

AMP_MODES = ("none", "bf16", "fp16")

# (field, bounds) of the numeric settings every run has; a task adds its own (RunConfig.RANGES)
COMMON_RANGES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("seed", dict(lo=0, integer=True)), ("workers", dict(lo=0, integer=True)),
    ("threads", dict(lo=1, integer=True, optional=True)), ("stop_after", dict(lo=1, integer=True, optional=True)),
)
# settings of every task that a resumed run must agree on; a task adds its own (RunConfig.RESUME_KEYS)
COMMON_RESUME_KEYS = ("seed", "attn_lr_mult")


@dataclass
class RunConfig:
    """Settings every task's run has: the optimizer's parameter groups, autocast, and how the run executes.

    A task's config derives from it and sets the class attributes below; ``None`` fields of the task are filled
    from its preset (:func:`fill_preset`).
    """

    COMMAND: ClassVar[str] = ""  # the command that writes the task's run folders (named in errors)
    RANGES: ClassVar[tuple[tuple[str, dict[str, Any]], ...]] = ()  # the task's own numeric fields
    RESUME_KEYS: ClassVar[tuple[str, ...]] = ()  # the task's own settings a resumed run must agree on

    wd_exclude: str = option("declared", "no weight decay on: nothing / module-declared params (GCT beta) / also "
                             "norms and biases", ["none", "declared", "norm_bias"])
    attn_lr_mult: float = option(1.0, "learning-rate multiplier for attention parameters (attention modules, AW's "
                                 "generator)")
    amp: str = option("none", "autocast", list(AMP_MODES))
    seed: int = option(0, "seed of the data order, augmentation and initialisation")
    workers: int = option(2, "DataLoader workers")
    threads: int | None = option(None, "torch CPU threads")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    out: str = option("runs/run", "run folder")
    resume: bool = option(True, "resume from the run folder's last checkpoint")
    progress: bool = option(True, "progress bars")
    stop_after: int | None = option(None, "end this call after that epoch (time-sliced jobs); rerun to continue")

    @classmethod
    def resume_keys(cls) -> tuple[str, ...]:
        """Every setting a resumed run must agree on with its checkpoint."""
        return tuple(dict.fromkeys(cls.RESUME_KEYS + COMMON_RESUME_KEYS))

    @classmethod
    def identity_keys(cls) -> tuple[str, ...]:
        """Deprecated name of :meth:`resume_keys` (the identity of ``--identity`` is the identity start)."""
        warnings.warn("identity_keys() is now resume_keys()", DeprecationWarning, stacklevel=2)
        return cls.resume_keys()


def fill_preset(d: dict[str, Any], values: dict[str, Any]) -> None:
    """Fill the fields of ``d`` that are ``None`` (not given) from a preset's ``values``, in place."""
    for k, v in values.items():
        if d.get(k) is None:
            d[k] = v


def check_settings(d: dict[str, Any], ranges: tuple[tuple[str, dict[str, Any]], ...]) -> None:
    """Refuse out-of-range values (the common ones and ``ranges``), an empty run folder name, an unknown autocast
    mode and bad optimizer-group settings, one line each; ``d["attn_lr_mult"]`` becomes a float."""
    check_values(d, COMMON_RANGES + tuple(ranges))
    if not str(d["out"]).strip():  # Path("") is the current folder
        raise ConfigError(f"out (--out) {d['out']!r} names no folder; give the run folder to write to")
    if d["amp"] not in AMP_MODES:
        raise ValueError(f"amp must be none, bf16 or fp16, got {d['amp']!r}")
    check_wd_exclude(d["wd_exclude"])
    d["attn_lr_mult"] = check_attn_lr_mult(d["attn_lr_mult"])


R = TypeVar("R")


def run_task(cfg: RunConfig, body: Callable[[Any, DistInfo], R]) -> R:
    """``body(cfg, info)`` inside a distributed session (one process, or every rank under torchrun), with the run
    folder locked by the main process (one writer per folder)."""
    with distributed_session(cfg.device) as info:
        with run_lock(cfg.out) if info.is_main else contextlib.nullcontext():
            return body(cfg, info)


def start_process(cfg: RunConfig, deterministic: bool = False) -> None:
    """Threads, deterministic algorithms and every seed, before anything random is built."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    seed_all(cfg.seed)


def write_run_info(out: Path, settings: dict[str, Any], data_info: dict[str, Any]) -> None:
    """The run folder's ``config.json`` (every setting) and ``data.json`` (what reading the run back needs)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(settings, indent=2))
    atomic_write_text(out / "data.json", json.dumps(data_info, indent=2))


def build_sgd(model: nn.Module, cfg: Any, nesterov: bool = False) -> torch.optim.SGD:
    """SGD over convattn's parameter groups (:func:`convattn.engine.optim.param_groups`): no weight decay on what
    modules declare (``cfg.wd_exclude``), attention at ``cfg.attn_lr_mult`` x the rate. Parameters that do not
    require a gradient are left out."""
    groups = param_groups(model, cfg.lr, cfg.weight_decay, cfg.wd_exclude, cfg.attn_lr_mult)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov and cfg.momentum > 0)


def read_run(config_cls: type, run_dir: str | os.PathLike) -> tuple[Any, dict[str, Any] | None]:
    """(config, ``data.json`` or None) of a run folder of ``config_cls``'s task."""
    return read_run_config(run_dir, config_cls, config_cls.COMMAND)


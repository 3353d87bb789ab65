"""The training loop every task runs: epochs of updates, resume, checkpoints, progress and metrics files.

A task (classification, detection, ...) supplies what differs through a small ``Task`` object: its batches, the
loss of one batch (with the statistics it wants summed over the epoch), and what happens at the end of an epoch
(evaluation, the metrics row). Everything else lives here once: seeding per epoch, autocast and the fp16 grad
scaler, the non-finite loss check, the optimizer/scheduler/EMA step, DistributedDataParallel bookkeeping, atomic
checkpoints after every epoch and the strict settings check when a run resumes.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import torch
from torch import nn

from ..report import atomic_write_text, write_csv
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .common import Progress, autocast
from .distributed import DistInfo, all_reduce_sum, barrier

__all__ = ["Task", "RunState", "Loop", "resume_run", "settings_diff", "wrap_model"]


class Task(Protocol):
    """What a task plugs into ``Loop.fit``."""

    name: str  # shown in progress lines, e.g. "resnet20/se/seed0"
    steps_per_epoch: int

    def batches(self, epoch: int) -> Iterable[Any]:
        """The training batches of ``epoch`` (1-based), already split for this rank."""

    def loss(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to minimise, float64 CPU vector of per-batch sums to accumulate over the epoch)."""

    def progress(self, sums: torch.Tensor, seconds: float) -> str:
        """Progress-bar text from this rank's running sums."""

    def end_epoch(self, epoch: int, sums: torch.Tensor, seconds: float) -> dict[str, Any]:
        """The epoch's metrics (the loop adds ``epoch``, ``lr`` and ``elapsed_s``) from the all-reduced sums;
        evaluation goes here. Runs on every rank."""

    def epoch_line(self, row: dict[str, Any]) -> str:
        """One printed line per finished epoch."""

    # optional: ``begin_epoch(epoch) -> nn.Module | None``, called after the model is put in training mode at the
    # start of every epoch (e.g. to freeze part of it); a module returned replaces the one the loop calls


@dataclass
class RunState:
    """Where a run stands: the next epoch, updates made so far and the metrics rows of finished epochs."""

    start_epoch: int = 1
    updates: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)


def settings_diff(saved: dict[str, Any], now: dict[str, Any], keys: Sequence[str]) -> list[str]:
    """``"key: old -> new"`` for every resume setting (``keys``) a checkpoint was made with that differs now."""
    return [f"{k}: {saved[k]!r} -> {now.get(k)!r}" for k in keys if k in saved and saved[k] != now.get(k)]


def resume_run(ckpt_root: Path, settings: dict[str, Any], resume_keys: Sequence[str], model: nn.Module,
               opt: torch.optim.Optimizer, sched: Any = None, scaler: Any = None, ema: nn.Module | None = None
               ) -> RunState:
    """Load the latest checkpoint under ``ckpt_root`` (if any) into the training objects.

    A checkpoint made with other values of ``resume_keys`` (model, data, schedule, seed, ...) is refused with
    every difference named: resuming it would silently continue another experiment.
    """
    last = latest_checkpoint(ckpt_root)
    if last is None:
        return RunState()
    state, meta = load_checkpoint(last, model, ema)
    diff = settings_diff(meta.get("config", {}), settings, resume_keys)
    if diff:
        raise CheckpointError(f"{last} belongs to a run with different settings ({', '.join(diff)}); "
                              "use another --out or --no-resume")
    opt.load_state_dict(state["optimizer"])
    if sched is not None and state.get("scheduler"):
        sched.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return RunState(int(meta["epoch"]) + 1, int(state["updates"]), list(meta.get("metrics", [])))


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile`` with the inductor options measured best for the model.

    On CPU, the options the network's attention modules declare (``cpu_compile_options``: AW-convolution turns
    inductor's layout optimisation off, measured in benchmarks/results/cpu_compile_r20_aw).
    """
    from ..layers import AttentionModule
    options: dict = {}
    if all(p.device.type == "cpu" for p in model.parameters()):
        for m in model.modules():  # what the modules ask for (the contract's cpu_compile_options)
            if isinstance(m, AttentionModule):
                options.update(m.cpu_compile_options)
    return torch.compile(model, options=options) if options else torch.compile(model)


def wrap_model(model: nn.Module, info: DistInfo, compile: bool = False) -> nn.Module:
    """The module the loop calls: optionally compiled (:func:`compile_model`), then DistributedDataParallel under
    torchrun."""
    net = compile_model(model) if compile else model
    if info.enabled:
        dev = info.device
        net = nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    return net


@dataclass
class Loop:
    """One run's training objects and settings; ``fit`` trains from ``state`` to the last epoch."""

    model: nn.Module  # the bare model (checkpointed, EMA source)
    net: nn.Module  # what is called (compiled / DDP-wrapped model)
    opt: torch.optim.Optimizer
    info: DistInfo
    out: Path
    settings: dict[str, Any]  # the resolved config, stored in every checkpoint
    epochs: int
    seed: int
    sched: Any = None  # timm scheduler, stepped per update (``step_update``)
    scaler: Any = None  # torch.amp.GradScaler for fp16 on CUDA
    ema: Any = None  # timm ModelEmaV3
    amp: str = "none"
    stop_after: int | None = None
    keep_last: int = 1
    progress: bool = True
    metrics_jsonl: bool = False

    def fit(self, task: Task, state: RunState) -> RunState:
        """Train epochs ``state.start_epoch .. min(epochs, stop_after)``; checkpoint after each one."""
        info, device = self.info, self.info.device
        last_epoch = self.epochs if self.stop_after is None else min(self.epochs, self.stop_after)
        t_run = time.perf_counter() - (state.rows[-1].get("elapsed_s", 0.0) if state.rows else 0.0)
        with Progress(self.progress and info.is_main) as bar:
            if state.start_epoch > self.epochs:
                bar.print(f"{task.name}: already trained {self.epochs} epochs (resume found epoch {state.start_epoch - 1})")
            for epoch in range(state.start_epoch, last_epoch + 1):
                torch.manual_seed(self.seed * 100_003 + epoch)  # dropout and other in-model randomness, per epoch
                self.net.train()
                begin = getattr(task, "begin_epoch", None)
                if begin is not None:
                    self.net = begin(epoch) or self.net
                bar_task = bar.add(f"{task.name} ep {epoch}/{self.epochs}", task.steps_per_epoch)
                sums: torch.Tensor | None = None
                lr = self.opt.param_groups[0]["lr"]
                t0 = time.perf_counter()
                for batch in task.batches(epoch):
                    with autocast(device, self.amp):
                        loss, stats = task.loss(self.net, batch)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"{task.name}: loss became {loss.item()} at epoch {epoch}, update "
                                                 f"{state.updates}; lower --lr or disable --amp")
                    lr = self.opt.param_groups[0]["lr"]  # the rate this update uses (the schedule moves on below)
                    self._step(loss)
                    state.updates += 1
                    if self.sched is not None:
                        self.sched.step_update(state.updates)
                    if self.ema is not None:
                        self.ema.update(self.model, step=state.updates)
                    sums = stats if sums is None else sums + stats
                    bar.update(bar_task, task.progress(sums, time.perf_counter() - t0))
                seconds = time.perf_counter() - t0
                sums = all_reduce_sum(sums if sums is not None else torch.zeros(1, dtype=torch.float64), info)
                row = {"epoch": epoch, "lr": lr, **task.end_epoch(epoch, sums, seconds),
                       "elapsed_s": time.perf_counter() - t_run}  # lr: the first group's rate in the epoch's last update
                state.rows.append(row)
                if info.is_main:
                    bar.print(task.epoch_line(row))
                    self._write_epoch(epoch, state)
                barrier(info)
        return state

    def _step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()

    def _write_epoch(self, epoch: int, state: RunState) -> None:
        write_csv(self.out / "metrics.csv", state.rows)
        if self.metrics_jsonl:
            atomic_write_text(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in state.rows))
        ckpt = {"optimizer": self.opt.state_dict(), "updates": state.updates,
                "scheduler": self.sched.state_dict() if self.sched is not None else {},
                "scaler": self.scaler.state_dict() if self.scaler is not None else {}}
        save_checkpoint(self.out / "checkpoints", epoch, self.model, ckpt,
                        {"epoch": epoch, "config": self.settings, "metrics": state.rows},
                        self.ema.module if self.ema is not None else None, self.keep_last)

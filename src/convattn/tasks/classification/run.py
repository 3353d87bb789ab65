"""Classification on the shared engine (``convattn.engine``): the task's loss and steps, and the run. Its data and
model are ``model.py``, evaluation and reading a run back ``evaluation.py``, its settings ``config.py``.

Reproducible (seeded order, augmentation and dropout per epoch), resumable bit for bit from the last
completed epoch, DistributedDataParallel under torchrun (gloo on CPU, nccl on CUDA), timm schedulers and EMA.
"""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...data import DataBundle
from ...engine import Loop, RunState, create_scheduler, latest_checkpoint, resume_run, wrap_model
from ...engine.common import check_finite
from ...engine.distributed import DistInfo
from ...engine.freeze import Freeze, new_parameter_names
from ...engine.run import build_sgd, run_task, start_process, write_run_info
from ...models import LoadReport
from ...report import atomic_write_text, save_figure
from .config import TrainConfig, resolve_with_notes
from .evaluation import evaluate, evaluate_run, load_run, recalibrate_bn
from .model import build_model, data_for, describe_run

__all__ = ["train", "evaluate", "evaluate_run", "load_run", "build_model", "data_for", "describe_run",
           "recalibrate_bn", "ClassificationTask"]

#: A fine-tuning run's record of its weights file as it started (the path and the load report: the tensors it
#: filled, the head zeroed); a resumed run reads it instead of the file.
WEIGHTS_JSON = "weights.json"


def _plot_curves(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """``curves.png`` of the run; without matplotlib (the ``plots`` extra) a one-line note instead of the file."""
    from ...optional import MissingExtra, require
    try:
        matplotlib = require("matplotlib", "plots", f"{path.name} (training curves)")
    except MissingExtra as e:
        print(f"note: {path} not written: {e}")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot(ep, [r["train_loss"] for r in rows], "o-", label="train")
    ax[0].plot(ep, [r["val_loss"] for r in rows], "s-", label="val")
    ax[0].set_xlabel("epoch"), ax[0].set_ylabel("loss"), ax[0].legend()
    ax[1].plot(ep, [r["train_top1"] for r in rows], "o-", label="train")
    ax[1].plot(ep, [r["val_top1"] for r in rows], "s-", label="val")
    if rows and "ema_top1" in rows[0]:
        ax[1].plot(ep, [r["ema_top1"] for r in rows], "^-", label="val (EMA)")
    ax[1].set_xlabel("epoch"), ax[1].set_ylabel("top-1 (%)"), ax[1].legend()
    fig.suptitle(title)
    save_figure(fig, path)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) one run; returns the final summary (also written to ``<out>/final.json``)."""
    cfg, notes = resolve_with_notes(cfg)
    return run_task(cfg, lambda c, info: _train(c, info, notes))


class ClassificationTask:
    """Image classification for the engine's loop: cross-entropy on (image, label) batches, top-1/top-5 evaluation
    after every epoch (and of the EMA weights when kept)."""

    def __init__(self, cfg: TrainConfig, data: DataBundle, model: nn.Module, info: DistInfo, ema: Any = None,
                 freeze: Freeze | None = None) -> None:
        self.cfg, self.data, self.model, self.info, self.ema, self.freeze = cfg, data, model, info, ema, freeze
        self.name = f"{cfg.model}/{cfg.variant}/seed{cfg.seed}"
        self.steps_per_epoch = len(data.train)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def batches(self, epoch: int):
        return self.data.train.epoch(epoch)

    def begin_epoch(self, epoch: int) -> nn.Module | None:
        """Freeze or unfreeze the pretrained part for ``epoch`` (``--freeze-epochs``); when the trainable
        parameters change under DDP or torch.compile, the model is wrapped again (DDP reduces only the parameters
        that needed a gradient when it was built)."""
        if self.freeze is not None and self.freeze.apply(epoch) and (self.info.enabled or self.cfg.compile):
            return wrap_model(self.model, self.info, self.cfg.compile)
        return None

    def loss(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.info.device
        x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        check_finite(x)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = net(x)
        loss = self.criterion(logits.float(), y)
        n = len(y)
        correct = (logits.argmax(1) == y).sum().item()
        return loss, torch.tensor([loss.item() * n, correct, n], dtype=torch.float64)  # loss sum, correct, n

    def progress(self, sums: torch.Tensor, seconds: float) -> str:
        return (f"loss {sums[0] / sums[2]:.3f} acc {100 * sums[1] / sums[2]:.1f}% "
                f"{sums[2].item() * self.info.world_size / seconds:.0f} img/s")

    def end_epoch(self, epoch: int, sums: torch.Tensor, seconds: float) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        val = evaluate(self.model, self.data.val, info.device, cfg.amp, cfg.channels_last, info)
        row = dict(train_loss=sums[0].item() / sums[2].item(),
                   train_top1=100 * sums[1].item() / sums[2].item(), val_loss=val["loss"], val_top1=val["top1"],
                   val_top5=val["top5"], images_per_s=sums[2].item() / seconds, epoch_time_s=seconds)
        if self.ema is not None:
            ev = evaluate(self.ema.module, self.data.val, info.device, cfg.amp, cfg.channels_last, info)
            row.update(ema_top1=ev["top1"], ema_loss=ev["loss"])
        return row

    def epoch_line(self, row: dict[str, Any]) -> str:
        return (f"{self.name} epoch {row['epoch']}/{self.cfg.epochs}: train loss {row['train_loss']:.4f} "
                f"top-1 {row['train_top1']:.2f}% | val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.2f}% "
                f"| {row['images_per_s']:.0f} img/s")


def _train(cfg: TrainConfig, info: DistInfo, notes: list[str] | None = None) -> dict[str, Any]:
    out = Path(cfg.out)
    start_process(cfg, cfg.deterministic)
    device = info.device
    started = _started_from(cfg, out)  # a resumed fine-tuning run: what it read from its weights file at the start
    data = data_for(cfg, cfg.batch_size, cfg.eval_batch_size, info.rank, info.world_size,
                    run_info=started[0] if started else None)
    if info.is_main:
        for line in describe_run(cfg, data, notes):
            print(line)
    if started:  # the checkpoint holds every tensor: the weights file is not read again (it may have moved)
        model = build_model(replace(cfg, pretrained_path=None, pretrained_partial=False), data).to(device)
        model.pretrained_report = started[1]
    else:
        model = build_model(cfg, data).to(device)
        report = getattr(model, "pretrained_report", None)
        if info.is_main and report is not None:
            print(f"{cfg.model}: weights from {cfg.pretrained_path}: {report.summary()}")
            if report.zeroed_head:
                print(f"new classifier head ({', '.join(report.zeroed_head)}) starts at zero: uniform predictions, "
                      "no random logit scale for the first updates to undo")
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / WEIGHTS_JSON, json.dumps(dict(path=str(cfg.pretrained_path), **asdict(report)),
                                                             indent=2))
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # every parameter is in a group, frozen or not: the groups (and a checkpoint's optimizer state) are the same
    # in every epoch; a frozen parameter gets no gradient, so SGD leaves it (and its momentum) alone
    opt = build_sgd(model, cfg, nesterov=cfg.nesterov)
    freeze = None
    if cfg.freeze_epochs or cfg.bn_eval:
        report = getattr(model, "pretrained_report", None)
        loaded = list(report.loaded) if report is not None else None
        freeze = Freeze(model, new_parameter_names(model, loaded), cfg.freeze_epochs, loaded, cfg.bn_eval)
        if info.is_main and cfg.freeze_epochs:
            n_new, n_frozen = freeze.counts()
            print(f"while frozen: {n_new:,} parameters train, {n_frozen:,} are frozen, {len(freeze.bn)} BatchNorm "
                  "layers keep their pretrained statistics")
        if info.is_main and cfg.bn_eval:
            print(f"BatchNorm (--bn-eval): {len(freeze.bn)} pretrained BatchNorm layers keep their statistics for the "
                  "whole run (eval mode); their weights and biases still train once unfrozen")
    steps = len(data.train)
    sched = create_scheduler(opt, cfg.schedule, steps, cfg.epochs, int(round(cfg.warmup_epochs * steps)),
                             cfg.warmup_lr, cfg.min_lr, cfg.milestones, cfg.gamma)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=cfg.ema_decay)
    scaler = torch.amp.GradScaler(device.type) if (cfg.amp == "fp16" and device.type == "cuda") else None

    settings = asdict(cfg)
    state = resume_run(out / "checkpoints", settings, TrainConfig.resume_keys(), model, opt, sched, scaler,
                       ema.module if ema is not None else None) if cfg.resume else RunState()
    if info.is_main:
        write_run_info(out, settings, dict(
            name=data.name, mean=data.mean, std=data.std, image_size=data.image_size, in_chans=data.in_chans,
            num_classes=data.num_classes, classes=data.classes,
            folder_cfg=data.folder_cfg.to_dict() if data.folder_cfg else None, source=data.source or None))

    start = _start_evaluation(cfg, data, model, info, out, fresh=not state.rows)
    if freeze is not None:
        freeze.apply(state.start_epoch)  # before DDP is built: it registers the parameters that need a gradient
    task = ClassificationTask(cfg, data, model, info, ema, freeze)
    loop = Loop(model, wrap_model(model, info, cfg.compile), opt, info, out, settings, cfg.epochs, cfg.seed, sched,
                scaler, ema, cfg.amp, cfg.stop_after, cfg.keep_last, cfg.progress, metrics_jsonl=True)
    rows = loop.fit(task, state).rows
    if rows and rows[-1]["epoch"] < cfg.epochs:
        return {"model": cfg.model, "variant": cfg.variant, "seed": cfg.seed, "stopped_after": rows[-1]["epoch"],
                "epochs": cfg.epochs, "val_top1": rows[-1]["val_top1"], **start}
    final = dict(model=cfg.model, variant=cfg.variant, seed=cfg.seed, epochs=cfg.epochs, data=cfg.data,
                 train_images=data.train.num_samples, val_images=data.val.num_samples,
                 val_top1=rows[-1]["val_top1"], val_top5=rows[-1]["val_top5"], val_loss=rows[-1]["val_loss"],
                 best_val_top1=max(r["val_top1"] for r in rows), train_time_s=sum(r["epoch_time_s"] for r in rows),
                 images_per_s=float(np.mean([r["images_per_s"] for r in rows])), world_size=info.world_size,
                 params=sum(p.numel() for p in model.parameters()), **start)
    if ema is not None:
        final["ema_top1"] = rows[-1]["ema_top1"]
    if info.is_main:
        _plot_curves(rows, out / "curves.png", task.name)
        atomic_write_text(out / "final.json", json.dumps(final, indent=2))
    return final


def _started_from(cfg: TrainConfig, out: Path) -> tuple[dict[str, Any], LoadReport] | None:
    """For a fine-tuning run that resumes from a checkpoint: its ``data.json`` and the load report of its weights
    file as the run started (``weights.json``); None for a fresh run, a run without a weights file, or a run
    written before ``weights.json`` existed (which reads the file again)."""
    if not (cfg.resume and cfg.pretrained_path) or latest_checkpoint(out / "checkpoints") is None:
        return None
    try:
        data_info = json.loads((out / "data.json").read_text())
        stored = json.loads((out / WEIGHTS_JSON).read_text())
        report = LoadReport(**{k: list(stored[k]) for k in LoadReport.__dataclass_fields__})
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return data_info, report


def _start_evaluation(cfg: TrainConfig, data: DataBundle, model: nn.Module, info: DistInfo, out: Path,
                      fresh: bool) -> dict[str, float]:
    """With pretrained weights: the validation result of the network as it starts (before the first update),
    printed and kept in ``start.json`` (a resumed run reads it back); ``{}`` otherwise. In the identity form it
    is the plain network's result, exactly."""
    if not cfg.pretrained_path:
        return {}
    path = out / "start.json"
    if not fresh:
        try:
            return {k: float(v) for k, v in json.loads(path.read_text()).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            return {}
    res = evaluate(model, data.val, info.device, cfg.amp, cfg.channels_last, info)
    start = {"start_val_top1": res["top1"], "start_val_top5": res["top5"], "start_val_loss": res["loss"]}
    if info.is_main:
        print(f"start (before training): val loss {res['loss']:.4f} top-1 {res['top1']:.2f}%")
        atomic_write_text(path, json.dumps(start, indent=2))
    return start

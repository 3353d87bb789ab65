"""Evaluating classification: top-1/top-5 and loss over a loader, reading a run back (``load_run``: its
settings, data info and weights; the original pretrained file is not needed), BatchNorm recalibration and
evaluating a run on other data (``evaluate_run``).
"""
from __future__ import annotations


import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...data import resolve_name
from ...engine.checkpoint import latest_checkpoint, load_run_weights
from ...engine.common import autocast
from ...engine.distributed import DistInfo, all_reduce_sum, init_distributed
from ...engine.run import read_run
from ...report import atomic_write_text
from .config import TrainConfig
from .model import build_model, data_for

__all__ = ["evaluate", "load_run", "recalibrate_bn", "evaluate_run"]


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: torch.device, amp: str = "none", channels_last: bool = False,
             info: DistInfo | None = None, epoch: int = 0) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (in %) over a loader; summed across ranks."""
    info = info or DistInfo()
    was = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # loss, top1, top5, n
    for x, y in loader.epoch(epoch):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, 1).indices
        sums += torch.tensor([F.cross_entropy(logits, y, reduction="sum").item(), (top[:, 0] == y).sum().item(),
                              (top == y[:, None]).any(1).sum().item(), len(y)], dtype=torch.float64)
    all_reduce_sum(sums, info)
    model.train(was)
    n = max(sums[3].item(), 1.0)
    return {"loss": sums[0].item() / n, "top1": 100 * sums[1].item() / n, "top5": 100 * sums[2].item() / n,
            "n": int(sums[3].item())}


def load_run(run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
             use_ema: bool = False) -> tuple[TrainConfig, dict[str, Any], nn.Module]:
    """(config, data info, model with the run's latest or given weights) of a folder written by ``train``."""
    cfg, info = read_run(TrainConfig, run_dir)
    if info is None:  # runs from before data.json: rebuild the statistics from the data set
        d = data_for(cfg, cfg.batch_size or 1, workers=0)
        info = dict(name=d.name, mean=d.mean, std=d.std, image_size=d.image_size, in_chans=d.in_chans,
                    num_classes=d.num_classes, classes=d.classes)
    # the checkpoint holds every weight: the file a fine-tuned run started from is not needed (it may have moved)
    model = build_model(replace(cfg, pretrained_path=None, pretrained_partial=False), num_classes=info["num_classes"],
                        in_chans=info["in_chans"])
    load_run_weights(run_dir, model, checkpoint, use_ema)
    return cfg, info, model.eval()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches_iter: Any, batches: int, device: torch.device, amp: str = "none",
                   channels_last: bool = False) -> int:
    """Re-estimate every BatchNorm's running statistics as a plain average over ``batches`` training batches
    ("precise BN"): a check on whether running averages that lag behind the weights (e.g. CBAM's official
    momentum 0.01) hurt evaluation. Weights are untouched; returns the number of batches used."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.eval()
    for m in bns:
        m.train()
    used = 0
    try:
        for x, _ in batches_iter:
            if used >= batches:
                break
            x = x.to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                model(x)
            used += 1
    finally:
        for m, (mom, tr) in zip(bns, saved):
            m.momentum = mom
            m.train(tr)
    if used == 0:
        raise ValueError("recalibrate_bn: no training batches")
    return used


def _check_same_classes(run_dir: Path, run_info: dict[str, Any], classes: Any, where: Any) -> None:
    """Refuse evaluation data whose classes are not the run's (the logits would be read as other classes)."""
    want, got = list(run_info.get("classes") or []), list(classes)
    if want and want != got:
        def show(c: list[str]) -> str:
            return f"{len(c)} [{', '.join(map(str, c[:8]))}{', ...' if len(c) > 8 else ''}]"
        raise ValueError(f"class mismatch: {where} has the classes {show(got)}, but the run {run_dir} was trained on "
                         f"{show(want)}; evaluate it on data with the same class folders")


def evaluate_run(run_dir: str | os.PathLike, data: str | None = None, data_dir: str | None = None,
                 checkpoint: str | None = None, use_ema: bool = False, batch_size: int | None = None,
                 device: str = "auto", recalibrate_bn_batches: int = 0) -> dict[str, Any]:
    """Evaluate a trained run (its config.json and latest checkpoint, or an explicit checkpoint folder/file).

    ``recalibrate_bn_batches`` > 0 first re-estimates the BatchNorm statistics on that many training batches
    (see ``recalibrate_bn``) and writes ``eval_precise_bn.json`` instead of ``eval.json``.
    """
    run_dir = Path(run_dir)
    cfg, run_info, model = load_run(run_dir, checkpoint, use_ema)
    if data:
        cfg.data, cfg.data_dir = data, data_dir
    info = init_distributed(device)
    batch_size = batch_size or cfg.eval_batch_size or cfg.batch_size or 256  # default: the batch used in training
    train_batch = batch_size  # the training images serve only --recalibrate-bn (and a folder's statistics)
    if resolve_name(cfg.data) == "folder" and cfg.data_dir:  # the classes first: they decide whether it can be run
        from ...data import survey_folder
        survey = survey_folder(cfg.data_dir)
        _check_same_classes(run_dir, run_info, survey.classes, cfg.data_dir)
        train_batch = min(batch_size, survey.num_train)
    # same train_size: the normalisation statistics come from the training images
    bundle = data_for(cfg, train_batch, batch_size, run_info=run_info)
    _check_same_classes(run_dir, run_info, bundle.classes, bundle.name)
    model = model.to(info.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    used = 0
    if recalibrate_bn_batches > 0:
        used = recalibrate_bn(model, bundle.train.epoch(0), recalibrate_bn_batches, info.device, cfg.amp, cfg.channels_last)
    res = evaluate(model, bundle.val, info.device, cfg.amp, cfg.channels_last)  # as the run evaluated itself
    res.update(run=str(run_dir), checkpoint=str(checkpoint or latest_checkpoint(run_dir / "checkpoints")),
               data=bundle.name, ema=use_ema, bn_recalibrated_batches=used)
    target = run_dir / ("eval_precise_bn.json" if used else "eval.json")
    try:
        atomic_write_text(target, json.dumps(res, indent=2))
        res["written"] = str(target)
    except OSError as e:  # a read-only run folder: the result is still returned (and printed by the CLI)
        res["not_written"] = f"{target}: {e.strerror or e}"
    return res

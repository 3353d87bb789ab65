"""Classification on the shared engine (``convattn.engine``): data and model, the task's loss and evaluation, the
run, and reading a run back (its settings: ``config``).

Reproducible (seeded order, augmentation and dropout per epoch), resumable bit for bit from the last
completed epoch, DistributedDataParallel under torchrun (gloo on CPU, nccl on CUDA), timm schedulers and EMA.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...data import DataBundle, build_data, resolve_name
from ...engine import Loop, RunState, create_scheduler, resume_run, wrap_model
from ...engine.checkpoint import latest_checkpoint, load_run_weights
from ...engine.common import autocast, check_finite
from ...engine.distributed import DistInfo, all_reduce_sum, init_distributed
from ...engine.freeze import Freeze, new_parameter_names, zero_new_head
from ...engine.run import build_sgd, read_run, run_task, start_process, write_run_info
from ...models import create_model, default_data_cfg, parse_variant
from ...report import atomic_write_text, save_figure
from .config import TrainConfig, resolve_with_notes

__all__ = ["train", "evaluate", "evaluate_run", "load_run", "build_model", "data_for", "describe_run",
           "recalibrate_bn", "ClassificationTask"]


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


def _stem_channels(model_name: str, path: str) -> int | None:
    """Input channels of the first convolution in the weights file ``path`` of ``model_name`` (None: not found)."""
    from ...models.backbones import load_state_file
    with torch.device("meta"):  # names only: no memory, no initialisation
        plain = create_model(model_name, num_classes=10, in_chans=3)
    name = next((n for n, m in plain.named_modules() if isinstance(m, nn.Conv2d)), None)
    w = load_state_file(path).get(f"{name}.weight")
    return int(w.shape[1]) if w is not None and w.ndim == 4 else None


def _run_normalisation(path: str) -> tuple[tuple[float, ...], tuple[float, ...], str] | None:
    """(mean, std, source) of the convattn run that wrote the weights file ``path`` (its ``data.json``, found in
    the file's folder or up to two folders above: ``<run>/checkpoints/epoch_N/model.safetensors``); None if the
    file was not written by a run."""
    for folder in list(Path(path).resolve().parents)[:3]:
        info = folder / "data.json"
        if info.is_file() and (folder / "config.json").is_file():
            try:
                d = json.loads(info.read_text())
                return tuple(map(float, d["mean"])), tuple(map(float, d["std"])), f"the run that wrote the weights ({info})"
            except (ValueError, KeyError, TypeError):
                return None
    return None


def data_for(cfg: TrainConfig, batch_size: int, eval_batch_size: int | None = None, rank: int = 0,
             world_size: int = 1, workers: int | None = None) -> DataBundle:
    """The run's data; a folder's input pipeline is resolved from its images and the model's data cfg.

    With pretrained weights (``--pretrained-path``) the in-memory data sets (embedded, fashion-mnist, cifar*) are
    read as the weights expect: grey images as three identical channels when the file's first convolution takes
    three (timm's convention), normalised with the statistics of the convattn run that wrote the file, else, for
    timm/torchvision networks, with the mean/std of the model's data cfg (timm's ``pretrained_cfg``), else with
    the images' own statistics. The size stays the images' own (28 x 28 digits are not upscaled to 224, as for
    folders) unless ``--image-size`` resizes them.
    """
    folder = cfg.data == "folder"
    extra: dict[str, Any] = {}
    if cfg.pretrained_path and not folder:
        from ...models.backbones import is_backbone_name
        norm = _run_normalisation(cfg.pretrained_path)
        if norm is None and is_backbone_name(cfg.model):
            m = default_data_cfg(cfg.model)
            norm = tuple(m["mean"]), tuple(m["std"]), f"{cfg.model}'s data cfg (pretrained weights)"
        extra = dict(rgb=_stem_channels(cfg.model, cfg.pretrained_path) == 3, norm=norm)
    return build_data(cfg.data, cfg.data_dir, batch_size, eval_batch_size, cfg.seed, rank, world_size,
                      cfg.workers if workers is None else workers, cfg.train_size, cfg.image_size,
                      flip=cfg.hflip is not False,  # None (a config not resolved, a run from before --hflip): on
                      model_cfg=default_data_cfg(cfg.model) if folder else None, pretrained=bool(cfg.pretrained_path),
                      **extra)


def _fmt(v: Any) -> str:
    return "(" + ", ".join(f"{x:.3f}" for x in v) + ")"


def describe_run(cfg: TrainConfig, data: DataBundle, notes: list[str] | None = None) -> list[str]:
    """What was resolved, for printing at the start of a run: the data config, the recipe and ``notes`` (what the
    resolution chose beyond the preset and why: a batch scaled for a run of few updates, horizontal flips)."""
    n_train, n_val = data.train.num_samples, data.val.num_samples
    lines = [f"data: {data.name}, {n_train:,} train / {n_val:,} val images, {data.num_classes} classes, input "
             f"{data.in_chans}x{data.image_size}x{data.image_size}"]
    if data.folder_cfg is not None:
        lines.append(f"data config: {data.folder_cfg.summary()}")
    elif data.source and (cfg.pretrained_path or cfg.image_size):
        src = data.source
        lines.append(f"data config: input {data.in_chans}x{data.image_size}x{data.image_size} ({src['input_size']}), "
                     f"channels: {src['channels']}, mean/std {_fmt(data.mean)}/{_fmt(data.std)} ({src['mean']})")
    lines += _finetune_lines(cfg)
    steps = len(data.train)
    sched = cfg.schedule + (f" {cfg.milestones}" if cfg.schedule == "step" else "")
    lines.append(f"recipe (preset {cfg.preset}; given options kept): {cfg.epochs} epochs x {steps} steps, batch {cfg.batch_size}, "
                 f"lr {cfg.lr:g} ({sched}, warm-up {cfg.warmup_epochs:g} ep), momentum {cfg.momentum:g}"
                 f"{' nesterov' if cfg.nesterov else ''}, weight decay {cfg.weight_decay:g}, label smoothing "
                 f"{cfg.label_smoothing:g}")
    return lines + list(notes or [])


def _finetune_lines(cfg: TrainConfig) -> list[str]:
    """What the fine-tuning options resolved to (printed at the start of a run)."""
    if not (cfg.pretrained_path or cfg.identity):
        return []
    has_attn = any(parse_variant(cfg.variant).values())
    lines = [f"fine-tuning: weights of the plain network from {cfg.pretrained_path}" if cfg.pretrained_path else
             "note: --identity without --pretrained-path: the modules start as the identity of a randomly "
             "initialised network; this only changes the start"]
    if has_attn:
        lines.append(f"attention ({cfg.variant}) attached " + (
            "in the identity form: the first evaluation is the plain network's" if cfg.identity else
            "freshly initialised (not the identity: the start differs from the plain network; --identity keeps it)"))
    elif cfg.identity:
        lines.append("note: --identity has no effect: the variant attaches no module")
    if cfg.freeze_epochs:
        span = "for the whole run" if cfg.freeze_epochs < 0 else \
            f"for epoch{'s 1-' if cfg.freeze_epochs > 1 else ' '}{cfg.freeze_epochs}, then everything trains"
        lines.append(f"frozen: the pretrained part {span}; only attention, the classifier head and what the file "
                     "did not provide train meanwhile, and the frozen BatchNorm layers keep the pretrained running "
                     "statistics (eval mode)" + ("" if has_attn or cfg.freeze_epochs > 0 else " (a linear probe)"))
    if cfg.attn_lr_mult != 1 and has_attn:
        lines.append(f"attention parameters train at {cfg.attn_lr_mult:g} x the learning rate (--attn-lr-mult)")
    return lines


def build_model(cfg: TrainConfig, data: DataBundle | None = None, num_classes: int | None = None,
                in_chans: int | None = None) -> nn.Module:
    """The run's model for a data bundle (or explicit class and channel counts); an option a module does not take
    (``--attn-kwargs '{"dd": 4}'``) is a ValueError naming it."""
    kw = dict(parse_variant(cfg.variant), num_classes=data.num_classes if data else num_classes,
              in_chans=data.in_chans if data else in_chans, zero_init_last=cfg.zero_init_last)
    if cfg.attn_kwargs:
        kw["attn_kwargs"] = dict(cfg.attn_kwargs)
    if cfg.conv_kwargs:
        kw["conv_kwargs"] = dict(cfg.conv_kwargs)
    if cfg.pretrained_path:
        kw["pretrained_path"] = cfg.pretrained_path
        if cfg.pretrained_partial:
            kw["pretrained_allow_partial"] = True
    if cfg.identity:
        kw["identity"] = True
    try:
        model = create_model(cfg.model, **kw)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise ValueError(f"{cfg.model} {cfg.variant}: {e} (check --attn-kwargs {json.dumps(cfg.attn_kwargs)} and "
                         f"--conv-kwargs {json.dumps(cfg.conv_kwargs)})") from None
    if cfg.pretrained_path:
        zero_new_head(model)  # a head for another class count starts at zero (printed at the start of a run)
    return model


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
    data = data_for(cfg, cfg.batch_size, cfg.eval_batch_size, info.rank, info.world_size)
    if info.is_main:
        for line in describe_run(cfg, data, notes):
            print(line)
    model = build_model(cfg, data).to(device)
    if info.is_main and getattr(model, "pretrained_report", None) is not None:
        print(f"{cfg.model}: weights from {cfg.pretrained_path}: {model.pretrained_report.summary()}")
        if model.pretrained_report.zeroed_head:
            print(f"new classifier head ({', '.join(model.pretrained_report.zeroed_head)}) starts at zero: uniform predictions, no random "
                  "logit scale for the first updates to undo")
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
    state = resume_run(out / "checkpoints", settings, TrainConfig.identity_keys(), model, opt, sched, scaler,
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


def load_run(run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
             use_ema: bool = False) -> tuple[TrainConfig, dict[str, Any], nn.Module]:
    """(config, data info, model with the run's latest or given weights) of a folder written by ``train``."""
    cfg, info = read_run(TrainConfig, run_dir)
    if info is None:  # runs from before data.json: rebuild the statistics from the data set
        d = data_for(cfg, cfg.batch_size or 1, workers=0)
        info = dict(name=d.name, mean=d.mean, std=d.std, image_size=d.image_size, in_chans=d.in_chans,
                    num_classes=d.num_classes, classes=d.classes)
    model = build_model(cfg, num_classes=info["num_classes"], in_chans=info["in_chans"])
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
    bundle = data_for(cfg, train_batch, batch_size)
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

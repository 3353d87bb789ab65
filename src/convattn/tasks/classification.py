"""Classification on the shared engine (``convattn.engine``): config and presets, data and model, the task's
loss and evaluation, and run loading, for the CLI, ``compare`` and the Python API.

Reproducible (seeded order, augmentation and dropout per epoch), resumable bit for bit from the last
completed epoch, DistributedDataParallel under torchrun (gloo on CPU, nccl on CUDA), timm schedulers and EMA.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import DataBundle, build_data, resolve_name
from ..models import create_model, default_data_cfg, parse_variant
from ..engine import Loop, RunState, create_scheduler, resume_run, wrap_model
from ..engine.checkpoint import latest_checkpoint, load_run_weights, read_run_config, run_lock
from ..engine.common import autocast, check_finite, seed_all
from ..engine.distributed import DistInfo, all_reduce_sum, distributed_session, init_distributed
from ..engine.freeze import Freeze, new_parameter_names
from ..engine.optim import check_attn_lr_mult, check_wd_exclude, param_groups
from ..report import atomic_write_text, save_figure
from ..validate import ConfigError, check_values, option

__all__ = ["TrainConfig", "PRESETS", "train", "evaluate", "evaluate_run", "resolve_config"]

# Recipes of the SE/CBAM/ECA/GCT lineage (their papers' CIFAR and ImageNet schedules); every value can be overridden.
PRESETS: dict[str, dict[str, Any]] = {
    "fmnist": dict(epochs=10, batch_size=128, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                   schedule="cosine", warmup_epochs=1.0, label_smoothing=0.0),
    "cifar": dict(epochs=200, batch_size=128, lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4,
                  schedule="cosine", warmup_epochs=0.0, label_smoothing=0.0),
    "cifar-step": dict(epochs=160, batch_size=128, lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4,
                       schedule="step", milestones=[80, 120], warmup_epochs=0.0, label_smoothing=0.0),
    "imagenet": dict(epochs=100, batch_size=256, lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4,
                     schedule="step", milestones=[30, 60, 90], warmup_epochs=0.0, label_smoothing=0.0),
    # small folder data sets (the default below LARGE_FOLDER images): the CIFAR recipe, batch and LR scaled to the size
    "small": dict(epochs=30, batch_size=128, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                  schedule="cosine", warmup_epochs=1.0, label_smoothing=0.0),
}
_DEFAULT_PRESET = {"embedded": "fmnist", "fashion-mnist": "fmnist", "cifar10": "cifar", "cifar100": "cifar"}
LARGE_FOLDER = 50_000  # training images from which a folder gets the ImageNet recipe
# Runs of few updates (see few_updates_batch): a resolved batch is halved until the run gets MIN_UPDATES optimizer
# updates, not below MIN_BATCH. Measured on digits folders (scripts/make_digits_folder.py; ResNet-20, 3 epochs,
# --no-hflip, LR linear in the batch, val top-1 of 359 digits, mean of seeds 0-2): 4,000 images: batch 128 (93
# updates) 96.9 %, 64 (186) 97.9 %, 32 (375) 98.6 %, 16 (750) 98.2 %; 2,000 images: 128 (45) 90.9 %,
# 32 (186) 96.5 %, 16 (375) 97.2 %. Gains level off from ~300 updates; batch 16 still gains over 32 when the data
# are few, and costs about what batch 128 does per image on a CPU (ResNet-20, 28 x 28, one thread: 1.90 vs
# 1.88 ms per training image; 32 and 64: 1.72 and 1.67), so the floor is 16.
MIN_UPDATES = 300
MIN_BATCH = 16
# training images of the in-memory data sets (before --train-size)
_TRAIN_IMAGES = {"embedded": 10_000, "fashion-mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000}


def folder_recipe(num_train: int) -> tuple[str, dict[str, Any]]:
    """The default preset of a folder data set with ``num_train`` training images and the values scaled to it.

    Large folders get the ImageNet recipe. Smaller ones get the ``small`` (CIFAR-style) recipe with a batch of
    about a twentieth of the images (a power of two in 16..128, so every epoch has ~20 updates or more) and the
    learning rate scaled linearly with the batch (0.1 at 128).
    """
    if num_train >= LARGE_FOLDER:
        return "imagenet", {}
    batch = int(min(128, max(16, 2 ** math.floor(math.log2(max(num_train / 20, 1))))))
    return "small", dict(batch_size=min(batch, num_train))


def few_updates_batch(num_train: int, epochs: int, batch: int) -> int:
    """The batch for a run of ``epochs`` over ``num_train`` images whose recipe gives ``batch``: ``batch`` itself
    when the run gets at least :data:`MIN_UPDATES` updates (``epochs`` x ``num_train // batch``, the last partial
    batch is dropped), else ``batch`` halved until it does, but not below :data:`MIN_BATCH` (nor above the
    training set). The learning rate goes with it (linear scaling rule: ``lr`` x new batch / ``batch``)."""
    def updates(b: int) -> int:
        return epochs * (num_train // b)

    b = batch
    while updates(b) < MIN_UPDATES and b // 2 >= MIN_BATCH:
        b //= 2
    return max(1, min(b, num_train)) if b != batch else batch


def _train_images(d: dict[str, Any]) -> int | None:
    """Training images of the run's data (a folder's are counted), None when unknown (a folder without
    --data-dir: refused later)."""
    if d["data"] == "folder":
        if not d.get("data_dir"):
            return None
        from ..data import survey_folder
        return survey_folder(d["data_dir"]).num_train
    n, size = _TRAIN_IMAGES.get(d["data"]), d.get("train_size")
    if n is None or (size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1)):
        return None  # an out-of-range --train-size is refused by _check_ranges
    return min(n, size or n)


def _default_preset(d: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
    """(preset, values scaled to the data, how it was chosen) for a config without ``--preset``."""
    if d["data"] != "folder":
        if d["data"] not in _DEFAULT_PRESET:
            raise ConfigError(f"data set {d['data']!r} has no default recipe; choose one with --preset "
                              f"({', '.join(PRESETS)})")
        return _DEFAULT_PRESET[d["data"]], {}, f"default for {d['data']}"
    if not d.get("data_dir"):
        return "imagenet", {}, "default for folder"
    from ..data import survey_folder
    n = survey_folder(d["data_dir"]).num_train
    preset, scaled = folder_recipe(n)
    return preset, scaled, f"folder of {n:,} training images"


@dataclass
class TrainConfig:
    """Everything that defines a run; ``None`` fields are filled from the preset."""

    model: str = option("resnet20", "convattn model (resnet20, resnet50, ...) or a timm/torchvision CNN: timm:<name>, "
                        "torchvision:<name>")
    variant: str = option("none", "e.g. se+aw, steam@all (or use --attn/--conv)")
    attn_kwargs: dict[str, Any] = option(help='attention module options as JSON, e.g. \'{"d": 16}\'', factory=dict)
    conv_kwargs: dict[str, Any] = option(help='AWConv2d options as JSON, e.g. \'{"mode": "out"}\'', factory=dict)
    data: str = option("embedded", "embedded (ships with convattn), fashion-mnist, cifar10, cifar100, folder")
    data_dir: str | None = option(None, "folder of the data set (fashion-mnist, cifar*, folder)")
    train_size: int | None = option(None, "class-balanced subset of the training set")
    image_size: int | None = option(None, "input size (default: from the model's data config and the images)")
    preset: str | None = option(None, "recipe (default by data set)", list(PRESETS))
    epochs: int | None = option(None, "training epochs (preset)")
    batch_size: int | None = option(None, "global batch size, split across processes (preset)")
    eval_batch_size: int | None = option(None, "evaluation batch size (default: the training batch)")
    lr: float | None = option(None, "learning rate (preset)")
    momentum: float | None = option(None, "SGD momentum (preset)")
    nesterov: bool | None = option(None, "Nesterov momentum (preset)")
    weight_decay: float | None = option(None, "weight decay (preset)")
    wd_exclude: str = option("declared", "no weight decay on: nothing / module-declared params (GCT beta) / also "
                             "norms and biases", ["none", "declared", "norm_bias"])
    attn_lr_mult: float = option(1.0, "learning-rate multiplier for attention parameters (attention modules, AW's "
                                 "generator)")
    schedule: str | None = option(None, "LR schedule (preset)", ["cosine", "step"])
    milestones: list[int] | None = option(None, "step schedule: epochs after which the LR drops, e.g. 30,60,90")
    gamma: float = option(0.1, "step schedule: LR factor at each milestone")
    warmup_epochs: float | None = option(None, "linear warm-up epochs (preset)")
    warmup_lr: float = option(1e-4, "LR at the start of the warm-up")
    min_lr: float = option(0.0, "cosine schedule: final LR")
    label_smoothing: float | None = option(None, "label smoothing (preset)")
    hflip: bool | None = option(None, "random horizontal flips in training (default: on, timm's convention for "
                                "folders and the built-in sets' recipe; whether a mirror changes an image's class "
                                "cannot be told from the images): --no-hflip for digits, text, or anything whose "
                                "class a mirror changes")
    ema: bool = option(False, "keep and evaluate an EMA of the weights (timm ModelEmaV3)")
    ema_decay: float = option(0.999, "EMA decay in [0, 1]")
    amp: str = option("none", "autocast", ["none", "bf16", "fp16"])
    channels_last: bool = option(False, "channels_last memory format")
    compile: bool = option(False, "torch.compile the model")
    zero_init_last: bool = option(False, "zero-init the last BN of each residual block")
    pretrained_path: str | None = option(None, "local state dict (.pth/.safetensors) of the plain network, loaded "
                                         "before attention is attached (nothing is downloaded)")
    pretrained_partial: bool = option(False, "with --pretrained-path: load only the tensors that match when the file "
                                      "does not hold every tensor of the plain network (another network's weights); "
                                      "without it such a file is refused")
    identity: bool = option(False, "attach attention in the identity form: the network starts computing exactly "
                            "what the plain (pretrained) network computed (gated modules behind a zero-initialised "
                            "residual scale; AW and GCT start as the identity); without --pretrained-path it only "
                            "changes the start")
    freeze_epochs: int = option(0, "with --pretrained-path: for the first N epochs only the new parameters train "
                                "(attention modules, AW's generator, the classifier head, anything the file did not "
                                "provide), then everything; -1: the pretrained part stays frozen for the whole run "
                                "(a linear probe when no attention is attached). Frozen layers get no gradient and "
                                "their BatchNorm layers stay in eval mode: the pretrained running statistics are kept "
                                "and used (batch statistics of the new data would replace them while the weights "
                                "around them cannot adapt); after the freeze BatchNorm trains as usual")
    seed: int = option(0, "seed of the data order, augmentation and initialisation")
    deterministic: bool = option(False, "torch deterministic algorithms")
    workers: int = option(2, "DataLoader workers (ImageFolder only)")
    threads: int | None = option(None, "torch CPU threads")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    out: str = option("runs/train", "run folder")
    resume: bool = option(True, "resume from the run folder's last checkpoint")
    keep_last: int = option(1, "epoch checkpoints kept")
    progress: bool = option(True, "progress bars")
    stop_after: int | None = option(None, "end this call after that epoch (time-sliced jobs); rerun to continue")


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Fill preset values, validate names; returns a new config."""
    return _resolve(cfg)[0]


def _resolve(cfg: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """The resolved config and what was resolved beyond the preset and why (printed at the start of a run)."""
    notes: list[str] = []
    d = asdict(cfg)
    d["data"] = resolve_name(cfg.data)
    preset, scaled = cfg.preset, {}
    if preset is None:
        preset, scaled, _ = _default_preset(d)
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset '{preset}'. Valid presets: {', '.join(PRESETS)}")
    d["preset"] = preset
    for k, v in {**PRESETS[preset], **scaled}.items():
        if d.get(k) is None:
            d[k] = v
    if preset == "small":
        if cfg.lr is None:  # linear scaling with the batch (0.1 at 128)
            d["lr"] = PRESETS["small"]["lr"] * d["batch_size"] / 128
        if cfg.warmup_epochs is None:  # short runs: at most a fifth of the run warms up
            d["warmup_epochs"] = min(PRESETS["small"]["warmup_epochs"], d["epochs"] / 5)
    notes += _few_updates(cfg, d)
    if d["hflip"] is not None and not isinstance(d["hflip"], bool):
        raise ConfigError(f"hflip (--hflip/--no-hflip) must be true or false, got {d['hflip']!r}")
    if d["hflip"] is None:
        d["hflip"] = True
        why = "timm's convention for folders" if d["data"] == "folder" else f"the recipe of {d['data']}"
        notes.append(f"horizontal flips: on ({why}; whether a mirror changes the class cannot be told from the "
                     "images: --no-hflip for digits, text, or anything whose class a mirror changes)")
    else:
        notes.append(f"horizontal flips: {'on (--hflip)' if d['hflip'] else 'off (--no-hflip)'}")
    if d["schedule"] not in ("cosine", "step"):
        raise ValueError(f"schedule must be 'cosine' or 'step', got {d['schedule']!r}")
    if d["schedule"] == "step" and not d.get("milestones"):
        raise ValueError("schedule 'step' needs milestones (epochs at which the LR drops)")
    if d["amp"] not in ("none", "bf16", "fp16"):
        raise ValueError(f"amp must be none, bf16 or fp16, got {d['amp']!r}")
    check_wd_exclude(d["wd_exclude"])
    d["attn_lr_mult"] = check_attn_lr_mult(d["attn_lr_mult"])
    d["_given_milestones"] = cfg.milestones is not None
    _check_ranges(d)
    return TrainConfig(**d), notes


def _few_updates(cfg: TrainConfig, d: dict[str, Any]) -> list[str]:
    """Scale a resolved batch (and the LR with it) of a run of few updates (:func:`few_updates_batch`), in ``d``;
    a batch or LR given by the user is never changed (a note says what the run gets). Returns the printed notes."""
    if not isinstance(d.get("epochs"), int) or isinstance(d["epochs"], bool) or d["epochs"] < 1 \
            or not isinstance(d.get("batch_size"), int) or d["batch_size"] < 1:
        return []  # refused with its option by _check_ranges
    n = _train_images(d)
    if n is None:
        return []
    batch, epochs = d["batch_size"], d["epochs"]
    updates = epochs * (n // batch)
    if updates >= MIN_UPDATES:
        return []
    run = f"{n:,} images x {epochs} epoch{'s' if epochs != 1 else ''}"
    if cfg.batch_size is not None or cfg.lr is not None:
        given = "batch size" if cfg.batch_size is not None else "learning rate"
        return [f"note: batch {batch}: {run} give {updates:,} updates (fewer than {MIN_UPDATES}); kept, as the "
                f"{given} is given"]
    new = few_updates_batch(n, epochs, batch)
    if new == batch:
        return []
    old_lr = d["lr"]
    d["batch_size"], d["lr"] = new, old_lr * new / batch  # linear scaling rule
    return [f"batch {new} (was {batch}): {run} would give {updates:,} updates (fewer than {MIN_UPDATES}); now "
            f"{epochs * (n // new):,}, lr {d['lr']:g} (was {old_lr:g}, scaled with the batch)"]


# (field, bounds) of every numeric training setting; checked once, after the preset is applied
_RANGES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("epochs", dict(lo=1, integer=True)), ("batch_size", dict(lo=1, integer=True)),
    ("eval_batch_size", dict(lo=1, integer=True, optional=True)), ("lr", dict(lo=0)),
    ("momentum", dict(lo=0, hi=1, hi_open=True)), ("weight_decay", dict(lo=0)), ("gamma", dict(lo=0, lo_open=True)),
    ("warmup_epochs", dict(lo=0)), ("warmup_lr", dict(lo=0)), ("min_lr", dict(lo=0)),
    ("label_smoothing", dict(lo=0, hi=1, hi_open=True)), ("ema_decay", dict(lo=0, hi=1)),
    ("train_size", dict(lo=1, integer=True, optional=True)), ("image_size", dict(lo=8, integer=True, optional=True)),
    ("seed", dict(lo=0, integer=True)), ("workers", dict(lo=0, integer=True)),
    ("threads", dict(lo=1, integer=True, optional=True)), ("keep_last", dict(lo=1, integer=True)),
    ("stop_after", dict(lo=1, integer=True, optional=True)), ("freeze_epochs", dict(lo=-1, integer=True)),
)


def _check_ranges(d: dict[str, Any]) -> None:
    """Refuse out-of-range values with one line each (never substitute a default)."""
    check_values(d, _RANGES)
    if not str(d["out"]).strip():  # Path("") is the current folder
        raise ConfigError(f"out (--out) {d['out']!r} names no folder; give the run folder to write to")
    given_milestones = d.pop("_given_milestones")
    if d["warmup_epochs"] > d["epochs"]:
        raise ConfigError(f"warmup_epochs (--warmup-epochs) must be <= epochs ({d['epochs']}), got {d['warmup_epochs']}")
    if d["schedule"] == "step":
        ms = d["milestones"]
        top = d["epochs"] if given_milestones else float("inf")  # a preset's milestones may outlast a shorter run
        if any(isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= top for m in ms) \
                or list(ms) != sorted(set(ms)):
            raise ConfigError(f"milestones (--milestones) must be increasing epochs in 1..{d['epochs']}, got {ms}")
    attn = parse_variant(d["variant"])
    if d["conv_kwargs"] and attn["conv"] != "aw":
        raise ConfigError(f"conv_kwargs (--conv-kwargs) {d['conv_kwargs']} configure AW-convolution, but variant "
                          f"{d['variant']!r} has none; add --conv aw (or '+aw' to the variant) or drop --conv-kwargs")
    if d["attn_kwargs"] and not attn["attn"]:
        raise ConfigError(f"attn_kwargs (--attn-kwargs) {d['attn_kwargs']} configure an attention module, but "
                          f"variant {d['variant']!r} has none; add --attn NAME or drop --attn-kwargs")
    if d.get("pretrained_partial") and not d["pretrained_path"]:
        raise ConfigError("pretrained_partial (--pretrained-partial) allows a partial load of --pretrained-path, but no "
                          "--pretrained-path is given")
    if not isinstance(d["identity"], bool):
        raise ConfigError(f"identity (--identity) must be true or false, got {d['identity']!r}")
    if d["freeze_epochs"] and not d["pretrained_path"]:
        raise ConfigError(f"freeze_epochs (--freeze-epochs) {d['freeze_epochs']} freezes the pretrained part of the "
                          "network, but no --pretrained-path is given: there is nothing pretrained to keep")
    if d["freeze_epochs"] > d["epochs"]:
        raise ConfigError(f"freeze_epochs (--freeze-epochs) must be <= epochs ({d['epochs']}), or -1 to freeze for "
                          f"the whole run; got {d['freeze_epochs']}")


# what must agree between a run and the checkpoint it resumes from
_IDENTITY_KEYS = ("model", "variant", "attn_kwargs", "conv_kwargs", "data", "train_size", "image_size", "epochs",
                  "batch_size", "lr", "schedule", "milestones", "seed", "weight_decay", "ema", "attn_lr_mult",
                  "identity", "freeze_epochs", "hflip")


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
    from ..optional import MissingExtra, require
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
    from ..models.backbones import load_state_file
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
        from ..models.backbones import is_backbone_name
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
        return create_model(cfg.model, **kw)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise ValueError(f"{cfg.model} {cfg.variant}: {e} (check --attn-kwargs {json.dumps(cfg.attn_kwargs)} and "
                         f"--conv-kwargs {json.dumps(cfg.conv_kwargs)})") from None


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) one run; returns the final summary (also written to ``<out>/final.json``)."""
    cfg, notes = _resolve(cfg)
    with distributed_session(cfg.device) as info:
        with run_lock(cfg.out) if info.is_main else contextlib.nullcontext():  # one writer per run folder
            return _train(cfg, info, notes)


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
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    seed_all(cfg.seed)
    device = info.device
    data = data_for(cfg, cfg.batch_size, cfg.eval_batch_size, info.rank, info.world_size)
    if info.is_main:
        for line in describe_run(cfg, data, notes):
            print(line)
    model = build_model(cfg, data).to(device)
    if info.is_main and getattr(model, "pretrained_report", None) is not None:
        print(f"{cfg.model}: weights from {cfg.pretrained_path}: {model.pretrained_report.summary()}")
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # every parameter is in a group, frozen or not: the groups (and a checkpoint's optimizer state) are the same
    # in every epoch; a frozen parameter gets no gradient, so SGD leaves it (and its momentum) alone
    groups = param_groups(model, cfg.lr, cfg.weight_decay, cfg.wd_exclude, cfg.attn_lr_mult)
    freeze = None
    if cfg.freeze_epochs:
        report = getattr(model, "pretrained_report", None)
        loaded = list(report.loaded) if report is not None else None
        freeze = Freeze(model, new_parameter_names(model, loaded), cfg.freeze_epochs, loaded)
        if info.is_main:
            n_new, n_frozen = freeze.counts()
            print(f"while frozen: {n_new:,} parameters train, {n_frozen:,} are frozen, {len(freeze.bn)} BatchNorm "
                  "layers keep their pretrained statistics")
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    steps = len(data.train)
    sched = create_scheduler(opt, cfg.schedule, steps, cfg.epochs, int(round(cfg.warmup_epochs * steps)),
                             cfg.warmup_lr, cfg.min_lr, cfg.milestones, cfg.gamma)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=cfg.ema_decay)
    scaler = torch.amp.GradScaler(device.type) if (cfg.amp == "fp16" and device.type == "cuda") else None

    settings = asdict(cfg)
    state = resume_run(out / "checkpoints", settings, _IDENTITY_KEYS, model, opt, sched, scaler,
                       ema.module if ema is not None else None) if cfg.resume else RunState()
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(settings, indent=2))
        atomic_write_text(out / "data.json", json.dumps(dict(
            name=data.name, mean=data.mean, std=data.std, image_size=data.image_size, in_chans=data.in_chans,
            num_classes=data.num_classes, classes=data.classes,
            folder_cfg=data.folder_cfg.to_dict() if data.folder_cfg else None, source=data.source or None), indent=2))

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
    cfg, info = read_run_config(run_dir, TrainConfig, "convattn train")
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
        from ..data import survey_folder
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

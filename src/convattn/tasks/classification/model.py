"""A classification run's data and model: the data set as the run reads it (a folder's pipeline resolved from its
images and the model's data cfg; pretrained conventions for in-memory data), what was resolved (printed at the
start of a run), and the network built through the one builder with the run's AttachPlan.
"""
from __future__ import annotations


import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...data import DataBundle, build_data
from ...engine.freeze import zero_new_head
from ...layers.helpers import first_conv
from ...models import create_model, default_data_cfg
from ...models.build import build_model as build_network
from ...models.plan import AttachPlan
from .config import TrainConfig, attach_plan

__all__ = ["build_model", "data_for", "describe_run"]


def _stem_channels(model_name: str, path: str) -> int | None:
    """Input channels of the first convolution in the weights file ``path`` of ``model_name`` (None: not found)."""
    from ...models.backbones import load_state_file
    with torch.device("meta"):  # names only: no memory, no initialisation
        plain = create_model(model_name, num_classes=10, in_chans=3)
    name = (first_conv(plain) or (None, None))[0]
    w = load_state_file(path).get(f"{name}.weight")
    return int(w.shape[1]) if w is not None and w.ndim == 4 else None


def _run_normalisation(path: str) -> tuple[tuple[float, ...], tuple[float, ...], str] | None:
    """(mean, std, source) of the convattn run that wrote the weights file ``path`` (its ``data.json``, found in
    the file's folder or up to two folders above: ``<run>/checkpoints/epoch_N/model.safetensors``); None if the
    file was not written by a run. A shared model folder (convattn.sharing) gives the statistics its config records."""
    shared = Path(path) / "config.json"
    if shared.is_file():
        try:
            c = json.loads(shared.read_text())["pretrained_cfg"]
            return tuple(map(float, c["mean"])), tuple(map(float, c["std"])), f"the shared model's config ({shared})"
        except (ValueError, KeyError, TypeError):
            return None
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
             world_size: int = 1, workers: int | None = None, run_info: dict[str, Any] | None = None) -> DataBundle:
    """The run's data; a folder's input pipeline is resolved from its images and the model's data cfg.

    With pretrained weights (``--pretrained-path``) the in-memory data sets (embedded, fashion-mnist, cifar*) are
    read as the weights expect: grey images as three identical channels when the file's first convolution takes
    three (timm's convention), normalised with the statistics of the convattn run that wrote the file, else, for
    timm/torchvision networks, with the mean/std of the model's data cfg (timm's ``pretrained_cfg``), else with
    the images' own statistics. The size stays the images' own (28 x 28 digits are not upscaled to 224, as for
    folders) unless ``--image-size`` resizes them. ``run_info`` (the ``data.json`` of a run read back): its
    channels and normalisation, as the run trained; the weights file is then not read (it may have moved).
    """
    folder = cfg.data == "folder"
    extra: dict[str, Any] = {}
    if cfg.pretrained_path and not folder and run_info and {"in_chans", "mean", "std"} <= set(run_info):
        extra = dict(rgb=run_info["in_chans"] == 3, norm=(tuple(map(float, run_info["mean"])),
                                                         tuple(map(float, run_info["std"])), "the run's data.json"))
    elif cfg.pretrained_path and not folder:
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
    has_attn = not AttachPlan.parse(cfg.variant).is_plain
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
    kw = dict(num_classes=data.num_classes if data else num_classes, in_chans=data.in_chans if data else in_chans)
    if cfg.zero_init_last:
        kw["zero_init_last"] = True
    try:
        model = build_network(cfg.model, attach_plan(cfg), weights=cfg.pretrained_path or None,
                              allow_partial=bool(cfg.pretrained_partial), **kw)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise ValueError(f"{cfg.model} {cfg.variant}: {e} (check --attn-kwargs {json.dumps(cfg.attn_kwargs)} and "
                         f"--conv-kwargs {json.dumps(cfg.conv_kwargs)})") from None
    if cfg.pretrained_path:
        zero_new_head(model)  # a head for another class count starts at zero (printed at the start of a run)
    return model

"""Classification runs' settings: the presets (recipes of the SE/CBAM/ECA/GCT lineage), the config, and its
resolution (preset by data set, the batch of a run of few updates, horizontal flips), checked once."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

from ...data import resolve_name
from ...engine.run import RunConfig, check_settings, fill_preset
from ...models.plan import AttachPlan
from ...validate import ConfigError, option

__all__ = ["TrainConfig", "PRESETS", "resolve_config", "resolve_with_notes", "folder_recipe", "few_updates_batch",
           "LARGE_FOLDER", "MIN_UPDATES", "MIN_BATCH", "arm_config", "attach_plan"]

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
        from ...data import survey_folder
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
    from ...data import survey_folder
    n = survey_folder(d["data_dir"]).num_train
    preset, scaled = folder_recipe(n)
    return preset, scaled, f"folder of {n:,} training images"


@dataclass
class TrainConfig(RunConfig):
    """Everything that defines a classification run; ``None`` fields are filled from the preset. The settings
    every task has (seed, device, run folder, optimizer groups, autocast, ...) come from
    :class:`convattn.engine.run.RunConfig`."""

    COMMAND: ClassVar[str] = "convattn train"
    # (field, bounds) of the task's numeric settings, checked once after the preset is applied (with the common ones)
    RANGES: ClassVar[tuple[tuple[str, dict[str, Any]], ...]] = (
        ("epochs", dict(lo=1, integer=True)), ("batch_size", dict(lo=1, integer=True)),
        ("eval_batch_size", dict(lo=1, integer=True, optional=True)), ("lr", dict(lo=0)),
        ("momentum", dict(lo=0, hi=1, hi_open=True)), ("weight_decay", dict(lo=0)), ("gamma", dict(lo=0, lo_open=True)),
        ("warmup_epochs", dict(lo=0)), ("warmup_lr", dict(lo=0)), ("min_lr", dict(lo=0)),
        ("label_smoothing", dict(lo=0, hi=1, hi_open=True)), ("ema_decay", dict(lo=0, hi=1)),
        ("train_size", dict(lo=1, integer=True, optional=True)), ("image_size", dict(lo=8, integer=True, optional=True)),
        ("keep_last", dict(lo=1, integer=True)), ("freeze_epochs", dict(lo=-1, integer=True)),
    )
    # what must agree between a run and the checkpoint it resumes from (with seed and attn_lr_mult)
    RESUME_KEYS: ClassVar[tuple[str, ...]] = (
        "model", "variant", "attn_kwargs", "conv_kwargs", "data", "train_size", "image_size", "epochs", "batch_size",
        "lr", "schedule", "milestones", "weight_decay", "ema", "identity", "freeze_epochs", "hflip", "bn_eval")

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
    channels_last: bool = option(False, "channels_last memory format")
    compile: bool = option(False, "torch.compile the model")
    zero_init_last: bool = option(False, "zero-init the last BN of each residual block")
    pretrained_path: str | None = option(None, "local state dict (.pth/.safetensors) of the plain network, or a "
                                         "shared model folder (config.json + model.safetensors, docs/sharing.md), "
                                         "loaded before attention is attached (nothing is downloaded)")
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
    bn_eval: bool = option(False, "with --pretrained-path: keep the pretrained BatchNorm layers in eval mode for the "
                           "whole run (their running statistics stay the pretrained ones; their scale and shift "
                           "still train once unfrozen), as mmdetection's norm_eval; default: they train as usual "
                           "after --freeze-epochs")
    deterministic: bool = option(False, "torch deterministic algorithms")
    workers: int = option(2, "DataLoader workers (ImageFolder only)")  # RunConfig's, with the task's help
    out: str = option("runs/train", "run folder")  # RunConfig's, with the task's default
    keep_last: int = option(1, "epoch checkpoints kept")


def attach_plan(cfg: TrainConfig) -> AttachPlan:
    """The run's :class:`AttachPlan`: its variant with the run's module options and identity start."""
    return AttachPlan.parse(cfg.variant, identity=bool(cfg.identity), attn_kwargs=cfg.attn_kwargs or {},
                            conv_kwargs=cfg.conv_kwargs or {})


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Fill preset values, validate names; returns a new config."""
    return resolve_with_notes(cfg)[0]


def resolve_with_notes(cfg: TrainConfig) -> tuple[TrainConfig, list[str]]:
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
    fill_preset(d, {**PRESETS[preset], **scaled})
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


def _check_ranges(d: dict[str, Any]) -> None:
    """Refuse out-of-range values with one line each (never substitute a default)."""
    check_settings(d, TrainConfig.RANGES)
    given_milestones = d.pop("_given_milestones")
    if d["warmup_epochs"] > d["epochs"]:
        raise ConfigError(f"warmup_epochs (--warmup-epochs) must be <= epochs ({d['epochs']}), got {d['warmup_epochs']}")
    if d["schedule"] == "step":
        ms = d["milestones"]
        top = d["epochs"] if given_milestones else float("inf")  # a preset's milestones may outlast a shorter run
        if any(isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= top for m in ms) \
                or list(ms) != sorted(set(ms)):
            raise ConfigError(f"milestones (--milestones) must be increasing epochs in 1..{d['epochs']}, got {ms}")
    try:
        plan = AttachPlan.parse(d["variant"])
    except ValueError as e:
        raise ConfigError(f"variant (--variant/--attn/--conv) {d['variant']!r}: {e}") from None
    d["variant"] = plan.name  # the canonical name: run folders, reports and resumption see one spelling
    attn = plan.kwargs()
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
    if d.get("bn_eval") and not d["pretrained_path"]:
        raise ConfigError("bn_eval (--bn-eval) keeps the pretrained BatchNorm statistics, but no --pretrained-path is "
                          "given: there are no pretrained statistics to keep")
    if d["freeze_epochs"] and not d["pretrained_path"]:
        raise ConfigError(f"freeze_epochs (--freeze-epochs) {d['freeze_epochs']} freezes the pretrained part of the "
                          "network, but no --pretrained-path is given: there is nothing pretrained to keep")
    if d["freeze_epochs"] > d["epochs"]:
        raise ConfigError(f"freeze_epochs (--freeze-epochs) must be <= epochs ({d['epochs']}), or -1 to freeze for "
                          f"the whole run; got {d['freeze_epochs']}")


def arm_config(base: TrainConfig, variant: "str | AttachPlan") -> TrainConfig:
    """The recipe for one variant: the module options only where the variant has the module (the baseline
    trains with none)."""
    plan = AttachPlan.parse(variant)
    return replace(base, variant=plan.name, attn_kwargs=base.attn_kwargs if plan.attn else {},
                   conv_kwargs=base.conv_kwargs if plan.conv else {})

"""Detection on the shared engine (``convattn.engine``): config and presets, data sets and detector, the task's
loss, COCO evaluation (pycocotools), run loading and prediction drawing. The run's skeleton (common settings,
checks, optimizer groups, run folder) is ``convattn.engine.run``, as for classification."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ...engine import Loop, RunState, create_scheduler, resume_run, wrap_model
from ...engine.checkpoint import CheckpointError, load_run_weights
from ...engine.distributed import DistInfo
from ...engine.run import RunConfig, build_sgd, check_settings, fill_preset, read_run, run_task, start_process, \
    write_run_info
from ...models.plan import AttachPlan
from ...optional import require
from ...report import atomic_write_text, to_markdown
from ...validate import ConfigError, option
from .data import CocoDetection, VocDetection, collate, embedded_detection_root
from .models import create_detector

__all__ = ["DetectConfig", "DETECT_PRESETS", "train_detector", "evaluate_detector", "predict", "load_detector_run",
           "build_datasets"]

DETECT_PRESETS: dict[str, dict[str, Any]] = {
    # COCO 1x (torchvision and mmdetection reference schedule): 12 epochs, LR drops after 8 and 11, LR 0.02 per 16 images
    "1x": dict(epochs=12, milestones=[8, 11], lr=0.02, batch_size=16, warmup_iters=500, min_size=800, max_size=1333,
               trainable_layers=3, frozen_bn=True),
    # CPU-sized run on the embedded set, trained from scratch (so BN trains and every stage is trainable)
    "short": dict(epochs=4, milestones=[3], lr=0.02, batch_size=4, warmup_iters=50, min_size=128, max_size=128,
                  trainable_layers=5, frozen_bn=False),
}
# Fewer proposals and sampled RoIs for small images: the R-CNN box head's cost is per RoI (COCO defaults: 2000
# proposals, 512 RoIs per image), and it dominates at 128 px.
SMALL_RCNN = dict(rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300,
                  rpn_post_nms_top_n_test=150, box_batch_size_per_image=128, box_detections_per_img=50)
AP_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


@dataclass
class DetectConfig(RunConfig):
    """Everything that defines a detection run; ``None`` fields are filled from the preset. The settings every
    task has (seed, device, run folder, optimizer groups: ``wd_exclude``, ``attn_lr_mult``, autocast, ...) come
    from :class:`convattn.engine.run.RunConfig`."""

    COMMAND: ClassVar[str] = "convattn detect train"
    # (field, bounds) of the task's numeric settings, checked once after the preset is applied (with the common ones)
    RANGES: ClassVar[tuple[tuple[str, dict[str, Any]], ...]] = (
        ("epochs", dict(lo=1, integer=True)), ("batch_size", dict(lo=1, integer=True)),
        ("lr", dict(lo=0, lo_open=True)), ("momentum", dict(lo=0, hi=1, hi_open=True)), ("weight_decay", dict(lo=0)),
        ("warmup_iters", dict(lo=0, integer=True)), ("min_size", dict(lo=32, integer=True)),
        ("max_size", dict(lo=32, integer=True)), ("trainable_layers", dict(lo=0, hi=5, integer=True)),
        ("train_size", dict(lo=1, integer=True, optional=True)), ("val_size", dict(lo=1, integer=True, optional=True)),
    )
    # what must agree between a run and the checkpoint it resumes from (with seed and attn_lr_mult)
    RESUME_KEYS: ClassVar[tuple[str, ...]] = (
        "detector", "backbone", "variant", "attn_kwargs", "conv_kwargs", "data", "train_size", "epochs", "batch_size",
        "lr", "momentum", "weight_decay", "milestones", "warmup_iters", "min_size", "max_size", "trainable_layers",
        "frozen_bn", "attn_norm_trainable", "init_from")

    detector: str = option("fasterrcnn", "torchvision detector", ["fasterrcnn", "maskrcnn", "retinanet"])
    backbone: str = option("resnet18", "convattn ResNet or timm:<name> / torchvision:<name>")
    variant: str = option("none", "backbone variant, e.g. steam, aw, cbam+aw")
    data: str = option("embedded", "embedded (generated on first use), coco (data_dir with train/, val/, annotations/) "
                     "or voc", ["embedded", "coco", "voc"])
    data_dir: str | None = option(None, "folder of the coco / voc data set")
    preset: str = option("short", "short (CPU, embedded data) or 1x (COCO schedule)", list(DETECT_PRESETS))
    epochs: int | None = option(None, "training epochs (preset)")
    batch_size: int | None = option(None, "global batch size (preset)")
    lr: float | None = option(None, "learning rate (preset's LR scaled linearly to the batch size)")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(1e-4, "SGD weight decay")
    milestones: list[int] | None = option(None, "epochs after which the LR drops x0.1, e.g. 8,11 (preset)")
    warmup_iters: int | None = option(None, "linear warm-up updates from 0.1 %% of the LR (preset)")
    min_size: int | None = option(None, "shorter image side (preset)")
    max_size: int | None = option(None, "longer image side at most (preset)")
    trainable_layers: int | None = option(None, "trainable backbone stages 0-5 (preset)")
    frozen_bn: bool | None = option(None, "FrozenBatchNorm2d in the backbone (preset)")
    attn_norm_trainable: bool = option(False, "keep norms inside attention modules trainable under frozen BN")
    conv_kwargs: dict[str, Any] = option(help="AWConv2d options as JSON, e.g. '{\"mode\": \"out\"}'", factory=dict)
    attn_kwargs: dict[str, Any] = option(help="attention module options as JSON, e.g. '{\"d\": 16}'", factory=dict)
    init_from: str | None = option(None, "convattn classification checkpoint (folder or .safetensors) for the backbone")
    allow_outside_paths: bool = option(False, "let COCO file_name entries and VOC <filename>s and ids point outside "
                                       "their folder")
    train_size: int | None = option(None, "first N training images")
    val_size: int | None = option(None, "first N validation images")
    workers: int = option(0, "DataLoader workers")  # RunConfig's, with the task's default
    out: str = option("runs/detect", "run folder")  # RunConfig's, with the task's default


def resolve(cfg: DetectConfig) -> DetectConfig:
    if cfg.preset not in DETECT_PRESETS:
        raise ValueError(f"Unknown detection preset '{cfg.preset}'. Valid: {', '.join(DETECT_PRESETS)}")
    d = asdict(cfg)
    base = DETECT_PRESETS[cfg.preset]
    fill_preset(d, base)
    if cfg.lr is None:
        d["lr"] = base["lr"] * d["batch_size"] / base["batch_size"]
    if d["data"] not in ("embedded", "coco", "voc"):
        raise ValueError(f"Unknown detection data '{d['data']}'. Valid: embedded, coco, voc")
    check_settings(d, DetectConfig.RANGES)
    if d["max_size"] < d["min_size"]:
        raise ConfigError(f"max_size (--max-size) must be >= min_size ({d['min_size']}), got {d['max_size']}")
    ms = d["milestones"] or []
    if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in ms) or list(ms) != sorted(set(ms)):
        raise ConfigError(f"milestones (--milestones) must be increasing epochs >= 1, got {ms}")
    try:
        d["variant"] = AttachPlan.parse(d["variant"]).name  # the canonical name (run folders, reports, resumption)
    except ValueError as e:
        raise ConfigError(f"variant (--variant) {d['variant']!r}: {e}") from None
    if d["conv_kwargs"] and AttachPlan.parse(d["variant"]).conv != "aw":
        raise ConfigError(f"conv_kwargs (--conv-kwargs) configure AW-convolution, but variant {d['variant']!r} has none")
    return DetectConfig(**d)


def build_datasets(cfg: DetectConfig) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    masks = cfg.detector == "maskrcnn"
    if cfg.data == "voc":
        if cfg.data_dir is None:
            raise FileNotFoundError("--data voc needs --data-dir with Annotations/, JPEGImages/ and ImageSets/Main/")
        if masks:
            raise ValueError("Pascal-VOC XML has no instance masks: use fasterrcnn or retinanet, or COCO-format data")
        train = VocDetection(cfg.data_dir, image_set="train", allow_outside=cfg.allow_outside_paths)
        return train, VocDetection(cfg.data_dir, classes=train.classes, image_set="val",
                                   allow_outside=cfg.allow_outside_paths)
    root = embedded_detection_root() if cfg.data == "embedded" else Path(cfg.data_dir or "")
    if cfg.data == "coco" and cfg.data_dir is None:
        raise FileNotFoundError("--data coco needs --data-dir with train/, val/ and annotations/instances_{train,val}.json")
    train = CocoDetection(root / "train", root / "annotations" / "instances_train.json", masks, cfg.allow_outside_paths)
    val = CocoDetection(root / "val", root / "annotations" / "instances_val.json", masks, cfg.allow_outside_paths)
    for ds, n in ((train, cfg.train_size), (val, cfg.val_size)):
        if n is not None:
            ds.ids = ds.ids[:n]
    return train, val


def build_detector(cfg: DetectConfig, num_classes: int) -> nn.Module:
    bkw = {}
    if cfg.conv_kwargs:
        bkw["conv_kwargs"] = dict(cfg.conv_kwargs)
    if cfg.attn_kwargs:
        bkw["attn_kwargs"] = dict(cfg.attn_kwargs)
    extra = SMALL_RCNN if (cfg.max_size <= 400 and cfg.detector != "retinanet") else {}
    return create_detector(cfg.detector, cfg.backbone, cfg.variant, num_classes, cfg.trainable_layers, cfg.frozen_bn,
                           cfg.attn_norm_trainable, cfg.min_size, cfg.max_size, backbone_kwargs=bkw, **extra)


def _loader(ds, batch_size: int, shuffle: bool, seed: int, epoch: int, info: DistInfo, workers: int):
    from torch.utils.data import DataLoader, DistributedSampler
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if info.enabled:
        sampler = DistributedSampler(ds, info.world_size, info.rank, shuffle=shuffle, seed=seed)
        sampler.set_epoch(epoch)
    else:
        sampler = torch.utils.data.RandomSampler(ds, generator=g) if shuffle else torch.utils.data.SequentialSampler(ds)
    return DataLoader(ds, batch_size=max(1, batch_size // info.world_size), sampler=sampler, num_workers=workers,
                      collate_fn=collate, drop_last=shuffle)


def train_detector(cfg: DetectConfig) -> dict[str, Any]:
    """Train (or resume) a detector; evaluates with pycocotools after the last epoch. Returns the summary."""
    require("pycocotools", "detection", "detection training (COCO evaluation)")
    return run_task(resolve(cfg), _train)


class DetectionTask:
    """Detection / instance segmentation for the engine's loop: the torchvision detector's summed training losses
    on (images, targets) batches; evaluation with pycocotools after the last epoch (``evaluate_detector``)."""

    def __init__(self, cfg: DetectConfig, train_ds, opt: torch.optim.Optimizer, info: DistInfo) -> None:
        self.cfg, self.train_ds, self.opt, self.info = cfg, train_ds, opt, info
        self.name = f"{cfg.detector}/{cfg.backbone}/{cfg.variant}/seed{cfg.seed}"
        self.steps_per_epoch = len(self._loader(1))

    def _loader(self, epoch: int):
        return _loader(self.train_ds, self.cfg.batch_size, True, self.cfg.seed, epoch, self.info, self.cfg.workers)

    def batches(self, epoch: int):
        return self._loader(epoch)

    def loss(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.info.device
        images = [im.to(device) for im in batch[0]]
        targets = [{k: v.to(device) for k, v in t.items()} for t in batch[1]]
        loss = sum(net(images, targets).values())
        return loss, torch.tensor([loss.item(), 1.0, len(images)], dtype=torch.float64)  # loss sum, batches, images

    def progress(self, sums: torch.Tensor, seconds: float) -> str:
        return f"loss {sums[0] / sums[1]:.3f} lr {self.opt.param_groups[0]['lr']:.4f}"

    def end_epoch(self, epoch: int, sums: torch.Tensor, seconds: float) -> dict[str, Any]:
        return dict(loss=sums[0].item() / max(sums[1].item(), 1.0), epoch_time_s=seconds,
                    images_per_s=sums[2].item() / seconds)

    def epoch_line(self, row: dict[str, Any]) -> str:
        return f"{self.name} epoch {row['epoch']}/{self.cfg.epochs}: loss {row['loss']:.4f} ({row['images_per_s']:.1f} img/s)"


def _train(cfg: DetectConfig, info: DistInfo) -> dict[str, Any]:
    out = Path(cfg.out)
    start_process(cfg)
    train_ds, val_ds = build_datasets(cfg)
    if len(train_ds) < cfg.batch_size:
        raise ValueError(f"batch size {cfg.batch_size} is larger than the training set ({len(train_ds)} images)")
    model = build_detector(cfg, train_ds.num_classes).to(info.device)
    report = None
    if cfg.init_from:
        from safetensors.torch import load_file
        from .backbone import load_backbone_weights
        src = Path(cfg.init_from)
        src = src / "model.safetensors" if src.is_dir() else src
        try:
            sd = load_file(str(src))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"cannot read classification weights {src}: {e}") from e
        report = load_backbone_weights(model.backbone, sd)
    # the same parameter groups as classification: no decay on what modules declare (GCT's beta, attach's scales),
    # attention at attn_lr_mult x the rate; the frozen stages (trainable_layers) are left out
    opt = build_sgd(model, cfg)
    task = DetectionTask(cfg, train_ds, opt, info)
    # torchvision's reference recipe: linear warm-up from 0.1 % of the LR over warmup_iters updates, x0.1 per milestone
    sched = create_scheduler(opt, "step", task.steps_per_epoch, cfg.epochs, cfg.warmup_iters, cfg.lr * 1e-3,
                             milestones=cfg.milestones, gamma=0.1)
    settings = asdict(cfg)
    state = resume_run(out / "checkpoints", settings, DetectConfig.resume_keys(), model, opt, sched) \
        if cfg.resume else RunState()
    if info.is_main:
        write_run_info(out, settings, dict(classes=train_ds.classes, num_classes=train_ds.num_classes))
        if report is not None:
            atomic_write_text(out / "init_report.txt", report.summary() + "\n")
            print(f"backbone initialised from {cfg.init_from}: {report.summary()}")
    loop = Loop(model, wrap_model(model, info), opt, info, out, settings, cfg.epochs, cfg.seed, sched, amp=cfg.amp,
                stop_after=cfg.stop_after, progress=cfg.progress)
    rows = loop.fit(task, state).rows
    if rows and rows[-1]["epoch"] < cfg.epochs:
        return {"stopped_after": rows[-1]["epoch"], "epochs": cfg.epochs}
    res = {}
    if info.is_main:
        res = evaluate_detector(model, val_ds, cfg.detector == "maskrcnn", info.device, out)
        res.update(detector=cfg.detector, backbone=cfg.backbone, variant=cfg.variant, seed=cfg.seed,
                   epochs=cfg.epochs, train_time_s=sum(r["epoch_time_s"] for r in rows),
                   params=sum(p.numel() for p in model.parameters()))
        atomic_write_text(out / "final.json", json.dumps(res, indent=2))
    return res


@torch.no_grad()
def evaluate_detector(model: nn.Module, ds, masks: bool, device: torch.device, out: str | os.PathLike | None = None,
                      batch_size: int = 4) -> dict[str, Any]:
    """COCO-style AP with pycocotools (boxes; masks too for Mask R-CNN); writes eval.json / eval.md to ``out``."""
    mask_utils = require("pycocotools.mask", "detection", "COCO evaluation")
    COCO = require("pycocotools.coco", "detection", "COCO evaluation").COCO
    COCOeval = require("pycocotools.cocoeval", "detection", "COCO evaluation").COCOeval
    model.eval()
    if isinstance(ds, CocoDetection):
        gt, to_cat = ds.coco, ds.label_to_cat
    else:  # VOC: build a COCO ground truth from the targets
        gt = COCO()
        imgs, anns = [], []
        for i in range(len(ds)):
            x, t = ds[i]
            imgs.append(dict(id=i, width=x.shape[-1], height=x.shape[-2]))
            for b, lab in zip(t["boxes"].tolist(), t["labels"].tolist()):
                anns.append(dict(id=len(anns) + 1, image_id=i, category_id=lab, bbox=[b[0], b[1], b[2] - b[0], b[3] - b[1]],
                                 area=(b[2] - b[0]) * (b[3] - b[1]), iscrowd=0))
        gt.dataset = dict(images=imgs, annotations=anns, categories=[dict(id=i + 1, name=c) for i, c in enumerate(ds.classes)])
        gt.createIndex()
        to_cat = {i + 1: i + 1 for i in range(len(ds.classes))}
    dets, segs = [], []
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=collate)
    for images, targets in loader:
        outs = model([im.to(device) for im in images])
        for t, o in zip(targets, outs):
            img_id = int(t["image_id"])
            boxes = o["boxes"].cpu()
            for k in range(len(boxes)):
                x1, y1, x2, y2 = boxes[k].tolist()
                d = dict(image_id=img_id, category_id=to_cat[int(o["labels"][k])], bbox=[x1, y1, x2 - x1, y2 - y1],
                         score=float(o["scores"][k]))
                dets.append(d)
                if masks:
                    m = (o["masks"][k, 0] > 0.5).cpu().numpy().astype(np.uint8)
                    rle = mask_utils.encode(np.asfortranarray(m))
                    rle["counts"] = rle["counts"].decode("ascii")
                    segs.append({**d, "segmentation": rle})
    res: dict[str, Any] = {}
    for kind, results in (("bbox", dets),) + ((("segm", segs),) if masks else ()):
        if not results:
            res[kind] = {n: 0.0 for n in AP_NAMES}
            continue
        ev = COCOeval(gt, gt.loadRes(results), kind)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        res[kind] = {n: float(v) * 100 if v >= 0 else None for n, v in zip(AP_NAMES, ev.stats[:6])}  # -1: no such objects
    res["detections"] = len(dets)
    if out is not None:
        out = Path(out)
        atomic_write_text(out / "eval.json", json.dumps(res, indent=2))
        rows = [dict(kind=k, **v) for k, v in res.items() if isinstance(v, dict)]
        atomic_write_text(out / "eval.md", "COCO-style AP (%) from pycocotools\n\n" + to_markdown(rows, ["kind"] + AP_NAMES))
    return res


def load_detector_run(run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None
                      ) -> tuple[DetectConfig, dict[str, Any], nn.Module]:
    """(config, data info, detector with the run's latest or given weights) of a folder written by ``detect train``."""
    cfg, info = read_run(DetectConfig, run_dir)
    if info is None:
        raise FileNotFoundError(f"{run_dir}/data.json not found: the run did not finish its first setup")
    model = build_detector(cfg, info["num_classes"])
    load_run_weights(run_dir, model, checkpoint, what="detector")
    return cfg, info, model.eval()


@torch.no_grad()
def predict(model: nn.Module, images: list[tuple[str, torch.Tensor]], classes: list[str], out_dir: str | os.PathLike,
            score_thresh: float = 0.5) -> list[Path]:
    """Draw boxes (and masks) with score >= ``score_thresh`` on each image and save PNGs."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks
    from PIL import Image
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    model.eval()
    for name, x in images:
        if not torch.isfinite(x).all():
            raise ValueError(f"image {name} contains NaN or Inf values")
        o = model([x])[0]
        keep = o["scores"] >= score_thresh
        img = (x * 255).clamp(0, 255).to(torch.uint8)
        if "masks" in o and keep.any():
            img = draw_segmentation_masks(img, o["masks"][keep, 0] > 0.5, alpha=0.45)
        labels = [f"{classes[int(label) - 1] if 0 < int(label) <= len(classes) else label} {s:.2f}"
                  for label, s in zip(o["labels"][keep], o["scores"][keep])]
        if keep.any():
            img = draw_bounding_boxes(img, o["boxes"][keep], labels, colors="yellow", width=1)
        p = out / f"{name}.png"
        tmp = out / f".{name}.tmp.png"
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp)
        os.replace(tmp, p)
        paths.append(p)
    return paths



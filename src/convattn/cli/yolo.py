"""Arguments of ``convattn compare --task yolo`` and ``convattn yolo-data``; each handler calls the library
(:mod:`convattn.integrations`)."""
from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_yolo_args", "add_yolo_data_command", "run_compare_yolo"]

# compare's recipe options that mean the same in the YOLO study: option -> YoloConfig field
_SHARED = {"epochs": "epochs", "batch_size": "batch", "lr": "lr0", "warmup_epochs": "warmup_epochs",
           "image_size": "imgsz", "identity": "identity"}


def add_yolo_args(p: argparse.ArgumentParser) -> None:
    """The options of ``compare --task yolo`` that compare does not have already."""
    g = p.add_argument_group("--task yolo (Ultralytics YOLO trained by ultralytics; docs/yolo.md)")
    g.add_argument("--where", default=None,
                   help="--task yolo: where every arm's modules go: backbone, neck, or ultralytics layer indices "
                        "(e.g. 12,15,18,21); default: each module's default placement")


def _where(value: str | None) -> Any:
    if value is None:
        return None
    items = [w.strip() for w in value.split(",") if w.strip()]
    try:
        parsed = [int(w) if w.lstrip("-").isdigit() else w for w in items]
    except ValueError:  # pragma: no cover - isdigit guards int()
        parsed = items
    return parsed[0] if len(parsed) == 1 and isinstance(parsed[0], str) else parsed


def yolo_config(args: argparse.Namespace, given: dict[str, Any]):
    """The YOLO study's recipe from compare's arguments (``given``: the recipe options given), or a refusal
    naming the options that do not apply."""
    from ..integrations.yolo_study import YoloConfig
    from ..tasks.classification.study import DEFAULT_STUDY
    from ..validate import ConfigError
    foreign = sorted(k for k in given if k not in _SHARED)
    if foreign:
        raise ConfigError(f"compare --task yolo does not take {', '.join('--' + k.replace('_', '-') for k in foreign)}"
                          f"; its recipe options are {', '.join('--' + k.replace('_', '-') for k in _SHARED)}, "
                          "--where and --model (an ultralytics model yaml)")
    model = YoloConfig.model if args.model == DEFAULT_STUDY["model"] else args.model
    data = None if args.data in (None, "embedded") else args.data
    return YoloConfig(model=model, data=data, where=_where(args.where),
                      **{_SHARED[k]: v for k, v in given.items()})


def run_compare_yolo(args: argparse.Namespace, seeds: list[int], command: str, executor: Any,
                     given: dict[str, Any]) -> int:
    from ..integrations.yolo_study import YOLO_DEFAULT_VARIANTS, compare_yolo
    from ..validate import ConfigError
    if args.time_budget:
        raise ConfigError("--time-budget sizes classification studies; give the YOLO recipe (--epochs, "
                          "--image-size) instead")
    compare_yolo(yolo_config(args, given), args.variants or list(YOLO_DEFAULT_VARIANTS), seeds, args.out, command,
                 args.report_only, executor, args.threads)
    return 0


def add_yolo_data_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("yolo-data", help="write the embedded detection set (or a COCO-format folder) in YOLO format",
                       description="Images, labels and data.yaml for ultralytics (detect, segment), or class folders "
                                   "of object crops (classify): the same images and boxes as the COCO form.")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--task", default="detect", choices=["detect", "segment", "classify"])
    p.add_argument("--coco", default=None, help="a COCO-format folder (default: the embedded detection set)")
    p.add_argument("--train-images", type=int, default=None, help="at most this many training images (first ones)")
    p.add_argument("--val-images", type=int, default=None, help="at most this many validation images")
    p.set_defaults(func=_run_yolo_data)


def _run_yolo_data(args: argparse.Namespace) -> int:
    from ..integrations.yolo_data import export_yolo_data
    limit = {k: v for k, v in (("train", args.train_images), ("val", args.val_images)) if v is not None}
    path = export_yolo_data(args.out, args.task, args.coco, limit)
    print(f"wrote {path} (ultralytics: data={path})")
    return 0

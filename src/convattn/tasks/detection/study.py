"""The detection study of ``convattn compare --task detection``: COCO box AP (and mask AP for Mask R-CNN, from
pycocotools) per arm, with parameters and training time as its cost columns (the study loop, statistics and
report: ``study.compare``)."""
from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .run import AP_NAMES, DetectConfig, resolve, train_detector
from ...study.compare import Metric, Results, run_study

__all__ = ["DetectionStudy", "compare_detection"]

# DetectConfig fields that are not part of a study's recipe (set per run, or how a run is executed)
_NOT_RECIPE = ("variant", "seed", "out", "resume", "progress", "threads", "device", "workers", "stop_after")


def _ap(kind: str, name: str) -> Metric:
    label = {"bbox": "box", "segm": "mask"}[kind] + " " + name
    return Metric(f"{kind}_{name}", label, lambda run: run[kind][name], compared=name == "AP")


class DetectionStudy:
    """Detection (Faster R-CNN, RetinaNet) or instance segmentation (Mask R-CNN) under one :class:`DetectConfig`
    recipe; the primary metric is box AP."""

    name = "detection"

    def __init__(self, base: DetectConfig):
        self.base = resolve(base)
        kinds = ["bbox"] + (["segm"] if self.base.detector == "maskrcnn" else [])
        self.metrics = tuple(_ap(k, n) for k in kinds for n in ("AP", "AP50", "AP75"))
        self.title = f"convattn compare (detection): {self.base.detector} / {self.base.backbone}"

    def fixed_settings(self) -> dict[str, Any]:
        return {}  # detector and backbone are part of the recipe

    def recipe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self.base).items() if k not in _NOT_RECIPE}

    def recipe_defaults(self) -> dict[str, Any]:
        return asdict(resolve(DetectConfig()))

    def train(self, variant: str, seed: int, run_dir: Path) -> dict[str, Any]:
        return train_detector(replace(self.base, variant=variant, seed=seed, out=str(run_dir)))

    def read_run(self, final: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        return final  # evaluated once, after the last epoch: no per-epoch curve

    def columns(self, variants: list[str], results: Results, out: Path):
        base_params = results["none"][0]["params"]
        cost = {v: dict(params=runs[0]["params"], added_params=runs[0]["params"] - base_params,
                        train_time_s=float(np.median([r["train_time_s"] for r in runs])))
                for v, runs in results.items() if runs}
        return cost, ["params", "added_params", "train_time_s"], {"added_params": "added params",
                                                                   "train_time_s": "train s/run (median)"}

    def describe(self, results: Results, seeds: Sequence[int]) -> str:
        b = self.base
        return (f"Recipe (one for every arm): preset `{b.preset}`, {b.epochs} epochs, batch {b.batch_size}, SGD lr "
                f"{b.lr} momentum {b.momentum}, weight decay {b.weight_decay}, milestones {b.milestones}, warm-up "
                f"{b.warmup_iters} updates, images {b.min_size}-{b.max_size}, trainable layers {b.trainable_layers}, "
                f"frozen BN {b.frozen_bn}; data `{b.data}`; seeds {list(seeds)}.")

    def notes(self) -> list[str]:
        return [f"* AP in % from pycocotools' COCO evaluation of the validation set after the last epoch "
                f"({', '.join(AP_NAMES)} per run in runs/*/seed*/eval.json); mean and sample std over seeds.",
                "* Training time: the median over seeds of each run's summed epoch times."]


def compare_detection(base: DetectConfig, variants: Sequence[str], seeds: Sequence[int], out: str | Path,
                      command: str | None = None, report_only: bool = False, executor: Any = None
                      ) -> list[dict[str, Any]]:
    """Run (or continue) the detection study of ``base``'s recipe; see :func:`convattn.study.compare.run_study`
    (``executor``: where the runs execute, as for ``run_compare``)."""
    return run_study(DetectionStudy(base), variants, seeds, out, command, report_only, executor, base.threads)

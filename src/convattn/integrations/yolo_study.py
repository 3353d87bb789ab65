"""The YOLO study of ``convattn compare --task yolo``: Ultralytics YOLO trained by ultralytics' own trainer with each
arm's modules attached by :func:`convattn.integrations.ultralytics.attach_yolo`; mAP50-95 and mAP50 from
ultralytics' validator; parameters, GFLOPs and measured latency as cost columns (the study loop, statistics and
report: :mod:`convattn.study.compare`).

Each run: ``YOLO(model_yaml)`` built in the run (seeded by ultralytics' ``seed``), the arm attached, trained on the
YOLO-format export of the embedded detection set (or ``data``) in ``run_dir``; an interrupted run resumes from its
``last.pt`` (ultralytics' ``resume=True``, through the attaching trainer).
"""
from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..models.plan import AttachPlan
from ..report import atomic_write_text
from ..study.compare import Metric, Results, run_study

__all__ = ["YoloConfig", "YoloStudy", "compare_yolo", "YOLO_DEFAULT_VARIANTS"]

#: The arms of the YOLO study (with ``none``).
YOLO_DEFAULT_VARIANTS = ("se", "cbam", "eca", "coord", "steam", "aw")


@dataclass(frozen=True)
class YoloConfig:
    """One recipe for every arm of a YOLO study (ultralytics' training arguments where named alike)."""

    model: str = "yolov8n.yaml"  # an ultralytics model yaml (built from scratch; nothing is downloaded)
    data: str | None = None  # a YOLO data.yaml; None: the embedded detection set exported in YOLO format
    epochs: int = 3
    imgsz: int = 128
    batch: int = 16
    fraction: float = 1.0  # share of the training images used
    optimizer: str = "auto"
    lr0: float = 0.01
    close_mosaic: int = 10
    warmup_epochs: float = 3.0
    where: Any = None  # attach_yolo's where= for every arm: None, "backbone", "neck" or layer indices
    identity: bool = False
    workers: int = 0
    device: str = "cpu"
    latency_batch: int = 1

    def __post_init__(self) -> None:
        for k in ("epochs", "imgsz", "batch", "latency_batch"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"yolo study: {k} must be an int >= 1, got {v!r}")
        if self.imgsz % 32:
            raise ValueError(f"yolo study: imgsz must be a multiple of 32 (YOLO's largest stride), got {self.imgsz}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"yolo study: fraction must be in (0, 1], got {self.fraction!r}")
        if not str(self.model).endswith((".yaml", ".yml")):
            raise ValueError(f"yolo study: model must be an ultralytics model yaml such as 'yolov8n.yaml' (a study "
                             f"trains from scratch; a .pt name would be downloaded), got {self.model!r}")


# not part of a study's recipe (how a run executes)
_NOT_RECIPE = ("workers", "device")


def _pct(key: str) -> Any:
    return lambda run: 100.0 * float(run[key])


class YoloStudy:
    """The :class:`convattn.study.compare.StudyTask` of Ultralytics YOLO detection (primary metric: mAP50-95)."""

    name = "yolo"
    metrics = (Metric("map50_95", "mAP50-95 %", _pct("map50_95")), Metric("map50", "mAP50 %", _pct("map50")))

    def __init__(self, base: YoloConfig):
        os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported: it never reaches the network
        self.base = base
        where = f", modules at {base.where}" if base.where is not None else ""
        self.title = f"convattn compare (yolo): {Path(base.model).stem} trained by ultralytics{where}"

    # --- recipe ---

    def fixed_settings(self) -> dict[str, Any]:
        return {}

    def recipe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self.base).items() if k not in _NOT_RECIPE}

    def recipe_defaults(self) -> dict[str, Any]:
        return asdict(YoloConfig())

    def data_yaml(self) -> str:
        if self.base.data is not None:
            return str(self.base.data)
        from .yolo_data import embedded_yolo_data
        return str(embedded_yolo_data("detect"))

    # --- one run ---

    def train(self, variant: str, seed: int, run_dir: Path) -> dict[str, Any]:
        from .ultralytics import YOLO, attach_yolo, load_yolo
        run_dir = Path(run_dir).resolve()  # ultralytics puts a relative project under its own runs folder
        b = self.base
        last = run_dir / "train" / "weights" / "last.pt"
        args = dict(data=self.data_yaml(), epochs=b.epochs, imgsz=b.imgsz, batch=b.batch, fraction=b.fraction,
                    optimizer=b.optimizer, lr0=b.lr0, close_mosaic=b.close_mosaic, warmup_epochs=b.warmup_epochs,
                    seed=seed, deterministic=True, workers=b.workers, device=b.device, plots=False, amp=False,
                    project=str(run_dir), name="train", exist_ok=True, verbose=False)
        t0 = time.perf_counter()
        if last.exists():
            model = load_yolo(str(last))
            metrics = model.train(resume=True, **{k: args[k] for k in ("workers", "device")})
        else:
            model = YOLO(b.model)
            plan = AttachPlan.parse(variant)
            if not plan.is_plain:
                attach_yolo(model, plan.attn, plan.conv, where=b.where, identity=b.identity)
            metrics = model.train(**args)  # ultralytics' validator on best.pt after the last epoch
        wall = time.perf_counter() - t0
        best = run_dir / "train" / "weights" / "best.pt"
        net = model.model
        report = getattr(net, "convattn_report", None)
        res = dict(variant=variant, seed=seed, map50_95=float(metrics.box.map), map50=float(metrics.box.map50),
                   epochs=b.epochs, params=int(sum(p.numel() for p in net.parameters())),
                   train_time_s=round(_train_seconds(run_dir) or wall, 2), wall_s=round(wall, 2),
                   modules=report.count() if report is not None and not AttachPlan.parse(variant).is_plain else 0,
                   layers=" ".join(map(str, getattr(report, "layer_indices", []))) if variant != "none" else "",
                   best=str(best))
        atomic_write_text(run_dir / "final.json", json.dumps(res, indent=2))
        return res

    def read_run(self, final: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        curve = _curve(Path(run_dir) / "train" / "results.csv")
        return {**final, "curve": curve} if curve else final

    # --- cost ---

    def columns(self, variants: list[str], results: Results, out: Path):
        cost = _costs(self.base, {v: results[v][0].get("best") for v in variants if results.get(v)}, Path(out))
        for v, runs in results.items():
            if runs and v in cost:
                cost[v]["train_time_s"] = float(np.median([r["train_time_s"] for r in runs]))
                cost[v]["modules"] = runs[0].get("modules", 0)
        cols = ["modules", "params", "added_params", "gflops", "latency_ms", "latency_ratio", "train_time_s"]
        return cost, cols, {"modules": "modules", "added_params": "added params", "gflops": "GFLOPs",
                            "latency_ms": f"latency ms (batch {self.base.latency_batch})",
                            "latency_ratio": "latency / none", "train_time_s": "train s/run (median)"}

    def describe(self, results: Results, seeds: Sequence[int]) -> str:
        b = self.base
        n = _count_images(self.data_yaml())
        return (f"Recipe (one for every arm): `{b.model}` from scratch, trained by ultralytics' own trainer for "
                f"{b.epochs} epochs at imgsz {b.imgsz}, batch {b.batch}, optimizer {b.optimizer} (lr0 {b.lr0}), "
                f"warm-up {b.warmup_epochs} epochs, close_mosaic {b.close_mosaic}, fraction {b.fraction} of {n[0]} "
                f"training images, validated on {n[1]} images; modules attached by attach_yolo "
                f"(where={b.where!r}, identity={b.identity}); seeds {list(seeds)} (ultralytics' seed, deterministic).")

    def notes(self) -> list[str]:
        return ["* mAP50-95 and mAP50 in % from ultralytics' own validator (its COCO-style 101-point AP) on the "
                "validation images, run by ultralytics' trainer on `best.pt` after the last epoch (what `model.train()`"
                " returns); mean and sample std over seeds.",
                "* GFLOPs: convattn's dispatch counter (2 x multiply-accumulates) of the unfused network at imgsz; "
                "latency: median forward time of the fused network (as ultralytics predicts) in eval mode, every arm "
                "timed interleaved in one process; train time: median over seeds of ultralytics' recorded time."]


def _train_seconds(run_dir: Path) -> float | None:
    path = run_dir / "train" / "results.csv"
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        return float(rows[-1]["time"]) if rows and "time" in rows[-1] else None
    except (OSError, ValueError, KeyError):
        return None


def _curve(path: Path) -> list[float]:
    """mAP50-95 in % per epoch from ultralytics' results.csv."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    key = next((k for k in (rows[0] if rows else {}) if k.strip() == "metrics/mAP50-95(B)"), None)
    return [100.0 * float(r[key]) for r in rows] if key else []


def _count_images(data_yaml: str) -> tuple[int, int]:
    import yaml
    d = yaml.safe_load(Path(data_yaml).read_text())
    root = Path(d.get("path") or Path(data_yaml).parent)
    count = []
    for split in ("train", "val"):
        folder = root / d[split]
        count.append(sum(1 for p in folder.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")))
    return count[0], count[1]


def _costs(b: YoloConfig, weights: dict[str, str | None], out: Path) -> dict[str, dict[str, Any]]:
    """Parameters, GFLOPs and latency of each arm's trained network (its first seed's weights; built fresh when
    they are gone), latency of the fused network with every arm timed interleaved; cached in ``out/costs.json``
    for the same recipe and arms."""
    import torch

    from ..profile.counting import count_complexity
    from ..profile.latency import measure_latency
    from .ultralytics import YOLO, attach_yolo

    cache = out / "costs.json"
    variants = list(weights)
    key = dict(recipe={k: v for k, v in asdict(b).items() if k not in _NOT_RECIPE}, variants=variants)
    if cache.exists():
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            return stored["cost"]
    nets = {}
    for v in variants:
        if weights[v] and Path(weights[v]).exists():
            model = YOLO(weights[v])
        else:
            model = YOLO(b.model)
            plan = AttachPlan.parse(v)
            if not plan.is_plain:
                attach_yolo(model, plan.attn, plan.conv, where=b.where, identity=b.identity)
        nets[v] = model.model.float().eval()
    x = torch.randn(b.latency_batch, 3, b.imgsz, b.imgsz, generator=torch.Generator().manual_seed(0))
    cost: dict[str, dict[str, Any]] = {}
    for v, net in nets.items():
        c = count_complexity(net, x[:1])
        cost[v] = dict(params=c.params, gflops=round(2 * c.macs / 1e9, 4))
    fused = [net.fuse(verbose=False) for net in nets.values()]
    timings = measure_latency(fused, x, warmup=3, repeats=20, min_time_s=2.0)
    for v, t in zip(nets, timings):
        cost[v].update(latency_ms=round(t.median_ms, 3))
    base = cost.get("none", next(iter(cost.values())))
    for v in cost:
        cost[v]["added_params"] = cost[v]["params"] - base["params"]
        cost[v]["latency_ratio"] = round(cost[v]["latency_ms"] / base["latency_ms"], 3)
    atomic_write_text(cache, json.dumps(dict(key=key, cost=cost), indent=2))
    return cost


def compare_yolo(base: YoloConfig, variants: Sequence[str], seeds: Sequence[int], out: str | Path,
                 command: str | None = None, report_only: bool = False, executor: Any = None,
                 threads: int | None = None) -> list[dict[str, Any]]:
    """Run (or continue) the YOLO study of ``base``'s recipe; see :func:`convattn.study.compare.run_study`."""
    return run_study(YoloStudy(base), variants, seeds, out, command, report_only, executor, threads)


def config_fields() -> list[str]:
    """The recipe options of the YOLO study (for the CLI)."""
    return [f.name for f in fields(YoloConfig)]


def with_options(base: YoloConfig, **options: Any) -> YoloConfig:
    """``base`` with the options given (None: keep the default)."""
    return replace(base, **{k: v for k, v in options.items() if v is not None})

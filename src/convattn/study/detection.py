"""``convattn compare --task detection``: baseline and attention backbones under one detection recipe and several
seeds; COCO AP (pycocotools) per arm, paired by seed against the baseline like the classification study."""
from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..detection.engine import AP_NAMES, DetectConfig, resolve, train_detector
from ..models import parse_variant
from ..report import atomic_write_text, print_table, to_markdown, write_csv
from .stats import check_study, paired_cells, paired_deltas, per_seed_table, slug, welch

__all__ = ["compare_detection"]

# DetectConfig fields that are not part of a study's recipe (set per run, or how a run is executed)
_NOT_RECIPE = ("variant", "seed", "out", "resume", "progress", "threads", "device", "workers", "stop_after")


def _ap(kind: str):
    return lambda run: run[kind]["AP"]


def compare_detection(base: DetectConfig, variants: Sequence[str], seeds: Sequence[int], out: str | Path,
                      command: str | None = None) -> list[dict[str, Any]]:
    """Train (or read back) every variant x seed under ``base``'s recipe and write report.md / results.csv."""
    variants = list(dict.fromkeys(["none"] + list(variants)))
    for v in variants:
        parse_variant(v)
    out = Path(out)
    base = resolve(base)
    command = command or "convattn " + shlex.join(sys.argv[1:])
    recipe = {k: v for k, v in asdict(base).items() if k not in _NOT_RECIPE}
    out.mkdir(parents=True, exist_ok=True)
    check_study(out, dict(task="detection", variants=variants, seeds=list(seeds), recipe=recipe, command=command),
                asdict(resolve(DetectConfig())), identity="task")
    t0 = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for seed in seeds:
        for v in variants:
            cfg = replace(base, variant=v, seed=seed, out=str(out / "runs" / slug(v) / f"seed{seed}"))
            final = Path(cfg.out) / "final.json"
            res = json.loads(final.read_text()) if final.exists() else train_detector(cfg)
            results[v].append({**res, "seed": seed})
    kinds = ["bbox"] + (["segm"] if base.detector == "maskrcnn" else [])
    rows = []
    for v in variants:
        r = dict(variant=v, seeds=len(results[v]), params=results[v][0]["params"],
                 train_time_s=float(np.mean([x["train_time_s"] for x in results[v]])))
        for kind in kinds:
            for n in ("AP", "AP50", "AP75"):
                vals = [x[kind][n] for x in results[v]]
                r[f"{kind}_{n}"] = float(np.mean(vals))
                if n == "AP":
                    r[f"{kind}_AP_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
            if v != "none":
                base_ap = [x[kind]["AP"] for x in results["none"]]
                r[f"{kind}_delta"], r[f"{kind}_delta_se"] = welch([x[kind]["AP"] for x in results[v]], base_ap)
                r[f"{kind}_paired"] = paired_cells(paired_deltas(results[v], results["none"], _ap(kind)))["paired"]
        rows.append(r)
    cols = (["variant", "seeds", "params"]
            + [f"{k}_{n}" for k in kinds for n in ("AP", "AP_std", "AP50", "AP75", "delta", "delta_se", "paired")]
            + ["train_time_s"])
    write_csv(out / "results.csv", rows, cols)
    md = [f"# convattn compare (detection): {base.detector} / {base.backbone}", "",
          f"Command: `{command}`", "",
          f"Recipe: preset `{base.preset}`, {base.epochs} epochs, batch {base.batch_size}, lr {base.lr}, milestones "
          f"{base.milestones}, warm-up {base.warmup_iters} updates, weight decay {base.weight_decay}, images "
          f"{base.min_size}-{base.max_size}, trainable layers {base.trainable_layers}, frozen BN {base.frozen_bn}; "
          f"data `{base.data}`; seeds {list(seeds)}.", "",
          to_markdown(rows, cols), "",
          f"AP in % from pycocotools ({', '.join(AP_NAMES)} per run in runs/*/seed*/eval.json). delta: difference of "
          "means to none with its Welch SE; paired: mean ± SE of the per-seed differences to the baseline run of the "
          "same seed (same data order).", ""]
    for kind in kinds:
        md += [f"## {kind} AP per seed", "", per_seed_table(variants, list(seeds), results, _ap(kind)), ""]
    md.append(f"Wall time of this invocation: {time.perf_counter() - t0:.0f} s.")
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    print_table(rows, cols, title=f"detection compare: {base.detector}/{base.backbone}")
    return rows

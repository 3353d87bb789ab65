"""``convattn compare --task detection``: baseline and attention backbones under one detection recipe."""
from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..models import parse_variant
from ..report import atomic_write_text, print_table, to_markdown, write_csv
from .engine import AP_NAMES, DetectConfig, resolve, train_detector

__all__ = ["compare_detection"]


def compare_detection(base: DetectConfig, variants: Sequence[str], seeds: Sequence[int], out: str | Path,
                      command: str | None = None) -> list[dict[str, Any]]:
    variants = list(dict.fromkeys(["none"] + list(variants)))
    for v in variants:
        parse_variant(v)
    out = Path(out)
    base = resolve(base)
    t0 = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for seed in seeds:
        for v in variants:
            cfg = replace(base, variant=v, seed=seed, out=str(out / "runs" / v.replace("+", "_") / f"seed{seed}"))
            final = Path(cfg.out) / "final.json"
            results[v].append(json.loads(final.read_text()) if final.exists() else train_detector(cfg))
    rows = []
    kinds = ["bbox"] + (["segm"] if base.detector == "maskrcnn" else [])
    for v in variants:
        r = dict(variant=v, seeds=len(results[v]), params=results[v][0]["params"],
                 train_time_s=float(np.mean([x["train_time_s"] for x in results[v]])))
        for kind in kinds:
            for n in ("AP", "AP50", "AP75"):
                vals = [x[kind][n] for x in results[v]]
                r[f"{kind}_{n}"] = float(np.mean(vals))
                if n == "AP":
                    r[f"{kind}_AP_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
        rows.append(r)
    cols = ["variant", "seeds", "params"] + [f"{k}_{n}" for k in kinds for n in ("AP", "AP_std", "AP50", "AP75")] + ["train_time_s"]
    write_csv(out / "results.csv", rows, cols)
    md = [f"# convattn compare (detection): {base.detector} / {base.backbone}", "",
          f"Command: `{command or 'convattn ' + shlex.join(sys.argv[1:])}`", "",
          f"Recipe: preset `{base.preset}`, {base.epochs} epochs, batch {base.batch_size}, lr {base.lr}, milestones "
          f"{base.milestones}, images {base.min_size}-{base.max_size}, trainable layers {base.trainable_layers}, frozen BN "
          f"{base.frozen_bn}; data `{base.data}`; seeds {list(seeds)}.", "",
          to_markdown(rows, cols), "",
          f"AP in % from pycocotools ({', '.join(AP_NAMES)} per run in runs/*/seed*/eval.json).",
          f"Wall time of this invocation: {time.perf_counter() - t0:.0f} s."]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    print_table(rows, cols, title=f"detection compare: {base.detector}/{base.backbone}")
    return rows

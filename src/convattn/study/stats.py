"""What every comparison study shares, whatever the task and its metric: run-folder names, the recipe check of a
study folder, and the statistics of arms against the baseline (Welch, and paired by seed: the same seed gives every
arm the same data order and augmentation)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..report import atomic_write_text, to_markdown

__all__ = ["slug", "check_study", "welch", "paired_deltas", "paired_cells", "per_seed_table", "Metric"]

Metric = Callable[[dict[str, Any]], float]  # a run's summary (final.json) -> the number compared


def top1(run: dict[str, Any]) -> float:
    return run["val_top1"]


def slug(variant: str) -> str:
    """Run-folder name of a variant, from its canonical name: ``se+aw`` (or ``AW+SE``) -> ``se_aw``,
    ``steam@all`` -> ``steam-all``, ``baseline`` -> ``none``."""
    from ..models.plan import AttachPlan
    return AttachPlan.parse(variant).name.replace("+", "_").replace("@", "-")


def check_study(out: Path, study: dict[str, Any], defaults: dict[str, Any], fixed: Sequence[str] = ("model",)
                ) -> None:
    """Write ``study.json``; refuse a folder whose study has another recipe or other values of the ``fixed`` settings (task, model).

    A setting the stored study predates counts as its value in ``defaults``, so that older studies keep resuming;
    a study stored before the task was recorded is a classification study.
    """
    p = out / "study.json"
    if p.exists():
        old = json.loads(p.read_text())
        keys = sorted(set(study["recipe"]) | set(old.get("recipe", {})))
        was, now = ({k: r.get(k, defaults.get(k)) for k in keys} for r in (old.get("recipe", {}), study["recipe"]))
        was.update({k: old.get(k, "classification" if k == "task" else None) for k in fixed})
        now.update({k: study[k] for k in fixed})
        differ = [f"{k}: {was[k]!r} -> {now[k]!r}" for k in dict.fromkeys([*keys, *fixed]) if was[k] != now[k]]
        if differ:
            raise ValueError(f"{out} holds a study with another recipe or {'/'.join(fixed)} ({', '.join(differ)}); "
                             "use a new --out folder (finished runs are never overwritten)")
    atomic_write_text(p, json.dumps(study, indent=2))


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """(difference of means, standard error of the difference); se NaN with fewer than 2 seeds per arm."""
    d = float(np.mean(a) - np.mean(b))
    if len(a) < 2 or len(b) < 2:
        return d, float("nan")
    return d, math.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b))


def paired_deltas(runs: list[dict[str, Any]], base_runs: list[dict[str, Any]], metric: Metric = top1) -> dict[str, Any]:
    """Per-seed differences of ``metric`` to the baseline run of the same seed.

    Returns ``{"per_seed": {seed: Δ}, "mean": mean Δ, "se": std(Δ)/sqrt(n) (NaN below 2 pairs), "better": k}``;
    seeds missing from either arm are left out.
    """
    base = {r["seed"]: metric(r) for r in base_runs}
    per_seed = {r["seed"]: metric(r) - base[r["seed"]] for r in runs if r["seed"] in base}
    d = np.array(list(per_seed.values()), dtype=float)
    return dict(per_seed=per_seed, mean=float(d.mean()) if d.size else float("nan"),
                se=float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else float("nan"),
                better=int((d > 0).sum()))


def paired_cells(p: dict[str, Any]) -> dict[str, str]:
    """Display cells of :func:`paired_deltas`: mean ± SE and how many seeds were better."""
    se = "n/a" if p["se"] != p["se"] else f"{p['se']:.2f}"
    return {"paired": f"{p['mean']:+.2f} ± {se}", "better": f"{p['better']} of {len(p['per_seed'])} seeds"}


def per_seed_table(variants: Sequence[str], seeds: Sequence[int], results: dict[str, list[dict[str, Any]]],
                   metric: Metric = top1) -> str:
    """Markdown: the metric per seed with its difference to the same seed's baseline, and the paired mean Δ."""
    cols = ["variant"] + [f"seed {s}" for s in seeds] + ["paired", "better"]
    rows = []
    for v in variants:
        by_seed = {r["seed"]: metric(r) for r in results[v]}
        p = paired_deltas(results[v], results["none"], metric)
        row: dict[str, Any] = {"variant": v}
        for s in seeds:
            if s not in by_seed:
                continue
            d = "" if v == "none" or s not in p["per_seed"] else f" ({p['per_seed'][s]:+.2f})"
            row[f"seed {s}"] = f"{by_seed[s]:.2f}{d}"
        if v != "none" and p["per_seed"]:
            row.update(paired_cells(p))
        rows.append(row)
    return to_markdown(rows, cols, {"paired": "paired Δ (mean ± SE)", "better": "better than none"})

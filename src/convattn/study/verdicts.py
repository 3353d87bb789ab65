"""What a study's report says: each arm's verdict against the baseline (Welch, and whether the baseline was still
rising), the metric cells and tables, the stacked-arm table and the figures. The loop that produces the runs is
:mod:`convattn.study.compare`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..models.plan import AttachPlan
from ..optional import require
from ..report import save_figure, to_markdown
from .stats import paired_cells, paired_deltas, welch

__all__ = ["Metric", "Results", "verdict", "training_progress", "verdict_note", "progress_line", "metric_row",
           "metric_columns", "metric_cells", "reference_cell", "stacked_table", "plot_study", "CONVERGING_GAIN",
           "REFERENCE_GAP", "CONVERGING_MEANS"]

Results = dict[str, list[dict[str, Any]]]  # variant -> its finished runs (final.json plus what the task adds)


@dataclass(frozen=True)
class Metric:
    """One number a study reports per run."""
    key: str  # column prefix in results.csv: top1 -> top1_mean, top1_std, top1_delta, ...
    label: str  # how the report names it, e.g. "top-1 %", "box AP"
    of: Callable[[dict[str, Any]], float]  # a run's summary (final.json) -> the value
    compared: bool = True  # also report std and the differences to the baseline (Welch and paired by seed)


def verdict(v: str, d: float, se: float) -> str:
    if v == "none":
        return "baseline"
    if se != se:
        return "n/a (1 seed)"
    return ("exceeds spread (better)" if d > 0 else "exceeds spread (worse)") if abs(d) > 2 * se else "within spread"


# The baseline "was still rising" when its primary metric gained more than this (points, mean over seeds) in its
# last epoch; without per-epoch values, when it ended more than REFERENCE_GAP points below the baseline of a
# longer reference study of the same model and data.
CONVERGING_GAIN = 0.5
REFERENCE_GAP = 2.0
CONVERGING_MEANS = "; a difference in how fast the arm learns, not where it ends"


def training_progress(base_runs: list[dict[str, Any]], metric: Metric, updates: int | None = None,
                      reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """How far the baseline's training got, from its runs' per-epoch ``curve`` of the primary metric.

    Returns ``updates`` (per run, as given), ``epochs``, ``gain`` (mean over seeds of the last epoch's change; None
    without two epochs per curve), ``gains`` (per seed), ``rising`` (True: still rising at the end, False: levelled
    off, None: unknown) and ``because`` (the evidence in words, for the verdict note).
    """
    curves = [r.get("curve") or [] for r in base_runs]
    epochs = max((len(c) for c in curves), default=0) or None
    if epochs is None and base_runs and base_runs[0].get("epochs") is not None:
        epochs = int(base_runs[0]["epochs"])
    out: dict[str, Any] = dict(updates=updates, epochs=epochs, gain=None, gains={}, rising=None, because="")
    if base_runs and all(len(c) >= 2 for c in curves):
        out["gains"] = {r["seed"]: float(c[-1] - c[-2]) for r, c in zip(base_runs, curves)}
        out["gain"] = float(np.mean(list(out["gains"].values())))
        out["rising"] = out["gain"] > CONVERGING_GAIN
        out["because"] = f"baseline {out['gain']:+.2f} points in its last epoch"
    elif base_runs and reference and reference.get("baseline") is not None:
        mean, ref, ref_updates = float(np.mean([metric.of(r) for r in base_runs])), reference["baseline"], \
            reference.get("updates")
        shorter = updates is not None and ref_updates is not None and updates < ref_updates
        if shorter and mean < ref - REFERENCE_GAP:
            out["rising"] = True
            out["because"] = (f"baseline {mean:.2f} vs {ref:.2f} in the {reference.get('short', reference['label'])}"
                              f" ({ref_updates:,} updates)")
    return out


def verdict_note(verdict: str, progress: dict[str, Any]) -> str:
    """What must stand next to an "exceeds spread" verdict of a study whose baseline was still rising ("" else)."""
    if not verdict.startswith("exceeds spread") or not progress.get("rising"):
        return ""
    n = progress.get("updates")
    return ("still converging: " + (f"{n:,} updates, " if n is not None else "") + progress["because"]
            + CONVERGING_MEANS)


def progress_line(progress: dict[str, Any], label: str) -> str:
    """The report's sentence on how far training got."""
    n, ep = progress.get("updates"), progress.get("epochs")
    got = ", ".join(x for x in ((f"{n:,} updates per run" if n is not None else ""),
                                (f"{ep} epoch{'s' if ep != 1 else ''}" if ep else "")) if x) or "unknown length"
    text = f"Training progress: {got}."
    if progress.get("gain") is not None:
        seeds = ", ".join(f"{g:+.2f}" for g in progress["gains"].values())
        text += (f" The baseline's {label} changed by {progress['gain']:+.2f} points in its last epoch (mean over "
                 f"seeds; per seed {seeds}): ")
        text += ("still rising at the end, so the arms were still converging and the differences below are measured "
                 "part-way through training, not at convergence." if progress["rising"] else
                 f"levelled off (within {CONVERGING_GAIN:g} points).")
    elif progress.get("rising"):
        text += (f" Per-epoch values are not available; {progress['because']}: the arms were still converging, so "
                 "the differences below are measured part-way through training, not at convergence.")
    else:
        text += " Per-epoch values are not available: whether the baseline was still rising is not known."
    return text


def metric_row(v: str, runs: list[dict[str, Any]], base_runs: list[dict[str, Any]], metrics: Sequence[Metric]
                ) -> dict[str, Any]:
    """Mean, std and differences to the baseline of every metric of one arm (``seeds_done`` runs)."""
    row: dict[str, Any] = dict(variant=v, seeds_done=len(runs))
    if not runs:
        return dict(row, verdict="not run yet")
    for m in metrics:
        vals = [m.of(r) for r in runs]
        row[f"{m.key}_mean"] = float(np.mean(vals))
        if not m.compared:
            continue
        row[f"{m.key}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
        if v != "none":
            row[f"{m.key}_delta"], row[f"{m.key}_delta_se"] = welch(vals, [m.of(r) for r in base_runs])
            row[f"{m.key}_paired"] = paired_cells(paired_deltas(runs, base_runs, m.of))["paired"]
    p = metrics[0]  # the primary metric: the verdict and the per-seed values
    if p.compared:
        row["verdict"] = verdict(v, row.get(f"{p.key}_delta", 0.0), row.get(f"{p.key}_delta_se", float("nan")))
        row[f"{p.key}_per_seed"] = " ".join(f"{p.of(r):.2f}" for r in runs)
    return row


def metric_columns(metrics: Sequence[Metric]) -> tuple[list[str], list[str], dict[str, str]]:
    """(report columns, extra results.csv columns, headers) of the metrics: the primary one with its difference,
    SE and verdict; others with their difference when compared."""
    shown, extra, headers = [], [], {"seeds_done": "seeds"}
    for i, m in enumerate(metrics):
        k = m.key
        shown.append(f"{k}_mean")
        headers[f"{k}_mean"] = f"{m.label} (mean)"
        if m.compared:
            shown += [f"{k}_std", f"{k}_delta", f"{k}_delta_se"] + (["verdict"] if i == 0 else [])
            extra.append(f"{k}_paired")
            headers.update({f"{k}_std": "± std", f"{k}_delta": "Δ vs none" if i == 0 else f"Δ {m.label}",
                            f"{k}_delta_se": "SE(Δ)", "verdict": "Δ vs seed spread", f"{k}_paired": "paired Δ"})
    return shown, extra + [f"{metrics[0].key}_per_seed"], headers


def metric_cells(row: dict[str, Any], metrics: Sequence[Metric]) -> dict[str, Any]:
    """Display copy of a report row: the metrics and their differences with two decimals (differences signed), the
    verdict with its note, and the reference study's result for the arm."""
    out = dict(row)
    for m in metrics:
        for suffix in ("_mean", "_std", "_delta", "_delta_se"):
            v = row.get(m.key + suffix)
            if isinstance(v, float) and v == v:
                out[m.key + suffix] = f"{v:+.2f}" if suffix == "_delta" else f"{v:.2f}"
    if row.get("verdict_note"):
        out["verdict"] = f"{row['verdict']} — {row['verdict_note']}"
    out["reference"] = reference_cell(row)
    return out


def reference_cell(row: dict[str, Any]) -> str:
    """The reference study's result for one arm: its mean for the baseline, else Δ vs its baseline and verdict."""
    mean, delta = row.get("reference_mean"), row.get("reference_delta")
    if row.get("variant") == "none":
        return f"{mean:.2f}" if mean is not None else ""
    if delta is None:
        return "not in it"
    return f"{delta:+.2f}" + (f", {row['reference_verdict']}" if row.get("reference_verdict") else "")


def stacked_table(variants: list[str], seeds: Sequence[int], results: Results, metric: Metric) -> str:
    """Markdown: each stacked arm (``a+b``) against each of its parts that the study also trained, paired by seed.

    Empty when the study has no stacked arm with a trained part.
    """
    cols = ["arm", "vs"] + [f"Δ seed {s}" for s in seeds] + ["paired", "better"]
    rows = []
    for v in variants:
        plan = AttachPlan.parse(v)
        for part in (plan.modules if len(plan.modules) > 1 else ()):
            if part not in results or not results[part] or not results[v]:
                continue
            p = paired_deltas(results[v], results[part], metric.of)
            if p["per_seed"]:
                rows.append({"arm": v, "vs": part, **{f"Δ seed {s}": f"{d:+.2f}" for s, d in p["per_seed"].items()},
                             **paired_cells(p)})
    return to_markdown(rows, cols, {"paired": "paired Δ (mean ± SE)"}) if rows else ""


def plot_study(out: Path, rows: list[dict[str, Any]], results: Results, metric: Metric,
           progress: dict[str, Any] | None = None, ref_label: str | None = None) -> list[str]:
    """The study's figures (written only when the study has what they show); their file names. The differences
    plot shows beside each arm the reference study's Δ (``reference_delta`` of its row, labelled ``ref_label``) and
    says in its title when the baseline was still rising (``progress``)."""
    matplotlib = require("matplotlib", "plots", "a study's figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    mean, std = f"{metric.key}_mean", f"{metric.key}_std"
    done = [r for r in rows if r.get(mean) is not None]
    for key, label, name in (("gmacs", "GMACs (dispatch counter, 10^9 multiply-accumulates)", "acc_vs_macs.png"),
                             ("latency_ratio", "forward latency / plain model (same run)", "acc_vs_latency.png")):
        if not any(r.get(key) is not None for r in done):
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for r in done:
            if r.get(key) is None:
                continue
            ax.errorbar(r[key], r[mean], yerr=r[std] if r.get(std) == r.get(std) else None, fmt="o", capsize=3)
            ax.annotate(r["variant"], (r[key], r[mean]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel(f"{metric.label}, mean ± std over seeds")
        save_figure(fig, out / name)
        written.append(name)
    pairs = {v: paired_deltas(results[v], results["none"], metric.of) for v in results if v != "none"}
    arms = [v for v, p in pairs.items() if p["per_seed"]]
    if arms:
        refs = {r["variant"]: r["reference_delta"] for r in rows if r.get("reference_delta") is not None}
        fig, ax = plt.subplots(figsize=(6.4, 1.5 + 0.42 * len(arms)))
        for i, v in enumerate(arms):
            p = pairs[v]
            ax.plot(list(p["per_seed"].values()), [i] * len(p["per_seed"]), "o", color="0.6", ms=4,
                    label="seeds" if i == 0 else None)
            ax.errorbar(p["mean"], i, xerr=p["se"] if p["se"] == p["se"] else None, fmt="D", color="C0", capsize=3,
                        label="this study: mean ± SE" if i == 0 else None)
        for n, (i, v) in enumerate((i, v) for i, v in enumerate(arms) if v in refs):
            ax.plot(refs[v], i, "s", mfc="none", mec="C1", ms=8, mew=1.5, label=ref_label if n == 0 else None)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(arms)), arms)
        ax.invert_yaxis()
        ax.set_xlabel(f"{metric.label} − baseline of the same seed")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22 - 0.5 / (len(arms) + 1)), ncol=3,
                  frameon=False)
        if progress and progress.get("rising"):
            n = progress.get("updates")
            ax.set_title((f"after {n:,} updates; " if n else "") + "the baseline was still rising: these differences "
                         "are learning speed, not final accuracy", fontsize=8)
        save_figure(fig, out / "delta_vs_none.png")
        written.append("delta_vs_none.png")
    curves = {v: [r["curve"] for r in runs if r.get("curve")] for v, runs in results.items()}
    if any(curves.values()):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for v, runs in curves.items():
            n = min((len(r) for r in runs), default=0)
            if n:
                ax.plot(range(1, n + 1), np.mean([r[:n] for r in runs], 0), "o-", label=v)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{metric.label}, mean over seeds")
        ax.legend(fontsize=8)
        save_figure(fig, out / "curves.png")
        written.append("curves.png")
    return written

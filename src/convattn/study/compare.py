"""``convattn compare``, for every task: train a baseline and attention variants under one recipe and several seeds,
then report the task's metrics (mean ± std over seeds, differences to the baseline by Welch and paired by seed),
what each arm costs, per-seed tables and plots.

A task plugs in with a :class:`StudyTask` (classification: ``study.classification``; detection and instance
segmentation: ``study.detection``): how one run trains, its metrics, its recipe and its cost columns. The loop over
variants and seeds, resumption, the recipe check of the folder and the report are written once here; the verdicts,
tables and figures the report is made of are :mod:`convattn.study.verdicts`.

Resumable: finished runs (``final.json``) are read back, unfinished ones resume from their last epoch checkpoint,
and the report is rebuilt from whatever has finished. All files are written atomically.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import torch

from ..models.plan import canonical_variants
from ..optional import require
from ..engine.checkpoint import run_lock
from ..report import atomic_write_text, print_table, to_markdown, write_csv
from .executors import RUN_ERROR, RUN_INFO, RUN_LOG, ExecutorConfig, error_line, make_executor, run_unit
from .progress import StudyProgress
from .stats import check_study, per_seed_table, slug
from .verdicts import (CONVERGING_GAIN, CONVERGING_MEANS, REFERENCE_GAP, Metric, Results, metric_cells,
                       metric_columns, metric_row, plot_study, progress_line, stacked_table, training_progress,
                       verdict_note)

__all__ = ["Metric", "Results", "StudyTask", "run_study", "environment", "study_lock", "RunsFailed", "as_executor",
           "training_progress", "verdict_note", "CONVERGING_GAIN", "CONVERGING_MEANS"]


class StudyTask(Protocol):
    """What a task supplies to a study; everything else is shared."""

    name: str  # "classification", "detection": stored in study.json, a folder holds one task's study
    title: str  # report heading
    metrics: Sequence[Metric]  # the first is the primary one: verdict, plots, stacked-arm table

    def fixed_settings(self) -> dict[str, Any]:
        """study.json keys besides the recipe that a folder's study may not change (e.g. the model)."""

    def recipe(self) -> dict[str, Any]:
        """The resolved recipe every arm shares; a folder keeps one recipe."""

    def recipe_defaults(self) -> dict[str, Any]:
        """Values of recipe keys that an older study.json predates."""

    def train(self, variant: str, seed: int, run_dir: Path) -> dict[str, Any]:
        """Train (or resume) one run in ``run_dir``; its final summary (also written to final.json). Called wherever
        the executor runs it (the task is pickled); outside this process ``run_dir`` exists already (the study
        records in it where the run runs and its log)."""

    def read_run(self, final: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        """A finished run as the study uses it: final.json plus what the task adds (e.g. ``curve``: the primary
        metric per epoch)."""

    def columns(self, variants: list[str], results: Results, out: Path) -> tuple[dict[str, dict[str, Any]],
                                                                                 list[str], dict[str, str]]:
        """Cost columns per variant (parameters, MACs, latency, training time), their order and headers."""

    def describe(self, results: Results, seeds: Sequence[int]) -> str:
        """The recipe line of the report (from the resolved configuration, never fixed text)."""

    def notes(self) -> list[str]:
        """Bullets under the main table: what the task's columns mean and how they were measured."""

    # Optional (a task without them reports no update count / no reference column):
    #   updates_per_run(results) -> int | None: optimizer updates of one run of this study.
    #   reference() -> dict | None: a longer study of the same model and data to state beside each arm, with keys
    #     label (how the report names it; short: in running text), updates (per run, or None), baseline (its
    #     baseline's primary metric), arms ({variant: {"mean", "delta", "delta_se", "verdict"}}, arms it lacks
    #     left out) and note (one bullet).


def environment() -> dict[str, str]:
    import timm
    return {"torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
            "machine": f"{platform.machine()} {platform.processor()}".strip(), "cpu_threads": str(torch.get_num_threads()),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else "none"}


def _runs_from_csv(path: Path, variants: Sequence[str], seeds: Sequence[int]) -> Results:
    """The finished runs of a study as its ``runs.csv`` recorded them (numbers parsed back; no per-epoch curve)."""
    def value(x: str) -> Any:
        if x == "":
            return None
        for kind in (int, float):
            try:
                return kind(x)
            except ValueError:
                pass
        return x

    results: Results = {v: [] for v in variants}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            r = {k: value(x) for k, x in row.items()}
            if r.get("variant") in results and r.get("seed") in seeds:
                results[r["variant"]].append(r)
    for v in results:
        results[v].sort(key=lambda r: list(seeds).index(r["seed"]))
    return results


class RunsFailed(RuntimeError):
    """Some runs of a study failed; the others finished and the report names the failed ones. ``rows``: the
    report's rows, ``failures``: one dict per failed run (variant, seed, error, log)."""

    def __init__(self, message: str, rows: list[dict[str, Any]], failures: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.rows, self.failures = rows, failures


_HELD: dict[str, int] = {}  # study folders this process holds the lock of (nested holders share it)


@contextlib.contextmanager
def study_lock(out: str | Path) -> Iterator[None]:
    """Own the study folder ``out`` while a study runs in it: one ``flock`` on ``out/.lock`` for the process that
    submits the runs, whatever executes them (a second study command on the folder is refused with the owner's
    pid; ``--report-only`` does not lock). Each run also locks its own folder while it writes it."""
    key = str(Path(out).resolve())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    with run_lock(out):
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]


def as_executor(executor: Any, runs: int, threads: int | None, out: str | Path, parallel: bool = False,
                sized_lanes: int | None = None) -> tuple[Any, int | None, bool]:
    """(executor, torch threads per run, whether the study owns it and shuts it down) for ``executor``: None or a
    name (``local``, ``processes``, ``ray``, ``slurm``, ``auto``: see :func:`~convattn.study.executors.resolve_auto`
    for ``parallel`` and ``sized_lanes``), an :class:`ExecutorConfig`, or anything with ``submit`` (a
    ``concurrent.futures`` executor; its runs take ``threads`` threads)."""
    if executor is None:
        executor = "local"
    if isinstance(executor, str):
        executor = ExecutorConfig(executor=executor)
    if isinstance(executor, ExecutorConfig):
        ex = make_executor(executor, runs, threads, out, parallel, sized_lanes)
        return ex, getattr(ex, "threads", threads), True
    if not callable(getattr(executor, "submit", None)):
        raise TypeError(f"executor must be a name, an ExecutorConfig or have submit(fn, *args), got {executor!r}")
    return executor, getattr(executor, "threads", threads), False


def _failure(variant: str, seed: int, run_dir: Path, e: BaseException) -> dict[str, Any]:
    log = run_dir / RUN_LOG
    err = run_dir / RUN_ERROR
    return dict(variant=variant, seed=seed, error=error_line(e), exception=e,
                log=str(log) if log.exists() else (str(err) if err.exists() else ""))


def _run_threads(run_dir: Path) -> int | None:
    try:
        t = json.loads((run_dir / RUN_INFO).read_text()).get("threads")
        return int(t) if t is not None else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _train_runs(task: StudyTask, units: list[tuple[str, int, Path]], executor: Any, threads: int | None,
                progress: StudyProgress) -> list[dict[str, Any]]:
    """Submit every unit (variant, seed, run folder) to ``executor`` and wait for all of them; the failures (each
    named with its variant, seed, last error line and log), in the order of ``units``."""
    # a run's output goes to its log.txt where it runs in another process (not in a thread of this one)
    capture = bool(getattr(executor, "capture", isinstance(executor, cf.ProcessPoolExecutor)))
    name = str(getattr(executor, "name", type(executor).__name__))
    futures: dict[cf.Future, tuple[str, int, Path]] = {}
    failures: dict[tuple[str, int], dict[str, Any]] = {}

    def collect(done: Sequence[cf.Future]) -> None:
        for f in done:
            v, seed, run_dir = futures.pop(f)
            e = f.exception()
            if e is not None:
                failures[(v, seed)] = _failure(v, seed, run_dir, e)
            progress.finished(v, seed, None if e is None else failures[(v, seed)]["error"])

    try:
        with getattr(executor, "batch", contextlib.nullcontext)():
            for v, seed, run_dir in units:
                f = executor.submit(run_unit, task, v, seed, str(run_dir), threads, capture, name)
                futures[f] = (v, seed, run_dir)
                collect([f] if f.done() else [])  # an in-process executor has finished it already
        while futures:
            done, _ = cf.wait(list(futures), timeout=progress.interval, return_when=cf.FIRST_COMPLETED)
            collect(list(done))
            progress.refresh()
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    return [failures[(v, s)] for v, s, _ in units if (v, s) in failures]


def run_study(task: StudyTask, variants: Sequence[str], seeds: Sequence[int], out: str | Path,
              command: str | None = None, report_only: bool = False, executor: Any = None,
              threads: int | None = None) -> list[dict[str, Any]]:
    """Run (or continue) the study of ``task`` and write ``report.md``, ``results.csv``, ``runs.csv`` and plots.

    ``none`` (the baseline) is always an arm and comes first. Every run not finished yet is submitted to
    ``executor`` as one unit of work (see :func:`as_executor`; default: in this process, one after another), with
    ``threads`` torch threads (None: the executor's share); the report is built from the run folders. A run that
    fails is named in the report while the others finish, then :class:`RunsFailed` is raised (when no baseline run
    finished at all, the first failure's own error). With ``report_only`` nothing trains and nothing is locked:
    the report is built from the runs finished so far and says it is partial. Returns the report's rows, one per
    variant.
    """
    t_start = time.perf_counter()
    require("matplotlib", "plots", "a study's figures")  # before any training, not after it
    variants = [p.name for p in canonical_variants(variants)]  # one arm per canonical name, "none" first
    if not seeds:
        raise ValueError("compare needs at least one seed")
    out = Path(out)
    if report_only:
        return _report(task, variants, seeds, out, command, report_only, [], None, t_start)
    out.mkdir(parents=True, exist_ok=True)
    with study_lock(out):
        units = [(v, seed, out / "runs" / slug(v) / f"seed{seed}") for seed in seeds for v in variants]
        todo = [u for u in units if not (u[2] / "final.json").exists()]
        # before any executor starts: a folder holding another study is refused before anything trains
        _report_start(task, variants, seeds, out, command, None)
        ex, per_run, owned = as_executor(executor, len(units), threads, out) if todo else (None, threads, False)
        failures: list[dict[str, Any]] = []
        try:
            label = ex.describe() if callable(getattr(ex, "describe", None)) else type(ex).__name__
            if getattr(ex, "auto_reason", ""):
                label += f"; {ex.auto_reason}"
            if todo:
                epochs = getattr(getattr(task, "base", None), "epochs", None)
                progress = StudyProgress(units, todo, epochs, getattr(ex, "lanes", 1), label)
                with progress:
                    failures = _train_runs(task, todo, ex, per_run, progress)
        finally:
            if owned and ex is not None:
                ex.shutdown(wait=True)
        return _report(task, variants, seeds, out, command, False, failures, label if todo else None, t_start)


def _study_record(task: StudyTask, variants: list[str], seeds: Sequence[int], command: str | None,
                  executor: str | None) -> dict[str, Any]:
    env = environment()
    if executor:
        env["executor"] = executor
    return dict(task=task.name, **task.fixed_settings(), variants=variants, seeds=list(seeds), recipe=task.recipe(),
                command=command or "convattn " + shlex.join(sys.argv[1:]), environment=env)


def _report_start(task: StudyTask, variants: list[str], seeds: Sequence[int], out: Path, command: str | None,
                  executor: str | None) -> None:
    """``study.json`` written (or checked against the folder's study) before the first run."""
    check_study(out, _study_record(task, variants, seeds, command, executor), task.recipe_defaults(),
                fixed=("task", *task.fixed_settings()))


def _report(task: StudyTask, variants: list[str], seeds: Sequence[int], out: Path, command: str | None,
            report_only: bool, failures: list[dict[str, Any]], executor: str | None,
            t_start: float) -> list[dict[str, Any]]:
    """The report of the runs finished in ``out`` (and of ``failures``, the runs that failed in this call)."""
    study = _study_record(task, variants, seeds, command, executor)
    if report_only:
        if not (out / "study.json").exists():
            raise FileNotFoundError(f"--report-only: no study in {out} (study.json missing); run compare without it first")
        stored = json.loads((out / "study.json").read_text())
        study["command"] = stored.get("command", study["command"])
        study["environment"] = stored.get("environment", study["environment"])  # where the runs ran, not the report
    check_study(out, study, task.recipe_defaults(), fixed=("task", *task.fixed_settings()))
    results: Results = {v: [] for v in variants}
    from_csv = report_only and not any((out / "runs").glob("*/seed*/final.json")) and (out / "runs.csv").exists()
    if from_csv:  # a study folder kept without its run folders (as committed): the runs as runs.csv recorded them
        results = _runs_from_csv(out / "runs.csv", variants, seeds)
    for seed in ([] if from_csv else seeds):  # seed-major: an interrupted study has complete seeds first
        for v in variants:
            run_dir = out / "runs" / slug(v) / f"seed{seed}"
            try:
                final = json.loads((run_dir / "final.json").read_text())
            except (FileNotFoundError, NotADirectoryError):
                continue
            n = _run_threads(run_dir)
            if n is not None:
                final["threads"] = n
            results[v].append(task.read_run({**final, "seed": seed}, run_dir))
    if not results["none"] and failures:
        raise failures[0]["exception"]  # (the first failure's own error: a bad input fails every run alike)
    if not results["none"]:
        raise RuntimeError(f"no finished baseline run in {out} yet: nothing to compare against")
    metrics = task.metrics
    cost, cost_cols, cost_headers = task.columns(variants, results, out)
    rows = [{**metric_row(v, results[v], results["none"], metrics), **cost.get(v, {})} for v in variants]
    ref = task.reference() if callable(getattr(task, "reference", None)) else None
    updates = task.updates_per_run(results) if callable(getattr(task, "updates_per_run", None)) else None
    progress = training_progress(results["none"], metrics[0], updates, ref)
    for r in rows:
        r["verdict_note"] = verdict_note(r.get("verdict", ""), progress)
        if ref and r["variant"] in ref["arms"]:
            a = ref["arms"][r["variant"]]
            r.update(reference_mean=a.get("mean"), reference_delta=a.get("delta"),
                     reference_verdict=a.get("verdict"))
    shown_cols, extra_cols, headers = metric_columns(metrics)
    ref_cols = ["reference_mean", "reference_delta", "reference_verdict"] if ref else []
    if ref:  # beside the verdict: the same arm in the longer study
        at = shown_cols.index("verdict") + 1 if "verdict" in shown_cols else len(shown_cols)
        shown_cols = shown_cols[:at] + ["reference"] + shown_cols[at:]
        headers["reference"] = f"{ref['label']}: Δ vs none"
    columns = ["variant", "seeds_done"] + shown_cols + cost_cols
    headers.update(cost_headers)
    write_csv(out / "results.csv", rows, [c for c in columns if c != "reference"] + extra_cols + ["verdict_note"]
              + ref_cols)
    scalars = [k for k, x in results["none"][0].items() if isinstance(x, (int, float, str))]
    if not from_csv:  # (rebuilt from runs.csv: that file is the record and stays as it is)
        write_csv(out / "runs.csv", [{"variant": v, "seed": r["seed"], **{m.key: m.of(r) for m in metrics},
                                      **{k: r.get(k) for k in scalars if k not in ("variant", "seed")}}
                                     for v in variants for r in results[v]])
    plots = plot_study(out, rows, results, metrics[0], progress, ref["label"] if ref else None)
    n_done, n_all = sum(len(r) for r in results.values()), len(variants) * len(seeds)
    shown = [metric_cells(r, metrics) for r in rows]
    partial = ([f"**Partial study: {n_done} of {n_all} runs finished.** Rerun the command to continue; finished "
                "runs are kept and unfinished ones resume from their last epoch.", ""] if n_done < n_all else [])
    if from_csv:
        partial += ["Rebuilt from runs.csv: this folder keeps no run folders, so the per-epoch values (curves, the "
                    "last epoch's gain) are not available.", ""]
    per_seed = []
    for m in (m for m in metrics if m.compared):
        per_seed += [f"## Per seed: {m.label}" if len(metrics) > 1 else "## Per seed", "",
                     per_seed_table(variants, list(seeds), results, m.of), ""]
    stacked = stacked_table(variants, list(seeds), results, metrics[0])
    wall = time.perf_counter() - t_start
    md = [f"# {task.title}", "", *partial,
          f"Command: `{study['command']}`", "",
          task.describe(results, seeds), "",
          progress_line(progress, metrics[0].label), "",
          "Environment: " + ", ".join(f"{k} {v}" for k, v in study["environment"].items()), "",
          _threads_line(results), "",
          *_failures_section(failures),
          to_markdown(shown, columns, headers), "",
          *task.notes(),
          *([ref["note"]] if ref and ref.get("note") else []),
          f"* Verdicts marked \"still converging\": the baseline was still rising when training stopped (it gained "
          f"more than {CONVERGING_GAIN:g} points in its last epoch, or, without per-epoch values, ended more than "
          f"{REFERENCE_GAP:g} points below the reference study's baseline), so such a difference says how fast an arm "
          "learns in this short run, not where it ends.",
          "* Δ vs none: difference of means; SE(Δ) = sqrt(s²/n + s₀²/n₀) (Welch). \"exceeds spread\" means "
          "|Δ| > 2·SE(Δ); with few seeds this is a rough screen, not a significance test.", "",
          "A seed fixes the data order and augmentation for every arm, so each arm is also compared with the "
          "baseline run of the same seed: Δ in brackets, then the mean of those paired differences with its "
          "standard error std(Δ)/√n.", "",
          *per_seed,
          *(["Stacked arms against their parts (same pairing by seed):", "", stacked, ""] if stacked else []),
          ("Rebuilt with --report-only: nothing was trained in this invocation." if report_only else
           f"Wall time of this invocation: {wall:.0f} s (finished runs read back are not re-timed)."), "",
          *([f"Plots: {', '.join(plots)}."] if plots else [])]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    print_table(shown, columns, headers, title=f"{task.title} ({wall:.0f} s)")
    print(f"report: {out / 'report.md'}")
    if failures:
        f0 = failures[0]
        raise RunsFailed(f"{len(failures)} of {n_all} runs failed (the others finished; {out / 'report.md'} names "
                         f"them): {f0['variant']} seed {f0['seed']}: {f0['error']}" + (f" (log: {f0['log']})"
                                                                                          if f0['log'] else "")
                         + "; rerun the command to retry them", rows, failures)
    return rows


def _threads_line(results: Results) -> str:
    """The report's line on the torch threads each run used: a run's numbers at the same seed depend on it."""
    counts: dict[Any, int] = {}
    for runs in results.values():
        for r in runs:
            counts[r.get("threads")] = counts.get(r.get("threads"), 0) + 1
    known = {k: n for k, n in counts.items() if k is not None}
    text = "Threads per run (torch CPU threads; at the same seed a run's numbers depend on them): "
    if not known:
        return text + "not recorded (runs trained before convattn recorded them)."
    parts = [f"{k} ({n} run{'s' if n != 1 else ''})" for k, n in sorted(known.items())]
    if None in counts:
        parts.append(f"not recorded ({counts[None]} runs)")
    return text + ", ".join(parts) + ("." if len(parts) == 1 else "; the runs differ, so compare them with care.")


def _failures_section(failures: list[dict[str, Any]]) -> list[str]:
    """Markdown naming each run that failed in this invocation (arm, seed, last line of its error, its log)."""
    if not failures:
        return []
    rows = [dict(arm=f["variant"], seed=f["seed"], error=f["error"].replace("|", "\\|"), log=f["log"])
            for f in failures]
    return [f"**Failed runs: {len(failures)}** (rerun the command to retry them; finished runs are kept and "
            "unfinished ones resume from their last epoch):", "", to_markdown(rows, ["arm", "seed", "error", "log"]),
            ""]

"""The progress view of a study: every run (done / running / queued / failed), its epoch and the time left, read
from the run folders (``run.json``, ``checkpoints/latest.json``) wherever the runs execute. On a terminal it is a
live table (rich); without one, one line per finished run."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["StudyProgress"]


def _epoch(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "checkpoints" / "latest.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _info(run_dir: Path) -> dict[str, Any]:
    try:
        d = json.loads((run_dir / "run.json").read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _clock(s: float | None) -> str:
    if s is None:
        return ""
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class StudyProgress:
    """What a study's runs are doing. ``units``: every run (variant, seed, folder); ``todo``: those this call
    trains; ``epochs``: epochs per run (None: unknown); ``lanes``: runs in parallel."""

    def __init__(self, units: Sequence[tuple[str, int, Path]], todo: Sequence[tuple[str, int, Path]],
                 epochs: int | None, lanes: int, label: str, live: bool | None = None) -> None:
        self.units, self.epochs, self.lanes, self.label = list(units), epochs, max(1, int(lanes)), label
        self.state = {(v, s): ("queued" if (v, s, d) in todo else "done") for v, s, d in units}
        self.dirs = {(v, s): d for v, s, d in units}
        self.t0 = time.time()
        self.first_epoch: dict[tuple[str, int], tuple[int, float]] = {}  # epoch and time a run was first seen at
        self.run_s: list[float] = []  # wall time of the runs finished in this call
        self.errors: dict[tuple[str, int], str] = {}
        self.n_todo = len(todo)
        self.live_view = (sys.stdout.isatty() and lanes > 1) if live is None else live
        self.interval = 1.0 if self.live_view else 5.0
        self._live: Any = None

    def __enter__(self) -> "StudyProgress":
        print(f"{self.n_todo} of {len(self.units)} runs to train on {self.label}", flush=True)
        if self.live_view:
            from rich.live import Live
            self._live = Live(self.table(), refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self.table())
            self._live.__exit__(*exc)
            self._live = None

    def _row(self, key: tuple[str, int]) -> dict[str, Any]:
        """state, epoch, elapsed and time left of one run."""
        d, state = self.dirs[key], self.state[key]
        row = dict(variant=key[0], seed=key[1], state=state, epoch="", elapsed=None, eta=None)
        if state in ("queued", "running"):
            info = _info(d)
            if info.get("state") == "running" and float(info.get("started", 0)) >= self.t0 - 1:
                state = row["state"] = "running"
                self.state[key] = "running"
                ep, now = _epoch(d), time.time()
                first = self.first_epoch.setdefault(key, (ep, float(info["started"])))
                row["elapsed"] = now - float(info["started"])
                if self.epochs:
                    row["epoch"] = f"{ep}/{self.epochs}"
                    if ep > first[0]:
                        row["eta"] = (now - first[1]) / (ep - first[0]) * (self.epochs - ep)
        elif state == "done" and self.epochs:
            row["epoch"] = f"{self.epochs}/{self.epochs}"
        return row

    def eta(self, rows: list[dict[str, Any]]) -> float | None:
        """Seconds until the whole study ends: the runs left, spread over the lanes."""
        running = [r for r in rows if r["state"] == "running"]
        queued = sum(r["state"] == "queued" for r in rows)
        if any(r["eta"] is None for r in running):
            return None
        # a queued run takes as long as the runs finished in this call, else as the running ones will in all
        whole = self.run_s or [r["elapsed"] + r["eta"] for r in running]
        if queued and not whole:
            return None
        per_run = sum(whole) / len(whole) if whole else 0.0
        return (sum(r["eta"] for r in running) + queued * per_run) / self.lanes

    def table(self) -> Any:
        from rich.table import Table
        rows = [self._row(k) for k in self.state]
        counts = {s: sum(r["state"] == s for r in rows) for s in ("done", "running", "queued", "failed")}
        eta = self.eta(rows)
        t = Table(title=f"study: {counts['done']} done, {counts['running']} running, {counts['queued']} queued"
                        + (f", {counts['failed']} failed" if counts["failed"] else "")
                        + f" | {_clock(time.time() - self.t0)} elapsed"
                        + (f", about {_clock(eta)} left" if eta is not None else ""), title_justify="left")
        for c in ("arm", "seed", "state", "epoch", "elapsed", "left"):
            t.add_column(c, justify="left" if c in ("arm", "state") else "right")
        for r in rows:
            state = r["state"] if r["state"] != "failed" else f"failed: {self.errors.get((r['variant'], r['seed']), '')}"
            t.add_row(r["variant"], str(r["seed"]), state[:60], r["epoch"], _clock(r["elapsed"]), _clock(r["eta"]))
        return t

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.table())

    def finished(self, variant: str, seed: int, error: str | None) -> None:
        """A run ended (``error``: the last line of its failure, None when it finished)."""
        key = (variant, seed)
        info = _info(self.dirs[key])
        started = float(info.get("started", self.t0))
        if error is None and started >= self.t0 - 1:
            self.run_s.append(time.time() - started)
        self.state[key] = "done" if error is None else "failed"
        if error is not None:
            self.errors[key] = error
        if self._live is not None:
            self._live.update(self.table())
            return
        n = sum(s in ("done", "failed") for s in self.state.values()) - (len(self.units) - self.n_todo)
        what = "done" if error is None else "FAILED"
        extra = ""
        if error is None:
            parts = []
            try:
                top1 = json.loads((self.dirs[key] / "final.json").read_text()).get("val_top1")
                if isinstance(top1, (int, float)):
                    parts.append(f"val top-1 {top1:.2f} %")
            except (OSError, ValueError, AttributeError):
                pass
            if info.get("threads"):
                parts.append(f"{info['threads']} thread{'s' if info['threads'] != 1 else ''}")
            extra = f" ({', '.join(parts)})" if parts else ""
        else:
            extra = f": {error}"
        print(f"run {n}/{self.n_todo} {what}: {variant} seed {seed}{extra} [{_clock(time.time() - self.t0)}]",
              flush=True)

"""Watching a study's run folders from a test: run a study in a thread, find a run that is part-way through
training (to kill, signal or take its node away while it runs), and read every run's numbers."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable


def final_numbers(final_json: Path) -> dict[str, Any]:
    """A run's ``final.json`` without what measures time (``*time_s``, ``*per_s``): what must be identical when the
    same run is trained elsewhere or resumed."""
    return {k: v for k, v in json.loads(Path(final_json).read_text()).items() if not k.endswith(("time_s", "per_s"))}


def run_numbers(out: Path) -> dict[str, dict[str, Any]]:
    """:func:`final_numbers` of every finished run of the study in ``out``, by ``runs/<arm>/seed<N>``."""
    out = Path(out)
    return {str(p.parent.relative_to(out)): final_numbers(p) for p in sorted(out.glob("runs/*/seed*/final.json"))}


def study_in_thread(study: Callable[[], list[dict[str, Any]]]) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``study`` (a ``run_compare`` call) in a thread; the dict gets ``seeds`` (each arm's seeds done) when it
    returns, or ``error`` (its repr) when it raises."""
    done: dict[str, Any] = {}

    def target() -> None:
        try:
            done["seeds"] = [r["seeds_done"] for r in study()]
        except BaseException as e:  # noqa: BLE001 - reported to the test
            done["error"] = repr(e)

    t = threading.Thread(target=target)
    t.start()
    return t, done


def wait_for_run_mid_training(out: Path, epochs: int, alive: Callable[[], bool], poll_s: float = 0.05
                              ) -> tuple[Path, dict, int] | None:
    """Poll ``out/runs/<arm>/seed<N>`` until one run is ``running`` with an epoch checkpoint at 1 ≤ epoch <
    ``epochs``; return its folder, its ``run.json`` and that epoch. None when ``alive()`` turns false first (the
    study ended before any run was caught part-way)."""
    out = Path(out)
    while alive():
        for d in sorted(out.glob("runs/*/seed*")):
            try:
                info = json.loads((d / "run.json").read_text())
                epoch = json.loads((d / "checkpoints" / "latest.json").read_text())["epoch"]
            except (OSError, ValueError, KeyError):  # not written yet, or being replaced
                continue
            if info.get("state") == "running" and 1 <= epoch < epochs:
                return d, info, epoch
        time.sleep(poll_s)
    return None

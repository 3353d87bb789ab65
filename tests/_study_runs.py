"""Watching a study's run folders from a test: find a run that is part-way through training, to kill, signal or
take its node away while it runs."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable


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

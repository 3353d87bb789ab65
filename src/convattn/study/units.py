"""The unit of work of a study: one run (arm x seed) executed wherever an executor sends it, with its thread
count pinned, its output in the run folder's log, and ``run.json`` recording where and how it ran (host, pid,
executor, GPU, Ray node, threads, attempts, state); a failure's traceback goes to ``error.txt``.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Iterator

from ..report import atomic_write_text

__all__ = ["run_unit", "error_line", "RUN_INFO", "RUN_LOG", "RUN_ERROR"]

RUN_INFO = "run.json"  # in each run folder: where and how the run executed (threads, host, attempts)
RUN_LOG = "log.txt"  # a run's own output when it ran outside this process
RUN_ERROR = "error.txt"  # the traceback of a failed run


# --------------------------------------------------------------------------------------------------------------
# The unit of work: one run, wherever it executes


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so also what C code prints) to ``path``
    (appended) for the duration; restored afterwards (a Ray or pool worker runs many units)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab", buffering=0) as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _read_info(run_dir: Path) -> dict[str, Any]:
    try:
        d = json.loads((run_dir / RUN_INFO).read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def run_unit(task: Any, variant: str, seed: int, run_dir: str, threads: int | None = None,
             capture: bool = False, executor: str = "local") -> dict[str, Any]:
    """Train (or resume) one run of a study: ``task.train(variant, seed, run_dir)``, with ``threads`` torch threads
    (None: as the process has them), its output in ``run_dir/log.txt`` when ``capture``.

    Records in ``run_dir/run.json`` where it ran (host, pid, executor, ``CUDA_VISIBLE_DEVICES``), the thread count
    it resolved to, its attempts and its state; a failure leaves its traceback in ``run_dir/error.txt`` and is
    raised. Returns the run's summary with ``threads`` added."""
    import torch
    path = Path(run_dir)
    # a run elsewhere needs its folder first (its log, its state for the progress view); in this process a new
    # run's folder is left to the task to make, as before, and its record is written when it ends
    early = capture or path.is_dir()
    if early:
        path.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(int(threads))
    before = _read_info(path)
    info = dict(variant=variant, seed=seed, state="running", executor=executor, host=socket.gethostname(),
                pid=os.getpid(), threads=torch.get_num_threads(),
                cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                node=_ray_node() if executor == "ray" else None,
                attempt=int(before.get("attempt", 0)) + 1, started=time.time(),
                log=str(path / RUN_LOG) if capture else None)
    if early:
        atomic_write_text(path / RUN_INFO, json.dumps(info, indent=2))
        (path / RUN_ERROR).unlink(missing_ok=True)
    try:
        with _output_to(path / RUN_LOG) if capture else contextlib.nullcontext():
            final = task.train(variant, seed, path)
    except BaseException as e:  # (SystemExit, KeyboardInterrupt: stopped from outside, e.g. requeued by Slurm)
        failed = isinstance(e, Exception)
        if path.is_dir():
            if failed:
                atomic_write_text(path / RUN_ERROR, "".join(traceback.format_exception(e)))
            atomic_write_text(path / RUN_INFO, json.dumps(dict(info, state="failed" if failed else "interrupted",
                                                               finished=time.time(), error=error_line(e)), indent=2))
        raise
    atomic_write_text(path / RUN_INFO, json.dumps(dict(info, state="done", finished=time.time(),
                                                       wall_s=round(time.time() - info["started"], 2)), indent=2))
    return {**final, "threads": info["threads"]}


def _ray_node() -> str | None:
    """The Ray node this process works on (a Ray task's run records it)."""
    try:
        import ray
        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - only a record
        return None


def error_line(e: BaseException | str) -> str:
    """The last non-empty line of an error (a worker's exception may carry its whole traceback in its text)."""
    text = e if isinstance(e, str) else (str(e) or type(e).__name__)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else type(e).__name__
    if not isinstance(e, str) and len(lines) <= 1 and not line.startswith(type(e).__name__):
        line = f"{type(e).__name__}: {line}"
    return line

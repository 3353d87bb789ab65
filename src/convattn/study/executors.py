"""Where a study's runs execute: one small interface and the executors convattn ships.

A study submits every run (arm x seed) as one unit of work to an *executor*: anything with
``submit(fn, *args) -> concurrent.futures.Future`` (a ``concurrent.futures`` executor works as it is). The files
are the record: each run writes its own folder atomically and the report is built from the folders, so an
executor only has to run ``fn`` somewhere that sees the study folder.

* ``local``: in this process, one run after another (the default; exactly the sequential study).
* ``processes``: a local pool of ``workers`` processes (spawned); on CPU the cores are split between them, with
  GPUs one GPU per worker (``devices``, ``CUDA_VISIBLE_DEVICES`` set per worker).
* ``ray``: Ray tasks with per-run resources (``num_cpus``, ``num_gpus``); joins a running cluster
  (``ray_address``) or starts a local one. Extra ``[ray]``.
* ``slurm``: submitit jobs, one job array per study (partition, time limit, GPUs per run, array parallelism); a
  preempted or timed-out run is requeued and resumes from its last epoch checkpoint. Extra ``[slurm]``.

Neither Ray nor submitit is imported unless its executor is made (:func:`make_executor`).
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import shutil
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

from ..validate import ConfigError, check_value, option
from .units import RUN_ERROR, RUN_INFO, RUN_LOG, error_line, run_unit

__all__ = ["EXECUTORS", "ExecutorConfig", "Executor", "LocalExecutor", "ProcessExecutor", "RayExecutor",
           "SlurmExecutor", "make_executor", "run_unit", "error_line", "check_executor", "resolve_lanes", "RUN_INFO",
           "RUN_LOG", "RUN_ERROR"]

EXECUTORS = ("auto", "local", "processes", "ray", "slurm")


@dataclass
class ExecutorConfig:
    """Where the runs of a study execute (``convattn compare --executor ...``)."""

    executor: str = option("auto", "where runs execute: local (in this process, one after another), processes "
                           "(a local process pool), ray (Ray tasks), slurm (submitit job array); auto: processes "
                           "for a classification study sized by its time budget on a CPU with 2 or more cores (one "
                           "1-thread worker per core), else local")
    workers: int | None = option(None, "runs in parallel (processes, ray); default: one per --devices GPU, else "
                                 "one per core")
    devices: str | None = option(None, "GPUs, one per worker, e.g. 0,1,2,3 (CUDA_VISIBLE_DEVICES of each worker)")
    ray_address: str | None = option(None, "Ray cluster to join: auto, ray://host:port (default: start a local one)")
    gpus_per_run: int | None = option(None, "ray/slurm: GPUs each run asks for (default: 1 when CUDA is available, "
                                      "else 0)")
    slurm_partition: str | None = option(None, "slurm: partition")
    slurm_time_min: int = option(24 * 60, "slurm: time limit of one job in minutes (a run that reaches it is "
                                 "requeued and resumes)")
    slurm_cpus_per_run: int | None = option(None, "slurm: CPUs per run (default: --threads or 8)")
    slurm_array_parallelism: int = option(64, "slurm: runs of the job array at once")
    slurm_folder: str | None = option(None, "slurm: submitit's log folder (default: <out>/slurm)")
    slurm_cluster: str | None = option(None, "slurm: submitit cluster (slurm; local runs the jobs as local "
                                       "subprocesses, for trying a study before a cluster)", ["slurm", "local"])


class Executor(Protocol):
    """What a study needs of an executor (``concurrent.futures.Executor`` has it)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> cf.Future: ...


# --------------------------------------------------------------------------------------------------------------
# Executors


class LocalExecutor:
    """In this process, one run after another: ``submit`` runs ``fn`` at once and returns its finished future."""

    name = "local"
    lanes = 1
    capture = False  # a run's output stays on this terminal, as it always did

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> cf.Future:
        f: cf.Future = cf.Future()
        f.set_running_or_notify_cancel()
        try:
            f.set_result(fn(*args))
        except Exception as e:  # noqa: BLE001 - the run's failure is the future's; KeyboardInterrupt stops the study
            f.set_exception(e)
        return f

    def shutdown(self, wait: bool = True) -> None:
        pass

    def describe(self) -> str:
        return "local (in this process, one run after another)"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _cpu_lanes(runs: int, threads: int | None) -> int:
    """Parallel runs on this machine's cores: one per ``threads`` cores (default 1), at least 1, at most ``runs``."""
    return max(1, min(runs, _cpu_count() // (threads or 1)))


def _pool_worker_init(slots: Any, threads: int) -> None:
    """A pool worker's set-up, before it runs anything: its GPU (one slot of ``slots``) and its thread count."""
    device = slots.get() if slots is not None else None
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch
    torch.set_num_threads(threads)


class ProcessExecutor:
    """A local pool of ``workers`` spawned processes, each pinned to ``threads`` torch threads and, with
    ``devices``, to one GPU (``CUDA_VISIBLE_DEVICES``). A worker that dies (killed, out of memory) breaks the
    pool: the pool is started again and the runs it took down are submitted once more (they resume from their last
    epoch checkpoint); a run that takes the pool down ``retries + 1`` times fails."""

    name = "processes"
    capture = True

    def __init__(self, workers: int, threads: int, devices: Sequence[str] | None = None, retries: int = 1) -> None:
        self.lanes, self.threads, self.devices, self.retries = workers, threads, list(devices or []), retries
        self._lock = threading.Lock()
        self._pool: cf.ProcessPoolExecutor | None = None
        self._generation = 0

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        import multiprocessing as mp
        ctx = mp.get_context("spawn")
        slots = None
        if self.devices:
            slots = ctx.Queue()
            for d in self.devices[:self.lanes]:
                slots.put(d)
        return cf.ProcessPoolExecutor(self.lanes, mp_context=ctx, initializer=_pool_worker_init,
                                      initargs=(slots, self.threads))

    def _pool_now(self) -> tuple[cf.ProcessPoolExecutor, int]:
        with self._lock:
            if self._pool is None:
                self._pool = self._new_pool()
                self._generation += 1
            return self._pool, self._generation

    def _broken(self, generation: int) -> None:
        with self._lock:
            if self._pool is not None and self._generation == generation:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> cf.Future:
        outer: cf.Future = cf.Future()
        self._submit(outer, fn, args, self.retries)
        return outer

    def _submit(self, outer: cf.Future, fn: Callable[..., Any], args: tuple, retries: int) -> None:
        from concurrent.futures.process import BrokenProcessPool
        pool, gen = self._pool_now()
        try:
            inner = pool.submit(fn, *args)
        except (BrokenProcessPool, RuntimeError):
            self._broken(gen)
            pool, gen = self._pool_now()
            inner = pool.submit(fn, *args)

        def done(f: cf.Future) -> None:
            if f.cancelled():
                outer.cancel()
                return
            e = f.exception()
            if isinstance(e, BrokenProcessPool):
                self._broken(gen)
                if retries > 0:
                    self._submit(outer, fn, args, retries - 1)
                    return
                e = RuntimeError("its worker process died (killed, or out of memory) while it ran; rerun the "
                                 "command to resume it from its last epoch checkpoint")
            if not outer.set_running_or_notify_cancel():
                return
            if e is not None:
                outer.set_exception(e)
            else:
                outer.set_result(f.result())
        inner.add_done_callback(done)

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=wait, cancel_futures=True)
                self._pool = None

    def describe(self) -> str:
        gpus = f", GPUs {','.join(self.devices)} (one per worker)" if self.devices else ""
        return (f"processes ({self.lanes} worker{'s' if self.lanes != 1 else ''} x {self.threads} "
                f"thread{'s' if self.threads != 1 else ''}{gpus})")


class RayExecutor:
    """Ray tasks, one per run, each asking for ``threads`` CPUs and ``gpus`` GPUs, retried ``max_retries`` times
    when its worker or node dies (the retry resumes from the last epoch checkpoint on the shared study folder).

    ``address``: a running cluster to join (``auto``, ``ray://host:port``); None starts a new local cluster of
    ``workers`` x ``threads`` CPUs, also when another Ray runs on this machine or ``RAY_ADDRESS`` names one (Ray's
    ``address="local"``; to join it, pass ``auto``). A Ray already initialised in this process is used as it is."""

    name = "ray"
    capture = True

    def __init__(self, workers: int, threads: int, gpus: int = 0, address: str | None = None,
                 max_retries: int = 3) -> None:
        from ..optional import require
        self.ray = require("ray", "ray", "--executor ray")
        self.lanes, self.threads, self.gpus, self.max_retries = workers, threads, gpus, max_retries
        self.address = address
        self._started = False
        if not self.ray.is_initialized():
            if address:
                self.ray.init(address=address, include_dashboard=False, log_to_driver=False)
            else:
                import torch
                self.ray.init(address="local", num_cpus=workers * threads,
                              num_gpus=torch.cuda.device_count() if gpus else 0, include_dashboard=False,
                              log_to_driver=False)
            self._started = True

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> cf.Future:
        remote = self.ray.remote(num_cpus=self.threads, num_gpus=self.gpus, max_retries=self.max_retries,
                                 retry_exceptions=False)(fn)
        return remote.remote(*args).future()

    def shutdown(self, wait: bool = True) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False

    def describe(self) -> str:
        where = f"cluster {self.address}" if self.address else "a local cluster"
        return (f"ray ({where}; {self.threads} CPU{'s' if self.threads != 1 else ''}"
                + (f" and {self.gpus} GPU{'s' if self.gpus != 1 else ''}" if self.gpus else "") + " per run)")


class _Requeueable:
    """A run as a submitit job that is requeued when Slurm preempts it or its time limit comes: submitit calls
    ``checkpoint`` on the signal (the protocol of ``submitit.helpers.Checkpointable``), whose
    ``DelayedSubmission`` trains the same run again; it resumes from its last epoch checkpoint (the run folder is
    the state, so nothing else is carried over)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def checkpoint(self, *args: Any) -> Any:
        from submitit.helpers import DelayedSubmission
        return DelayedSubmission(_Requeueable(self.fn), *args)


class SlurmExecutor:
    """submitit jobs: one job per run, submitted as one job array per study (``batch``), requeued on preemption
    or timeout and resumed from the run's last epoch checkpoint. ``cluster="local"`` runs the jobs as local
    subprocesses through submitit's own local executor (for trying a study before the cluster)."""

    name = "slurm"
    capture = True

    def __init__(self, folder: str | Path, threads: int, gpus: int = 0, partition: str | None = None,
                 time_min: int = 24 * 60, array_parallelism: int = 64, cluster: str | None = None,
                 cpus: int | None = None, max_requeue: int = 3) -> None:
        from ..optional import require
        submitit = require("submitit", "slurm", "--executor slurm")
        self.folder, self.threads, self.gpus, self.lanes = Path(folder), threads, gpus, array_parallelism
        cluster = cluster or "slurm"
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise ConfigError("--executor slurm: no Slurm on this machine (sbatch not found); run it where sbatch "
                              "is, or add --slurm-cluster local to run the jobs as local subprocesses")
        self.ex = submitit.AutoExecutor(folder=str(self.folder), cluster=cluster, slurm_max_num_timeout=max_requeue,
                                        local_max_num_timeout=max_requeue)
        params: dict[str, Any] = dict(timeout_min=time_min, cpus_per_task=cpus or threads, tasks_per_node=1,
                                      nodes=1)
        if gpus:
            params["gpus_per_node"] = gpus
        if self.ex.cluster == "slurm":
            params.update(slurm_array_parallelism=array_parallelism)
            if partition:
                params["slurm_partition"] = partition
        self.ex.update_parameters(**params)
        self.cluster = self.ex.cluster
        self._pending: list[tuple[cf.Future, Callable[..., Any], tuple]] | None = None
        self._waiters = cf.ThreadPoolExecutor(max_workers=64, thread_name_prefix="convattn-slurm")
        self.jobs: list[Any] = []

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Submissions inside are sent as one job array when it ends."""
        self._pending = []
        try:
            yield
        finally:
            pending, self._pending = self._pending, None
            if pending:
                with self.ex.batch():
                    jobs = [self.ex.submit(_Requeueable(fn), *args) for _, fn, args in pending]
                for (outer, _, _), job in zip(pending, jobs):
                    self._watch(outer, job)

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> cf.Future:
        outer: cf.Future = cf.Future()
        if self._pending is not None:
            self._pending.append((outer, fn, args))
        else:
            self._watch(outer, self.ex.submit(_Requeueable(fn), *args))
        return outer

    def _watch(self, outer: cf.Future, job: Any) -> None:
        self.jobs.append(job)

        def wait() -> None:
            if not outer.set_running_or_notify_cancel():
                return
            try:
                outer.set_result(job.result())
            except Exception as e:  # noqa: BLE001 - the job's failure is the run's
                outer.set_exception(RuntimeError(f"job {job.job_id}: {error_line(e)} (submitit logs: "
                                                 f"{job.paths.stderr})"))
        self._waiters.submit(wait)

    def shutdown(self, wait: bool = True) -> None:
        self._waiters.shutdown(wait=wait, cancel_futures=not wait)

    def describe(self) -> str:
        return (f"slurm via submitit ({self.cluster}; {self.threads} CPUs" + (f", {self.gpus} GPUs" if self.gpus else "")
                + f" per run; logs in {self.folder})")


# --------------------------------------------------------------------------------------------------------------
# From the options to an executor


def _devices(cfg: ExecutorConfig) -> list[str]:
    if cfg.devices is None:
        return []
    devs = [d.strip() for d in str(cfg.devices).split(",") if d.strip()]
    if not devs or not all(d.isdigit() for d in devs) or len(set(devs)) != len(devs):
        raise ConfigError(f"devices (--devices) {cfg.devices!r}: give distinct GPU numbers separated by commas, "
                          "e.g. 0,1,2,3")
    import torch
    have = torch.cuda.device_count()
    if max(int(d) for d in devs) >= have:
        raise ConfigError(f"devices (--devices) {cfg.devices}: {len(devs)} GPU(s) asked for (up to GPU "
                          f"{max(int(d) for d in devs)}), but this machine has {have} CUDA device(s)"
                          + (f" (0..{have - 1})" if have else "; leave --devices out to run on CPU"))
    return devs


def check_executor(cfg: ExecutorConfig, runs: int) -> None:
    """One line for what no executor can do: an unknown name, fewer than one worker, more workers than runs,
    GPUs that do not exist."""
    if cfg.executor not in EXECUTORS:
        raise ConfigError(f"executor (--executor) {cfg.executor!r} is not an executor; valid: {', '.join(EXECUTORS)}")
    check_value("workers", cfg.workers, lo=1, integer=True, optional=True)
    check_value("gpus_per_run", cfg.gpus_per_run, lo=0, integer=True, optional=True)
    check_value("slurm_time_min", cfg.slurm_time_min, lo=1, integer=True)
    check_value("slurm_array_parallelism", cfg.slurm_array_parallelism, lo=1, integer=True)
    if cfg.workers is not None and cfg.workers > runs:
        raise ConfigError(f"workers (--workers) {cfg.workers}: the study has {runs} run{'s' if runs != 1 else ''} "
                          f"(arms x seeds); give at most {runs}")
    if cfg.workers is not None and cfg.executor in ("local", "slurm"):
        raise ConfigError(f"workers (--workers) applies to --executor processes or ray, not {cfg.executor}"
                          + (" (slurm: --slurm-array-parallelism)" if cfg.executor == "slurm" else ""))
    if cfg.devices is not None and cfg.executor != "processes":
        raise ConfigError(f"devices (--devices) applies to --executor processes (one GPU per worker), not "
                          f"{cfg.executor}")
    if cfg.ray_address is not None and cfg.executor != "ray":
        raise ConfigError(f"ray_address (--ray-address) applies to --executor ray, not {cfg.executor}")


def resolve_auto(cfg: ExecutorConfig, runs: int, threads: int | None, parallel: bool,
                 sized_lanes: int | None = None) -> tuple[ExecutorConfig, str]:
    """What ``--executor auto`` (the command's default) runs on, and why. ``parallel``: the study is one whose
    choice was measured (a classification study sized by its time budget). Then, on a machine without CUDA that
    has 2 or more cores: a process pool of one ``threads``-thread worker (default 1) per core, at most one per run
    (on 2 cores the default study's 18 runs took 555 s on 2 workers x 1 thread against 650 s in one 2-thread
    process; docs/scale.md). Otherwise ``local``. ``sized_lanes``: the parallel runs a resumed study's budget was
    sized for, kept. ``--workers`` or ``--devices`` given: a pool."""
    if cfg.executor != "auto":
        return cfg, ""
    if cfg.workers is not None or cfg.devices is not None:
        return replace(cfg, executor="processes"), "auto: --workers/--devices given"
    if sized_lanes is not None:
        lanes = min(int(sized_lanes), runs)
        if lanes <= 1:
            return replace(cfg, executor="local"), "auto: the study was sized for one run at a time"
        return replace(cfg, executor="processes", workers=lanes), f"auto: the study was sized for {lanes} parallel runs"
    if not parallel:
        return replace(cfg, executor="local"), ""
    import torch
    if torch.cuda.is_available():
        return replace(cfg, executor="local"), "auto: a CUDA device (runs use it one at a time)"
    cores = _cpu_count()
    lanes = _cpu_lanes(runs, threads)
    if lanes < 2:
        return replace(cfg, executor="local"), f"auto: {cores} core{'s' if cores != 1 else ''}"
    return (replace(cfg, executor="processes", workers=lanes),
            f"auto: {cores} cores, one {threads or 1}-thread run per core (faster than one process with every core)")


def resolve_lanes(cfg: ExecutorConfig, runs: int, threads: int | None) -> tuple[int, int, list[str]]:
    """(parallel runs, torch threads per run, GPUs) of ``cfg`` for a study of ``runs`` runs: ``threads`` when
    given, else the cores split evenly between the parallel runs."""
    check_executor(cfg, runs)
    devices = _devices(cfg)
    if cfg.executor == "local":
        import torch
        return 1, threads or torch.get_num_threads(), []
    if cfg.executor == "slurm":
        return min(cfg.slurm_array_parallelism, runs), threads or cfg.slurm_cpus_per_run or 8, []
    workers = cfg.workers or (len(devices) if devices else _cpu_lanes(runs, threads))
    if devices and workers > len(devices):
        raise ConfigError(f"workers (--workers) {workers}: one GPU per worker, but --devices names {len(devices)}")
    return workers, threads or max(1, _cpu_count() // workers), devices


def make_executor(cfg: ExecutorConfig, runs: int, threads: int | None = None, out: str | Path = ".",
                  parallel: bool = False, sized_lanes: int | None = None) -> Any:
    """The executor ``cfg`` names for a study of ``runs`` runs in ``out`` (``threads``: torch threads per run,
    None to split the cores); ``auto`` is resolved by :func:`resolve_auto` with ``parallel`` and ``sized_lanes``,
    and the executor's ``auto_reason`` says why. A missing extra is one line naming it (``[ray]``, ``[slurm]``)."""
    cfg, reason = resolve_auto(cfg, runs, threads, parallel, sized_lanes)
    lanes, per_run, devices = resolve_lanes(cfg, runs, threads)
    if cfg.executor == "local":
        ex: Any = LocalExecutor(threads)
    elif cfg.executor == "processes":
        ex = ProcessExecutor(lanes, per_run, devices)
    else:
        ex = _cluster_executor(cfg, lanes, per_run, out)
    ex.auto_reason = reason
    return ex


def _cluster_executor(cfg: ExecutorConfig, lanes: int, per_run: int, out: str | Path) -> Any:
    """The Ray or Slurm executor of ``cfg``."""
    gpus = cfg.gpus_per_run
    if gpus is None:
        import torch
        gpus = 1 if torch.cuda.is_available() else 0
    if cfg.executor == "ray":
        return RayExecutor(lanes, per_run, gpus, cfg.ray_address)
    return SlurmExecutor(cfg.slurm_folder or Path(out) / "slurm", per_run, gpus, cfg.slurm_partition,
                         cfg.slurm_time_min, cfg.slurm_array_parallelism, cfg.slurm_cluster, cfg.slurm_cpus_per_run)

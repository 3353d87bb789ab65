"""A study's runs through the executors: the processes pool gives per-run results identical to the sequential study,
a failed run is named in the report while the others finish, a rerun trains only what is missing, one study
folder has one owner, and every run records its thread count."""
import csv
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from convattn.cli import main
from convattn.engine.checkpoint import RunInUseError
from convattn.study.compare import RunsFailed
from convattn.study import executors
from convattn.study.executors import ExecutorConfig, LocalExecutor, ProcessExecutor, make_executor
from convattn.tasks.classification import CompareConfig, run_compare
from _study_runs import run_numbers  # tests/

# a tiny deterministic study: ResNet-20, 96 embedded images, 1 epoch, one thread per run
RECIPE = dict(train_size=96, epochs=1, batch_size=32, warmup_epochs=0.0, deterministic=True, workers=0)


def _cfg(out, seeds=(0, 1), variants=("eca",), **kw):
    return CompareConfig(variants=list(variants), seeds=list(seeds), out=str(out), progress=False, threads=1,
                         latency_repeats=2, latency_batch=8, time_budget_min=0, train=dict(RECIPE), **kw)


def test_processes_give_the_sequential_results(tmp_path):
    run_compare(_cfg(tmp_path / "local"), executor="local")
    rows = run_compare(_cfg(tmp_path / "pool"), executor=ExecutorConfig(executor="processes", workers=2))
    assert [r["seeds_done"] for r in rows] == [2, 2]
    local, pool = run_numbers(tmp_path / "local"), run_numbers(tmp_path / "pool")
    assert len(local) == 4 and local == pool  # val top-1, top-5, loss, best: identical, run by run
    # where each ran and its thread count are recorded; the report and runs.csv show the threads
    pids = set()
    for d in (tmp_path / "pool").glob("runs/*/seed*"):
        info = json.loads((d / "run.json").read_text())
        assert info["state"] == "done" and info["threads"] == 1 and info["executor"] == "processes"
        assert (d / "log.txt").exists() and info["pid"] != os.getpid()
        pids.add(info["pid"])
    assert len(pids) == 2  # two workers
    for name in ("local", "pool"):
        md = (tmp_path / name / "report.md").read_text()
        assert "Threads per run (torch CPU threads; at the same seed a run's numbers depend on them): 1 (4 runs)." in md
        assert [r["threads"] for r in csv.DictReader(open(tmp_path / name / "runs.csv"))] == ["1"] * 4
    assert "executor processes (2 workers x 1 thread)" in (tmp_path / "pool" / "report.md").read_text()


def test_a_failed_run_is_named_and_the_others_finish_then_a_rerun_trains_only_it(tmp_path, capsys):
    blocked = tmp_path / "runs" / "eca" / "seed0"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a folder")  # the run cannot write its folder
    with pytest.raises(RunsFailed, match=r"1 of 4 runs failed .*eca seed 0: FileExistsError") as e:
        run_compare(_cfg(tmp_path), executor=ExecutorConfig(executor="processes", workers=2))
    assert [(f["variant"], f["seed"]) for f in e.value.failures] == [("eca", 0)]
    assert [r["seeds_done"] for r in e.value.rows] == [2, 1]
    md = (tmp_path / "report.md").read_text()
    assert "**Failed runs: 1**" in md and "| eca | 0 | FileExistsError" in md and "Partial study: 3 of 4" in md
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("runs/*/seed*/final.json")}
    assert len(stamps) == 3
    blocked.unlink()
    capsys.readouterr()
    rows = run_compare(_cfg(tmp_path), executor=ExecutorConfig(executor="processes", workers=2))
    assert [r["seeds_done"] for r in rows] == [2, 2]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished runs were not trained again
    assert "1 of 4 runs to train" in capsys.readouterr().out
    assert "Failed runs" not in (tmp_path / "report.md").read_text()


def test_cli_names_the_failed_run_in_one_line(tmp_path, capsys):
    blocked = tmp_path / "runs" / "none" / "seed1"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("")
    rc = main(["compare", "--variants", "eca", "--seeds", "2", "--out", str(tmp_path), "--train-size", "64",
               "--epochs", "1", "--batch-size", "32", "--threads", "1", "--quiet", "--latency-batch", "4",
               "--time-budget", "0", "--executor", "local"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "1 of 4 runs failed" in err and "none seed 1: FileExistsError" in err


def test_two_studies_on_one_folder_are_refused_and_report_only_still_works(tmp_path, capsys):
    run_compare(_cfg(tmp_path, seeds=[0]))  # a study whose report can be read while another command holds it
    holder = subprocess.Popen(["flock", "--exclusive", str(tmp_path / ".lock"), "sleep", "60"])
    try:
        for _ in range(100):
            if subprocess.run(["flock", "-n", str(tmp_path / ".lock"), "true"]).returncode != 0:
                break
            time.sleep(0.05)
        with pytest.raises(RunInUseError, match="in use"):
            run_compare(_cfg(tmp_path, seeds=[0, 1]))
        assert main(["compare", "--variants", "eca", "--seeds", "2", "--out", str(tmp_path), "--time-budget", "0",
                     "--quiet"]) == 2
        assert "is in use" in capsys.readouterr().err
        assert not (tmp_path / "runs" / "none" / "seed1").exists()
        # the report of a study running elsewhere can still be written (--report-only locks nothing)
        rows = run_compare(_cfg(tmp_path, seeds=[0, 1], report_only=True))
        assert [r["seeds_done"] for r in rows] == [1, 1]
        assert "Partial study: 2 of 4 runs finished" in (tmp_path / "report.md").read_text()
    finally:
        holder.kill()
        holder.wait()


def test_any_concurrent_futures_executor_works(tmp_path):
    """The interface is concurrent.futures': a thread pool runs the study too (one run at a time here, so that
    the runs' thread settings do not interfere)."""
    with ThreadPoolExecutor(1) as pool:
        rows = run_compare(_cfg(tmp_path, seeds=[0]), executor=pool)
    assert [r["seeds_done"] for r in rows] == [1, 1]


def test_executor_resolution():
    ex = make_executor(ExecutorConfig(executor="processes", workers=2), runs=6)
    assert isinstance(ex, ProcessExecutor) and ex.lanes == 2 and ex.threads == max(1, len(os.sched_getaffinity(0)) // 2)
    assert make_executor(ExecutorConfig(executor="processes", workers=2), runs=6, threads=3).threads == 3
    assert isinstance(make_executor(ExecutorConfig(executor="local"), runs=6), LocalExecutor)
    assert LocalExecutor().submit(lambda: 1 / 0).exception().__class__ is ZeroDivisionError


def test_processes_default_to_one_one_thread_worker_per_core(monkeypatch):
    monkeypatch.setattr(executors, "_cpu_count", lambda: 4)
    ex = make_executor(ExecutorConfig(executor="processes"), runs=18)
    assert (ex.lanes, ex.threads) == (4, 1)
    assert make_executor(ExecutorConfig(executor="processes"), runs=3).lanes == 3  # at most one per run
    ex = make_executor(ExecutorConfig(executor="processes"), runs=18, threads=2)
    assert (ex.lanes, ex.threads) == (2, 2)


@pytest.mark.parametrize("cores, cuda, parallel, sized, want", [
    (2, False, True, None, ("processes", 2)),  # the measured case: the budgeted default study on 2 cores
    (8, False, True, None, ("processes", 6)),  # one per core, at most one per run (6 runs)
    (1, False, True, None, ("local", None)),
    (2, True, True, None, ("local", None)),  # runs use the GPU one at a time
    (2, False, False, None, ("local", None)),  # a study whose recipe is given: not what was measured
    (2, False, True, 1, ("local", None)),  # a resumed study sized for one run at a time stays so
    (1, False, True, 2, ("processes", 2)),  # ... and one sized for two parallel runs too
])
def test_auto_executor(monkeypatch, cores, cuda, parallel, sized, want):
    import torch
    monkeypatch.setattr(executors, "_cpu_count", lambda: cores)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    cfg, reason = executors.resolve_auto(ExecutorConfig(), runs=6, threads=None, parallel=parallel, sized_lanes=sized)
    assert (cfg.executor, cfg.workers) == want
    assert ExecutorConfig().executor == "auto" and (reason.startswith("auto: ") or not parallel)
    ex = make_executor(ExecutorConfig(), runs=6, parallel=parallel, sized_lanes=sized)
    assert ex.name == want[0] and ex.auto_reason == reason
    assert isinstance(make_executor(ExecutorConfig(), runs=6), LocalExecutor)  # not resolved for a pool: local


def test_auto_executor_with_workers_or_devices_is_a_pool():
    cfg, _ = executors.resolve_auto(ExecutorConfig(workers=2), runs=6, threads=None, parallel=False)
    assert (cfg.executor, cfg.workers) == ("processes", 2)


def test_budget_spreads_runs_over_lanes():
    from convattn.tasks.classification.budget import ArmCost, _predict, plan
    costs = [ArmCost("none", 1e-3, 0.0), ArmCost("eca", 3e-3, 0.0)]
    # 2 seeds x (1 s, 3 s) for 1000 images: 8 s in one lane; in two lanes each run starts on the first lane free
    # (none 0, eca 0, none 1, eca 1): lane A 1 + 1 + 3 = 5, lane B 3: 5 s
    assert _predict(costs, 2, 1000, 1, 0, 0.0) == pytest.approx(8.0)
    assert _predict(costs, 2, 1000, 1, 0, 0.0, lanes=2) == pytest.approx(5.0)
    assert _predict(costs, 2, 1000, 1, 0, 0.0, lanes=4) == pytest.approx(3.0)
    one = plan(costs, 2, 60, 0, 50_000, epochs=1, size_epochs=False)
    two = plan(costs, 2, 60, 0, 50_000, epochs=1, size_epochs=False, lanes=2)
    assert two.train_size > one.train_size

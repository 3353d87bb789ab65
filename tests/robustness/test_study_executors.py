"""Bad input to a study's executor gets one line and loses nothing: an unknown executor, a missing extra (named),
no workers or more workers than runs, GPUs that do not exist, and a worker killed mid-run (the run resumes from
its last epoch checkpoint and ends with the numbers of an uninterrupted run)."""
import json
import os
import shutil
import signal
import sys

import pytest

from convattn.cli import main
from convattn.optional import MissingExtra
from convattn.study.executors import ExecutorConfig
from convattn.tasks.classification import CompareConfig, run_compare
from _study_runs import run_numbers, study_in_thread, wait_for_run_mid_training  # tests/

SMALL = ["--variants", "eca", "--seeds", "2", "--train-size", "64", "--epochs", "1", "--batch-size", "32",
         "--threads", "1", "--time-budget", "0", "--quiet", "--latency-batch", "4"]


@pytest.mark.parametrize("argv, message", [
    (["--executor", "dask"], "executor (--executor) 'dask' is not an executor; valid: auto, local, processes, ray, slurm"),
    (["--executor", "processes", "--workers", "0"], "workers (--workers) must be an integer >= 1, got 0"),
    (["--executor", "processes", "--workers", "5"], "workers (--workers) 5: the study has 4 runs (arms x seeds); "
                                                    "give at most 4"),
    (["--executor", "local", "--workers", "2"], "workers (--workers) applies to --executor processes or ray, not local"),
    (["--executor", "processes", "--devices", "0,1"], "devices (--devices) 0,1: 2 GPU(s) asked for (up to GPU 1), but "
                                                      "this machine has 0 CUDA device(s)"),
    (["--executor", "processes", "--devices", "a,b"], "give distinct GPU numbers separated by commas"),
    (["--executor", "local", "--ray-address", "auto"], "ray_address (--ray-address) applies to --executor ray"),
    (["--executor", "slurm"], "no Slurm on this machine (sbatch not found)"),
])
def test_bad_executor_options_are_one_line_and_train_nothing(argv, message, tmp_path, capsys):
    if "--executor" in argv and "slurm" in argv and shutil.which("sbatch"):
        pytest.skip("this machine has Slurm")
    if "--devices" in argv and "0,1" in argv:
        import torch
        if torch.cuda.device_count() >= 2:
            pytest.skip("this machine has the GPUs")
    assert main(["compare", *SMALL, "--out", str(tmp_path / "s"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "s" / "runs").exists()


@pytest.mark.parametrize("module, executor, extra", [("ray", "ray", "ray"), ("submitit", "slurm", "slurm")])
def test_missing_extra_is_named(module, executor, extra, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    assert main(["compare", *SMALL, "--out", str(tmp_path / "s"), "--executor", executor]) == 2
    err = capsys.readouterr().err
    assert f"--executor {executor} needs the optional package {module}: pip install 'convattn[{extra}]'" in err
    assert err.count("\n") == 1
    with pytest.raises(MissingExtra, match=rf"convattn\[{extra}\]"):
        run_compare(CompareConfig(variants=["eca"], seeds=[0], out=str(tmp_path / "api"), progress=False,
                                  time_budget_min=0, train=dict(train_size=64, epochs=1, batch_size=32)),
                    executor=executor)


def test_core_import_stays_light():
    code = ("import sys, convattn, convattn.cli, convattn.study.executors, convattn.study.presets;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'submitit')))")
    import subprocess
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _cfg(out):
    return CompareConfig(variants=["eca"], seeds=[0], out=str(out), progress=False, threads=1, latency_repeats=2,
                         latency_batch=8, time_budget_min=0,
                         train=dict(train_size=96, epochs=4, batch_size=32, warmup_epochs=0.0, deterministic=True,
                                    workers=0))


@pytest.mark.slow
def test_worker_killed_mid_run_resumes(tmp_path):
    """SIGKILL to a pool worker mid-run: the pool starts again, the run resumes from its last epoch checkpoint (the
    other run too, if the dying pool took it down) and the study ends as if nothing had happened."""
    out = tmp_path / "pool"
    t, done = study_in_thread(lambda: run_compare(_cfg(out), executor=ExecutorConfig(executor="processes", workers=2)))
    caught = wait_for_run_mid_training(out, 4, t.is_alive)
    assert caught is not None, done
    victim, info, _ = caught
    os.kill(info["pid"], signal.SIGKILL)
    t.join(600)
    assert done.get("seeds") == [1, 1], done
    info = json.loads((victim / "run.json").read_text())
    assert info["attempt"] == 2 and info["state"] == "done"
    run_compare(_cfg(tmp_path / "local"), executor="local")
    assert run_numbers(out) == run_numbers(tmp_path / "local")

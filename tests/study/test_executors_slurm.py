"""A study through submitit, for real: its local executor runs every run as a job in its own subprocess (as Slurm
would, without Slurm), and a run that gets the time-limit signal mid-training is checkpointed by submitit, requeued,
and resumes from its last epoch checkpoint to the numbers of an uninterrupted run."""
import json
import os
import signal

import pytest

pytest.importorskip("submitit")

from convattn.study.executors import SlurmExecutor, _Requeueable  # noqa: E402
from convattn.tasks.classification import CompareConfig, run_compare  # noqa: E402
from _study_runs import run_numbers, study_in_thread, wait_for_run_mid_training  # noqa: E402 - tests/

pytestmark = pytest.mark.slow


def _cfg(out, epochs):
    return CompareConfig(variants=["eca"], seeds=[0], out=str(out), progress=False, threads=1, latency_repeats=2,
                         latency_batch=8, time_budget_min=0,
                         train=dict(train_size=96, epochs=epochs, batch_size=32, warmup_epochs=0.0,
                                    deterministic=True, workers=0))


def test_requeueable_run_resubmits_itself():
    from submitit.helpers import DelayedSubmission
    job = _Requeueable(max)
    again = job.checkpoint(3, 5)
    assert isinstance(again, DelayedSubmission) and again.args == (3, 5) and again.function(*again.args) == 5


def test_timed_out_run_is_requeued_and_resumes(tmp_path):
    ex = SlurmExecutor(tmp_path / "slurm", threads=1, cluster="local", time_min=30)
    out = tmp_path / "study"
    t, done = study_in_thread(lambda: run_compare(_cfg(out, epochs=4), executor=ex))
    caught = wait_for_run_mid_training(out, 4, t.is_alive)  # past its first epoch checkpoint, not finished
    assert caught is not None, done
    victim, info, _ = caught
    # what Slurm sends before the time limit (and submitit's local controller sends at its own timeout)
    os.kill(info["pid"], signal.SIGUSR2)
    t.join(600)
    assert done.get("seeds") == [1, 1], done
    info = json.loads((victim / "run.json").read_text())
    assert info["attempt"] == 2 and info["state"] == "done" and info["executor"] == "slurm"
    assert len((victim / "metrics.jsonl").read_text().splitlines()) == 4
    assert "Requeued job" in (victim / "log.txt").read_text()  # submitit's own line (the run's output goes there)
    run_compare(_cfg(tmp_path / "local", epochs=4), executor="local")
    assert run_numbers(out) == run_numbers(tmp_path / "local")  # as if the run had never been stopped

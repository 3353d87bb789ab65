"""A study through Ray, for real: a local Ray cluster (``ray.init(num_cpus=2)``) gives the sequential study's
per-run results, and on a simulated two-node cluster (``ray.cluster_utils.Cluster``) a node removed mid-study
loses nothing: its run is retried on the other node, resumes from its last epoch checkpoint and ends with the
numbers of an uninterrupted run. Ray only ever runs inside a loopback-only network namespace (``_ray_netns``)."""
import json
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("ray")
from _ray_netns import GUARD, isolation, run_isolated  # noqa: E402 - beside this file
from _study_runs import run_numbers  # noqa: E402 - tests/

from convattn.tasks.classification import CompareConfig, run_compare  # noqa: E402

TESTS = Path(__file__).resolve().parents[1]  # where _study_runs lives, for the driver

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(isolation()[0] is None, reason=f"Ray tests need a loopback-only namespace: "
                                                                f"{isolation()[1]}")]


def _cfg(out, epochs=1, seeds=(0, 1)):
    return dict(variants=["eca"], seeds=list(seeds), out=str(out), progress=False, threads=1, latency_repeats=2,
                latency_batch=8, time_budget_min=0,
                train=dict(train_size=96, epochs=epochs, batch_size=32, warmup_epochs=0.0, deterministic=True,
                           workers=0))


def _driver(tmp_path, body: str):
    path = tmp_path / "driver.py"
    path.write_text(GUARD + textwrap.dedent(body))
    return path


def _result(proc):
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(lines[-1][len("RESULT "):])


LOCAL_CLUSTER = """
    import json, sys
    from ray._private.services import get_node_ip_address
    from convattn.study.executors import ExecutorConfig
    from convattn.tasks.classification import CompareConfig, run_compare
    if __name__ == "__main__":
        cfg = CompareConfig(**json.loads(sys.argv[1]))
        rows = run_compare(cfg, executor=ExecutorConfig(executor="ray", workers=2))
        print("RESULT " + json.dumps(dict(ip=get_node_ip_address(), seeds=[r["seeds_done"] for r in rows])))
"""


def test_ray_local_cluster_gives_the_sequential_results(tmp_path):
    """Without --ray-address the study starts its own local cluster, also when the environment names another Ray
    (``RAY_ADDRESS``, as a running cluster or a second study on the machine is found; here nothing listens there):
    it used to try to join it and fail with Ray's "num_cpus and num_gpus must not be provided"."""
    run_compare(CompareConfig(**_cfg(tmp_path / "local")), executor="local")
    res = _result(run_isolated(_driver(tmp_path, LOCAL_CLUSTER), json.dumps(_cfg(tmp_path / "ray")), timeout=900,
                               env={"RAY_ADDRESS": "127.0.0.1:9"}))
    assert res["ip"] == "127.0.0.1" and res["seeds"] == [2, 2]
    assert run_numbers(tmp_path / "local") == run_numbers(tmp_path / "ray") and len(run_numbers(tmp_path / "ray")) == 4
    infos = [json.loads(p.read_text()) for p in (tmp_path / "ray").glob("runs/*/seed*/run.json")]
    assert all(i["executor"] == "ray" and i["threads"] == 1 and i["node"] for i in infos)
    assert "executor ray (a local cluster; 1 CPU per run)" in (tmp_path / "ray" / "report.md").read_text()


NODE_LOSS = """
    import json, sys
    from pathlib import Path
    import ray
    sys.path.insert(0, sys.argv[2])
    from _study_runs import study_in_thread, wait_for_run_mid_training
    from ray.cluster_utils import Cluster
    from convattn.study.executors import RayExecutor
    from convattn.tasks.classification import CompareConfig, run_compare
    if __name__ == "__main__":
        cfg = CompareConfig(**json.loads(sys.argv[1]))
        out, epochs = Path(cfg.out), cfg.train["epochs"]
        cluster = Cluster(initialize_head=True, head_node_args=dict(
            num_cpus=0, include_dashboard=False,
            _system_config=dict(health_check_period_ms=500, health_check_failure_threshold=3,
                                health_check_initial_delay_ms=0)))
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        ex = RayExecutor(workers=2, threads=1)
        t, done = study_in_thread(lambda: run_compare(cfg, executor=ex))
        caught = wait_for_run_mid_training(out, epochs, t.is_alive)  # past its first epoch checkpoint
        victim = (str(caught[0].relative_to(out)), caught[1]["node"], caught[2])
        node = next(n for n in nodes if n.node_id == victim[1])
        cluster.remove_node(node, allow_graceful=False)  # as a machine that goes away
        t.join()
        info = json.loads((out / victim[0] / "run.json").read_text())
        print("RESULT " + json.dumps(dict(done, victim=victim[0], killed_at=victim[2], attempt=info["attempt"],
                                          node_after=info["node"], lost=victim[1])))
        ray.shutdown()
        cluster.shutdown()
"""


def test_ray_node_lost_mid_study_its_run_is_retried_and_resumes(tmp_path):
    cfg = _cfg(tmp_path / "ray", epochs=4, seeds=[0])
    res = _result(run_isolated(_driver(tmp_path, NODE_LOSS), json.dumps(cfg), str(TESTS), timeout=900))
    print("node loss:", res)  # (-s shows which run lost its node after which epoch)
    assert res.get("seeds") == [1, 1], res
    assert res["attempt"] == 2 and res["node_after"] != res["lost"]  # retried once, on the other node
    log = (tmp_path / "ray" / res["victim"] / "metrics.jsonl").read_text().splitlines()
    assert len(log) == 4  # the retry resumed after epoch `killed_at` and trained the rest
    run_compare(CompareConfig(**dict(cfg, out=str(tmp_path / "local"))), executor="local")
    assert run_numbers(tmp_path / "ray") == run_numbers(tmp_path / "local")  # as if the node had never been lost


NAMED_STUDY = """
    import sys
    from convattn.cli import main
    if __name__ == "__main__":
        sys.exit(main(sys.argv[1:]))
"""


def test_named_study_end_to_end_through_ray(tmp_path):
    from _folders import imagenet_folder
    data = imagenet_folder(tmp_path / "imagenet")
    out = tmp_path / "study"
    proc = run_isolated(_driver(tmp_path, NAMED_STUDY), "compare", "--study", "steam-imagenet", "--data-dir",
                        str(data), "--variants", "steam", "--out", str(out), "--executor", "ray", "--workers", "2",
                        "--epochs", "1", "--batch-size", "8", "--image-size", "32", "--loader-workers", "0",
                        "--threads", "1", "--latency-batch", "4", "--quiet", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = (out / "report.md").read_text()
    assert "| steam |" in md and "executor ray (a local cluster; 1 CPU per run)" in md
    infos = [json.loads(p.read_text()) for p in out.glob("runs/*/seed0/run.json")]
    assert len(infos) == 2 and all(i["executor"] == "ray" and i["state"] == "done" for i in infos)

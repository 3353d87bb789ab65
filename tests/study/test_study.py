"""The study loop shared by every task, with a task whose runs are known numbers: the statistics against a hand
computation, several metrics, resumption, report-only and one task per folder."""
import csv
import json
import math
from pathlib import Path

import pytest

from convattn.study import Metric, run_study
from convattn.study.stats import check_study

# made-up metric values per (variant, seed): the study's numbers must follow from these alone
SCORES = {("none", 0): 50.0, ("none", 1): 52.0, ("none", 2): 51.0,
          ("se", 0): 51.0, ("se", 1): 52.5, ("se", 2): 53.0,
          ("se+aw", 0): 50.0, ("se+aw", 1): 53.5, ("se+aw", 2): 52.0}


class ToyStudy:
    """A task whose runs write a known score (primary) and a second, uncompared metric."""
    name = "toy"
    title = "toy study"
    metrics = (Metric("score", "score", lambda r: r["score"]), Metric("extra", "extra", lambda r: r["extra"], False))

    def __init__(self, recipe=None):
        self._recipe = recipe or {"lr": 0.1}
        self.trained = []

    def fixed_settings(self):
        return {"model": "toy"}

    def recipe(self):
        return dict(self._recipe)

    def recipe_defaults(self):
        return {"lr": 0.1}

    def train(self, variant, seed, run_dir: Path):
        self.trained.append((variant, seed))
        run_dir.mkdir(parents=True)
        final = dict(variant=variant, seed=seed, score=SCORES[variant, seed], extra=1.0)
        (run_dir / "final.json").write_text(json.dumps(final))
        return final

    def read_run(self, final, run_dir):
        return dict(final, curve=[final["score"] - 1, final["score"]])

    def columns(self, variants, results, out):
        return {v: dict(cost=len(v)) for v in variants}, ["cost"], {"cost": "cost"}

    def describe(self, results, seeds):
        return f"Recipe: {self._recipe}"

    def notes(self):
        return ["* toy notes"]


def test_statistics_follow_the_runs(tmp_path):
    task = ToyStudy()
    rows = run_study(task, ["se", "se+aw"], [0, 1, 2], tmp_path, command="toy")
    assert task.trained == [(v, s) for s in (0, 1, 2) for v in ("none", "se", "se+aw")]  # seed-major
    none, se, se_aw = rows
    assert none["score_mean"] == 51.0 and none["verdict"] == "baseline" and none["score_std"] == 1.0
    # se: 51, 52.5, 53 -> mean 52.1667, var ((−7/6)² + (1/3)² + (5/6)²)/2 = 13/12; Welch SE sqrt(13/36 + 1/3)
    assert se["score_mean"] == pytest.approx(52.5 - 1 / 3)
    assert se["score_delta"] == pytest.approx(7 / 6)
    assert se["score_delta_se"] == pytest.approx(math.sqrt(13 / 36 + 1 / 3))
    assert se["verdict"] == "within spread"  # 7/6 < 2 * 0.833
    # paired by seed: Δ = (1, 0.5, 2): mean 7/6, std sqrt(((−1/6)² + (−2/3)² + (5/6)²)/2) = sqrt(7/12), SE /√3
    assert se["score_paired"] == f"+1.17 ± {math.sqrt(7 / 12) / math.sqrt(3):.2f}"
    assert se["extra_mean"] == 1.0 and "extra_delta" not in se and "extra_std" not in se
    assert se_aw["cost"] == 5 and se_aw["score_per_seed"] == "50.00 53.50 52.00"
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# toy study") and "Recipe: {'lr': 0.1}" in md and "* toy notes" in md
    # stacked arm against its trained part, paired: se+aw − se = (−1, +1, −1)
    assert "| se+aw | se | -1.00 | +1.00 | -1.00 | -0.33 ± 0.67 | 1 of 3 seeds |" in md
    assert "## Per seed: score" in md and "## Per seed: extra" not in md
    res = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [r["variant"] for r in res] == ["none", "se", "se+aw"] and "score_paired" in res[0]
    runs = list(csv.DictReader(open(tmp_path / "runs.csv")))
    assert len(runs) == 9 and {"variant", "seed", "score", "extra"} <= set(runs[0])
    for f in ("delta_vs_none.png", "curves.png"):
        assert (tmp_path / f).exists()
    assert not (tmp_path / "acc_vs_macs.png").exists()  # the toy task has no MACs column
    # a second invocation reads every finished run back and trains nothing
    again = ToyStudy()
    assert run_study(again, ["se", "se+aw"], [0, 1, 2], tmp_path, command="toy") == rows and again.trained == []


def test_report_only_and_one_recipe_and_task_per_folder(tmp_path):
    run_study(ToyStudy(), ["se"], [0], tmp_path, command="toy")
    task = ToyStudy()
    rows = run_study(task, ["se"], [0, 1], tmp_path, command="toy", report_only=True)
    assert task.trained == [] and [r["seeds_done"] for r in rows] == [1, 1]
    assert "Partial study: 2 of 4 runs finished" in (tmp_path / "report.md").read_text()
    with pytest.raises(ValueError, match="another recipe.*lr: 0.1 -> 0.2"):
        run_study(ToyStudy({"lr": 0.2}), ["se"], [0], tmp_path)
    other = ToyStudy()
    other.name = "detection"
    with pytest.raises(ValueError, match="task: 'toy' -> 'detection'"):
        run_study(other, ["se"], [0], tmp_path)
    with pytest.raises(ValueError, match="at least one seed"):
        run_study(ToyStudy(), ["se"], [], tmp_path)


def test_study_written_before_the_task_was_recorded_is_classification(tmp_path):
    (tmp_path / "study.json").write_text(json.dumps(dict(model="resnet20", recipe={"lr": 0.1})))
    check_study(tmp_path, dict(task="classification", model="resnet20", recipe={"lr": 0.1}), {}, ("task", "model"))
    (tmp_path / "study.json").write_text(json.dumps(dict(model="resnet20", recipe={"lr": 0.1})))
    with pytest.raises(ValueError, match="task: 'classification' -> 'detection'"):
        check_study(tmp_path, dict(task="detection", recipe={"lr": 0.1}), {}, ("task",))

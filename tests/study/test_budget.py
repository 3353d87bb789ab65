"""compare --time-budget: the plan against hand computations, the CLI's choice of what it sizes, and a budgeted
study that stores its recipe and keeps it when resumed."""
import json

import pytest

from convattn.cli import build_parser
from convattn.cli.tasks import compare_config
from convattn.tasks.classification import CompareConfig, run_compare
from convattn.tasks.classification import budget
from convattn.tasks.classification.budget import ArmCost, plan
from convattn.validate import ConfigError

# two arms: 1 ms per training image, 0.5 ms per evaluation image; 3 seeds, 2,000 validation images, 10 s fixed
COSTS = [ArmCost("none", 1e-3, 5e-4), ArmCost("se", 1e-3, 5e-4)]
KW = dict(seeds=3, val_images=2000, max_train=10_000, epochs=2, fixed_s=10.0)


@pytest.fixture(autouse=True)
def _in_an_empty_folder(tmp_path, monkeypatch):
    """The default study writes to runs/compare relative to the working folder, and a study already there keeps its
    recipe (no budget): resolve every study here from an empty folder, not from wherever pytest was started."""
    monkeypatch.chdir(tmp_path)


def cost(n, e):
    """Hand computation: seeds x arms x epochs x (n train + 2,000 eval images) + fixed."""
    return 3 * 2 * e * (1e-3 * n + 2000 * 5e-4) + 10.0


def test_plan_grows_training_images_in_steps_within_the_margin():
    p = plan(COSTS, budget_s=100.0, **KW)  # usable 90 s: 0.012 n + 22 <= 90 -> n <= 5,666 -> 5,500
    assert (p.train_size, p.epochs) == (5500, 2) and p.fits
    assert p.predicted_s == pytest.approx(cost(5500, 2), abs=0.1)
    assert cost(5750, 2) > 0.9 * 100.0


def test_plan_adds_epochs_once_the_whole_training_set_fits():
    p = plan(COSTS, budget_s=1000.0, **KW)  # whole set at 2 epochs: 142 s; 66 e + 10 <= 900 -> 13 epochs
    assert (p.train_size, p.epochs) == (10_000, 13)
    assert cost(10_000, 14) > 900.0


def test_plan_that_cannot_fit_returns_the_smallest_recipe_flagged():
    p = plan(COSTS, budget_s=10.0, **KW)
    assert (p.train_size, p.epochs) == (1000, 2) and not p.fits


def test_plan_sizes_only_what_was_not_given():
    p = plan(COSTS, budget_s=200.0, size_train=False, train_size=3000, **KW)  # 24 e + 10 <= 180 -> 7
    assert (p.train_size, p.epochs) == (3000, 7)
    p = plan(COSTS, budget_s=1000.0, size_epochs=False, **KW)
    assert (p.train_size, p.epochs) == (10_000, 2)


def _config(*argv):
    args = build_parser().parse_args(["compare", *argv])
    return compare_config(args, [0, 1, 2])


def test_cli_budgets_the_default_study_only_where_its_size_is_not_given():
    assert (_config().time_budget_min, tuple(_config().budget_sizes)) == (15.0, ("train_size", "epochs"))
    cfg = _config("--epochs", "3")
    assert (cfg.time_budget_min, tuple(cfg.budget_sizes), cfg.train["epochs"]) == (15.0, ("train_size",), 3)
    assert _config("--train-size", "500", "--epochs", "1").time_budget_min == 0  # resolved: 0 = no budget
    assert _config("--model", "resnet32").time_budget_min == 0
    assert _config("--time-budget", "0").time_budget_min == 0
    assert _config("--model", "resnet32", "--time-budget", "5").time_budget_min == 5.0
    with pytest.raises(ConfigError, match="both are given"):
        _config("--time-budget", "5", "--train-size", "500", "--epochs", "1")
    with pytest.raises(ConfigError, match="minutes > 0"):
        _config("--time-budget", "-1")


def test_api_and_cli_resolve_the_same_study(tmp_path):
    """The budget policy lives in the library (resolve_compare), so run_compare(CompareConfig(...)) trains the study
    `convattn compare` trains for the same arguments; resolving twice changes nothing."""
    from dataclasses import asdict

    from convattn.tasks.classification import resolve_compare

    def same(cli, api):
        a, b = asdict(cli), asdict(api)
        for d in (a, b):
            d["variants"], d["seeds"], d["budget_sizes"] = list(d["variants"]), list(d["seeds"]), list(d["budget_sizes"])
        assert a == b

    same(_config(), resolve_compare(CompareConfig(seeds=[0, 1, 2])))
    assert resolve_compare(CompareConfig()).time_budget_min == 15.0
    assert resolve_compare(resolve_compare(CompareConfig(time_budget_min=0))) == resolve_compare(CompareConfig(time_budget_min=0))
    same(_config("--epochs", "3", "--model", "resnet32"),
         resolve_compare(CompareConfig(model="resnet32", seeds=[0, 1, 2], train=dict(epochs=3))))
    out = str(tmp_path / "s")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "study.json").write_text("{}")  # a study already in --out keeps its recipe: no default budget
    same(_config("--out", out), resolve_compare(CompareConfig(out=out, seeds=[0, 1, 2])))
    assert resolve_compare(CompareConfig(out=out)).time_budget_min == 0


def test_budgeted_study_stores_its_recipe_and_keeps_it_when_resumed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(budget, "_MIN_TRAIN", 100)
    monkeypatch.setattr(budget, "_SIZE_STEP", 100)
    fake = [ArmCost("none", 1e-2, 1e-4), ArmCost("eca", 1e-2, 1e-4)]
    monkeypatch.setattr(budget, "measure_costs", lambda base, variants, **kw: fake)
    # 1 seed, 2 arms, 1 epoch (given): 2 (n 1e-2 + 0.2) + fixed 2 x (12 x 8 x 1e-4 + 1) <= 0.9 x (8.4 s - measuring)
    # -> n = 200 (300 would need 8.42 s of the 7.56 usable)
    cfg = CompareConfig(variants=["eca"], seeds=[0], out=str(tmp_path), progress=False, threads=2,
                        latency_repeats=2, latency_batch=8, time_budget_min=0.14, budget_sizes=("train_size",),
                        train=dict(train_size=4000, epochs=1, batch_size=64, warmup_epochs=0.0))
    rows = run_compare(cfg)
    said = capsys.readouterr().out
    assert "timing a few training steps of each of the 2 arms" in said  # said before the silent measurement
    assert "200 training images x 1 epochs" in said
    stored = json.loads((tmp_path / "budget.json").read_text())
    study = json.loads((tmp_path / "study.json").read_text())
    assert stored["train_size"] == study["recipe"]["train_size"] == 200 and study["recipe"]["epochs"] == 1
    assert rows[0]["seeds_done"] == 1
    assert "Sized to a 0.14-minute budget" in (tmp_path / "report.md").read_text()

    def no_measuring(*a, **kw):
        raise AssertionError("a resumed study must not be measured again")

    monkeypatch.setattr(budget, "measure_costs", no_measuring)
    run_compare(cfg)  # resumed: the stored recipe, nothing retrained
    assert "sized when the study started: 200 training images" in capsys.readouterr().out


def test_measured_costs_are_per_image_and_training_costs_more_than_evaluation():
    from convattn.tasks.classification.study import study_recipe
    cfg = CompareConfig(variants=["eca"], seeds=[0], progress=False,
                        train=dict(train_size=256, epochs=1, batch_size=32, warmup_epochs=0.0))
    costs = budget.measure_costs(study_recipe(cfg, ["none", "eca"]), ["none", "eca"], min_steps=2, min_s=0.0)
    assert [c.variant for c in costs] == ["none", "eca"]
    for c in costs:
        assert 0 < c.eval_s < c.train_s < 1.0  # seconds per image of a 28x28 ResNet-20


def test_default_arms_and_what_the_report_says_of_them():
    """compare's default arms (CLI and API alike): the two reconstructions and SE, CBAM, ECA; GCT and the stacked
    arms stay in the profile's default set, and the report names them as left out only for the default set."""
    from convattn.models import COMPARE_VARIANTS, DEFAULT_VARIANTS
    from convattn.tasks.classification.study import ClassificationStudy

    assert COMPARE_VARIANTS == ("none", "se", "cbam", "eca", "steam", "aw")
    assert tuple(_config().variants) == tuple(CompareConfig().variants) == COMPARE_VARIANTS
    assert set(DEFAULT_VARIANTS) - set(COMPARE_VARIANTS) == {"gct", "se+aw", "cbam+aw"}
    line = ClassificationStudy(CompareConfig(), COMPARE_VARIANTS)._arms_line()
    assert "`gct`, `se+aw`, `cbam+aw` are left out" in line and "--variants" in line
    assert ClassificationStudy(CompareConfig(), ["se", "gct"])._arms_line() == ""


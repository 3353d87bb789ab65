"""compare: a tiny study end to end, its report, and resumption without retraining."""
import csv
import json
import os

import pytest

from convattn.cli import main
from convattn.tasks.classification import CompareConfig, run_compare
from convattn.tasks.classification.study import TOP1
from convattn.study.verdicts import metric_cells as _metric_cells, stacked_table as _stacked_table
from convattn.study.stats import check_study, paired_deltas
from convattn.tasks.classification import TrainConfig


def _cfg(out, **kw):
    return CompareConfig(variants=["steam", "aw"], seeds=[0, 1], out=str(out), progress=False, threads=2,
                         latency_repeats=3, latency_batch=8,
                         train=dict(train_size=128, epochs=1, batch_size=64, warmup_epochs=0.0), **kw)


def test_compare_report_and_resume(tmp_path):
    rows = run_compare(_cfg(tmp_path))
    assert [r["variant"] for r in rows] == ["none", "steam", "aw"]
    assert all(r["seeds_done"] == 2 for r in rows)
    assert rows[0]["latency_ratio"] == 1.0 and rows[1]["added_params"] == 256 and rows[2]["added_params"] == 151_048
    for f in ("report.md", "results.csv", "runs.csv", "acc_vs_macs.png", "acc_vs_latency.png", "curves.png",
              "delta_vs_none.png",
              "study.json", "profile.json"):
        assert (tmp_path / f).exists(), f
    md = (tmp_path / "report.md").read_text()
    assert "| steam |" in md and "mean" in md and "reconstructions" in md
    assert "## Per seed" in md and "paired Δ" in md and "of 2 seeds" in md
    res = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert res[1]["verdict"] in ("within spread", "exceeds spread (better)", "exceeds spread (worse)")
    # a killed study: one run lost its final.json (died after its last checkpoint); others are not retrained
    finals = sorted(tmp_path.glob("runs/*/seed*/final.json"))
    stamps = {p: os.stat(p).st_mtime_ns for p in finals}
    (tmp_path / "runs/aw/seed1/final.json").unlink()
    rows2 = run_compare(_cfg(tmp_path))
    for p in finals:
        if "aw/seed1" not in str(p):
            assert os.stat(p).st_mtime_ns == stamps[p]
    assert rows2[2]["top1_mean"] == rows[2]["top1_mean"]


def test_compare_refuses_other_recipe_in_same_folder(tmp_path, capsys):
    run_compare(CompareConfig(variants=["eca"], seeds=[0], out=str(tmp_path), progress=False, latency_repeats=2,
                              latency_batch=4, train=dict(train_size=64, epochs=1, batch_size=64)))
    rc = main(["compare", "--variants", "eca", "--seeds", "1", "--out", str(tmp_path), "--train-size", "64",
               "--epochs", "1", "--batch-size", "32", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "another recipe" in err and "batch_size: 64 -> 32" in err
    assert main(["compare", "--variants", "eca,foo", "--out", str(tmp_path / "x")]) == 2


def test_report_only_reports_finished_runs_and_trains_nothing(tmp_path):
    small = dict(progress=False, latency_repeats=2, latency_batch=4, train=dict(train_size=64, epochs=1, batch_size=32))
    with pytest.raises(FileNotFoundError, match="study.json"):
        run_compare(CompareConfig(variants=["eca"], seeds=[0], out=str(tmp_path), report_only=True, **small))
    run_compare(CompareConfig(variants=["eca"], seeds=[0], out=str(tmp_path), **small))
    (tmp_path / "runs/eca/seed0/final.json").unlink()  # as if the study was stopped during this run
    rows = run_compare(CompareConfig(variants=["eca"], seeds=[0, 1], out=str(tmp_path), report_only=True, **small))
    assert [(r["variant"], r["seeds_done"]) for r in rows] == [("none", 1), ("eca", 0)]
    assert rows[1]["verdict"] == "not run yet" and rows[1]["added_params"] == 27
    assert not (tmp_path / "runs/none/seed1").exists() and not (tmp_path / "runs/eca/seed0/final.json").exists()
    assert "Partial study: 1 of 4 runs finished" in (tmp_path / "report.md").read_text()


def test_paired_deltas_match_hand_computation():
    base = [dict(seed=0, val_top1=90.0), dict(seed=1, val_top1=91.0), dict(seed=2, val_top1=89.0)]
    arm = [dict(seed=2, val_top1=89.5), dict(seed=0, val_top1=91.0), dict(seed=1, val_top1=90.5)]
    p = paired_deltas(arm, base)
    assert p["per_seed"] == {2: 0.5, 0: 1.0, 1: -0.5}
    # Δ = (1.0, -0.5, 0.5): mean 1/3, sample std sqrt(((2/3)² + (5/6)² + (1/6)²) / 2) = sqrt(7/12), SE = that / √3
    assert p["mean"] == pytest.approx(1 / 3) and p["se"] == pytest.approx((7 / 12) ** 0.5 / 3 ** 0.5)
    assert p["better"] == 2
    # a seed the baseline has not finished is left out; one pair has no SE
    one = paired_deltas([dict(seed=0, val_top1=90.25), dict(seed=5, val_top1=99.0)], base)
    assert one["per_seed"] == {0: 0.25} and one["se"] != one["se"] and one["better"] == 1


@pytest.mark.slow  # default-suite budget: covered in CI's slow run
def test_training_time_ignores_slowed_epochs(tmp_path):
    small = dict(variants=["eca"], seeds=[0], out=str(tmp_path), progress=False, latency_repeats=2, latency_batch=4,
                 train=dict(train_size=64, epochs=3, batch_size=32))
    run_compare(CompareConfig(**small))
    metrics = tmp_path / "runs/none/seed0/metrics.jsonl"
    epochs = [json.loads(line) for line in metrics.read_text().splitlines()]
    for e, t in zip(epochs, (2.0, 3.0, 500.0)):  # the last epoch shared the machine with other work
        e.update(epoch_time_s=t, images_per_s=64 / t)
    metrics.write_text("".join(json.dumps(e) + "\n" for e in epochs))
    rows = run_compare(CompareConfig(report_only=True, **small))
    assert rows[0]["train_time_s"] == pytest.approx(9.0) and rows[0]["train_img_s"] == pytest.approx(64 / 3)


def test_stacked_table_pairs_each_part_by_seed():
    runs = lambda *accs: [dict(seed=s, val_top1=a) for s, a in enumerate(accs)]  # noqa: E731
    results = {"none": runs(90.0, 90.0), "se": runs(91.0, 90.0), "se+aw": runs(91.5, 89.5), "aw": [],
               "cbam+aw": runs(90.0, 91.0)}
    table = _stacked_table(list(results), [0, 1], results, TOP1)
    rows = [line for line in table.splitlines()[2:]]
    # se+aw vs se: Δ = (+0.5, −0.5); aw and cbam were not trained, so they get no rows
    assert rows == ["| se+aw | se | +0.50 | -0.50 | +0.00 ± 0.50 | 1 of 2 seeds |"]
    assert _stacked_table(["none", "se"], [0, 1], {"none": runs(90.0), "se": runs(91.0)}, TOP1) == ""


def test_report_shows_accuracies_in_points_with_two_decimals():
    row = dict(variant="se", top1_mean=91.0, top1_std=0.007071, top1_delta=-0.104, top1_delta_se=float("nan"),
               params=5)
    cells = _metric_cells(row, [TOP1])
    assert (cells["top1_mean"], cells["top1_std"], cells["top1_delta"]) == ("91.00", "0.01", "-0.10")
    assert cells["top1_delta_se"] != cells["top1_delta_se"] and cells["params"] == 5 and row["top1_mean"] == 91.0


def _check_study(out, study):
    from dataclasses import asdict
    check_study(out, study, asdict(TrainConfig()))


def test_study_from_before_a_new_setting_still_resumes(tmp_path):
    """A study.json written before a recipe key existed counts that key as its default; another value is refused."""
    recipe = dict(lr=0.1, epochs=10, attn_lr_mult=1.0)
    (tmp_path / "study.json").write_text(json.dumps(dict(model="resnet20", recipe=dict(lr=0.1, epochs=10))))
    _check_study(tmp_path, dict(model="resnet20", recipe=recipe))
    assert json.loads((tmp_path / "study.json").read_text())["recipe"] == recipe
    with pytest.raises(ValueError, match="attn_lr_mult: 1.0 -> 10.0"):
        _check_study(tmp_path, dict(model="resnet20", recipe={**recipe, "attn_lr_mult": 10.0}))
    with pytest.raises(ValueError, match="model"):
        _check_study(tmp_path, dict(model="resnet56", recipe=recipe))


def test_report_states_the_module_options_that_ran():
    """The report's module line comes from the constructors' defaults and the study's options (no fixed text)."""
    from convattn.tasks.classification.study import study_recipe, _module_lines
    cfg = CompareConfig(variants=["steam", "aw"], train=dict(epochs=1, attn_kwargs={"heads": 2, "channel_graph": "knn"},
                                                             conv_kwargs={"mode": "out"}))
    line = _module_lines(study_recipe(cfg, ["none", "steam", "aw"]), ["none", "steam", "aw"])
    assert "steam: d=8, heads=2" in line and "channel_graph='knn'" in line and "weight_decay=True" in line
    assert "aw: mode='out'" in line and "reduction=16" in line
    assert "mode=full (the default rule: full (paper-literal)" in _module_lines(study_recipe(CompareConfig(), ["aw"]), ["aw"])
    from convattn.layers import module_options
    with pytest.raises(ValueError, match="se has no option.*heads.*valid: act_layer"):
        module_options("se", {"heads": 2})

"""Verdicts a reader can trust (issue 27): the report says how far training got, marks "exceeds spread" verdicts
of a study whose baseline was still rising, and states the evidence study's result for the same arm, read from
its results.csv at report time."""
import csv
import json
from pathlib import Path

import pytest

from convattn.study import Metric, run_study
from convattn.tasks.classification import CompareConfig
from convattn.tasks.classification import study as cls
from convattn.tasks.classification.study import ClassificationStudy, evidence_result, evidence_study
from convattn.study.compare import CONVERGING_GAIN, CONVERGING_MEANS, training_progress, verdict_note

# se is far behind the baseline in every seed (exceeds spread), eca level with it (within spread)
SCORES = {("none", 0): 70.0, ("none", 1): 71.0, ("none", 2): 69.0,
          ("se", 0): 60.0, ("se", 1): 61.5, ("se", 2): 59.0,
          ("eca", 0): 70.5, ("eca", 1): 70.0, ("eca", 2): 69.5}
NOTE = "still converging"


class CurveStudy:
    """A task whose runs end at SCORES after two epochs; the first epoch ended ``last_gain`` points lower."""
    name = "toy"
    title = "toy study"
    metrics = (Metric("top1", "val top-1 %", lambda r: r["val_top1"]),)

    def __init__(self, last_gain, reference=None, updates=40):
        self.last_gain, self._reference, self._updates = last_gain, reference, updates

    def fixed_settings(self):
        return {"model": "toy"}

    def recipe(self):
        return {"lr": 0.1}

    def recipe_defaults(self):
        return {}

    def train(self, variant, seed, run_dir: Path):
        run_dir.mkdir(parents=True)
        final = dict(variant=variant, seed=seed, val_top1=SCORES[variant, seed], epochs=2, train_images=640)
        (run_dir / "final.json").write_text(json.dumps(final))
        return final

    def read_run(self, final, run_dir):
        return dict(final, curve=[final["val_top1"] - self.last_gain, final["val_top1"]])

    def columns(self, variants, results, out):
        return {}, [], {}

    def describe(self, results, seeds):
        return "Recipe: toy"

    def notes(self):
        return []

    def updates_per_run(self, results):
        return self._updates

    def reference(self):
        return self._reference


def _study(tmp_path, task):
    rows = run_study(task, ["se", "eca"], [0, 1, 2], tmp_path, command="toy")
    return {r["variant"]: r for r in rows}, (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("gain", [5.0, 0.2, CONVERGING_GAIN])
def test_converging_note_appears_exactly_when_the_baseline_was_still_rising(tmp_path, gain):
    rows, md = _study(tmp_path, CurveStudy(gain))
    rising = gain > CONVERGING_GAIN
    assert rows["se"]["verdict"] == "exceeds spread (worse)" and rows["eca"]["verdict"] == "within spread"
    se_line = next(line for line in md.splitlines() if line.startswith("| se |"))
    eca_line = next(line for line in md.splitlines() if line.startswith("| eca |"))
    if rising:
        note = f"{NOTE}: 40 updates, baseline +{gain:.2f} points in its last epoch{CONVERGING_MEANS}"
        assert f"exceeds spread (worse) — {note}" in se_line and rows["se"]["verdict_note"] == note
        assert "still rising at the end" in md
    else:
        assert NOTE not in se_line and rows["se"]["verdict_note"] == "" and "levelled off" in md
    assert NOTE not in eca_line and rows["eca"]["verdict_note"] == ""  # only "exceeds spread" verdicts carry it
    # how far training got, always: updates per run and the baseline's last-epoch gain per seed
    assert f"Training progress: 40 updates per run, 2 epochs. The baseline's val top-1 % changed by +{gain:.2f}" in md
    res = {r["variant"]: r for r in csv.DictReader(open(tmp_path / "results.csv"))}
    assert res["se"]["verdict"] == "exceeds spread (worse)"  # the plain verdict stays machine-readable
    assert bool(res["se"]["verdict_note"]) == rising


def test_progress_without_curves_is_unknown_unless_a_longer_reference_is_far_ahead():
    runs = [dict(seed=s, val_top1=v) for s, v in enumerate((70.0, 71.0, 69.0))]
    top1 = Metric("top1", "top-1", lambda r: r["val_top1"])
    p = training_progress(runs, top1, 80)
    assert p["rising"] is None and p["gain"] is None and verdict_note("exceeds spread (worse)", p) == ""
    ref = dict(label="evidence study (long)", short="evidence study", updates=1560, baseline=91.2, arms={})
    p = training_progress(runs, top1, 80, ref)
    assert p["rising"] is True
    assert verdict_note("exceeds spread (better)", p) == \
        f"{NOTE}: 80 updates, baseline 70.00 vs 91.20 in the evidence study (1,560 updates){CONVERGING_MEANS}"
    assert training_progress(runs, top1, 80, dict(ref, baseline=71.0))["rising"] is None  # as good: unknown
    assert training_progress(runs, top1, 2000, ref)["rising"] is None  # not shorter than the reference


def _write_evidence(folder, rows, data="fashion-mnist", model="resnet20", **recipe):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.json").write_text(json.dumps(dict(model=model, seeds=[0, 1, 2], recipe=dict(
        model=model, data=data, train_size=20000, epochs=10, batch_size=128, attn_kwargs={}, conv_kwargs={},
        **recipe))))
    with (folder / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)


OLD_STYLE = [dict(variant="none", seeds_done=3, top1_mean=91.2, delta="", delta_se="", verdict="baseline"),
             dict(variant="se", seeds_done=3, top1_mean=91.32, delta=0.12, delta_se=0.2, verdict="within spread"),
             dict(variant="cbam", seeds_done=3, top1_mean=90.5, delta=-0.7, delta_se=0.1,
                  verdict="exceeds spread (worse)")]


def test_evidence_result_reads_the_csv_and_is_none_when_file_or_arm_is_absent(tmp_path):
    ev = tmp_path / "ev"
    _write_evidence(ev, OLD_STYLE)  # the committed evidence study's column names: delta, delta_se
    se = evidence_result("se", ev)
    assert se == dict(variant="se", mean=91.32, delta=0.12, delta_se=0.2, verdict="within spread", seeds=3)
    assert evidence_result("none", ev)["delta"] is None
    assert evidence_result("coord", ev) is None  # an arm it did not train
    assert evidence_result("se", tmp_path / "nowhere") is None  # no study there
    new = tmp_path / "new"  # the current column names: top1_delta, top1_delta_se
    _write_evidence(new, [dict(variant="se", seeds_done=2, top1_mean=90.0, top1_delta=-0.5, top1_delta_se=0.3,
                               verdict="within spread")])
    assert evidence_result("se", new)["delta"] == -0.5 and evidence_result("se", new)["seeds"] == 2
    assert evidence_study(ev)["updates"] == 10 * (20000 // 128) and evidence_study(tmp_path / "nowhere") is None


def test_without_a_reference_there_is_no_evidence(monkeypatch, tmp_path):
    monkeypatch.setattr(cls, "reference_folder", lambda: tmp_path / "nowhere")
    assert evidence_result("se") is None and evidence_study() is None
    assert ClassificationStudy(CompareConfig(variants=["se"]), ["se"]).reference() is None


def test_the_evidence_study_ships_with_the_package():
    """Read from package data (a wheel install has it too), not from a repository path."""
    folder = cls.reference_folder()
    assert "site-packages" in folder.as_posix() or folder.as_posix().endswith("src/convattn/data/reference/evidence_r20")
    assert evidence_result("se")["verdict"] and evidence_result("none")["mean"] > 80
    assert evidence_study()["updates"] == 1560
    checkout = Path(__file__).resolve().parents[2] / cls.EVIDENCE_STUDY
    if checkout.is_dir():  # the shipped copy is the committed study's
        for name in ("results.csv", "study.json"):
            assert (folder / name).read_bytes() == (checkout / name).read_bytes(), name


def test_evidence_column_only_for_the_same_model_and_data(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    _write_evidence(root / cls.EVIDENCE_STUDY, OLD_STYLE)
    monkeypatch.setattr(cls, "reference_folder", lambda: root / cls.EVIDENCE_STUDY)
    ref = ClassificationStudy(CompareConfig(variants=["se", "eca"], out=str(tmp_path / "s")), ["se", "eca"]).reference()
    assert ref["baseline"] == 91.2 and ref["updates"] == 1560 and set(ref["arms"]) == {"none", "se"}
    assert ref["arms"]["se"]["delta"] == 0.12 and "reports/evidence_r20/results.csv" in ref["note"]
    other = dict(variants=["se"], out=str(tmp_path / "o"))
    assert ClassificationStudy(CompareConfig(model="resnet56", **other), ["se"]).reference() is None
    assert ClassificationStudy(CompareConfig(data="cifar10", **other), ["se"]).reference() is None
    assert ClassificationStudy(CompareConfig(train=dict(attn_kwargs={"rd_ratio": 0.25}), **other),
                               ["se"]).reference() is None  # other module options: not the same arm
    # the evidence study's own report does not read itself
    assert ClassificationStudy(CompareConfig(variants=["se"], out=str(root / cls.EVIDENCE_STUDY)),
                               ["se"]).reference() is None


def test_report_states_the_evidence_result_beside_each_arm(tmp_path):
    ev = tmp_path / "ev"
    _write_evidence(ev, OLD_STYLE)
    arms = {v: evidence_result(v, ev) for v in ("none", "se", "eca")}
    ref = dict(label="evidence study (20,000 images × 10 epochs)", short="evidence study", updates=1560,
               baseline=arms["none"]["mean"], arms={v: a for v, a in arms.items() if a}, note="* evidence: from ev")
    rows, md = _study(tmp_path / "study", CurveStudy(5.0, reference=ref))
    lines = {}
    for line in md.splitlines():  # the main table's rows (the per-seed table comes later)
        if line.startswith("| "):
            lines.setdefault(line.split(" | ")[0][2:], line)
    assert "evidence study (20,000 images × 10 epochs): Δ vs none" in lines["variant"]
    assert "| baseline | 91.20 |" in lines["none"]
    assert f"points in its last epoch{CONVERGING_MEANS} | +0.12, within spread |" in lines["se"]
    assert "| within spread | not in it |" in lines["eca"]
    assert "* evidence: from ev" in md
    res = {r["variant"]: r for r in csv.DictReader(open(tmp_path / "study" / "results.csv"))}
    assert float(res["se"]["reference_delta"]) == 0.12 and res["se"]["reference_verdict"] == "within spread"
    # without a reference: no column at all
    _, md = _study(tmp_path / "plain", CurveStudy(5.0))
    assert "Δ vs none |" in md and "evidence" not in md


def test_report_only_from_runs_csv_when_the_run_folders_were_not_kept(tmp_path):
    ev = tmp_path / "ev"
    _write_evidence(ev, OLD_STYLE)
    ref = dict(label="evidence study (long)", short="evidence study", updates=1560, baseline=91.2,
               arms={"se": evidence_result("se", ev)}, note="")
    out = tmp_path / "study"
    run_study(CurveStudy(5.0), ["se", "eca"], [0, 1, 2], out, command="toy")
    before = (out / "runs.csv").read_text()
    for final in out.glob("runs/*/seed*/final.json"):  # committed as results, runs.csv and study.json only
        final.unlink()
    rows = run_study(CurveStudy(5.0, reference=ref), ["se", "eca"], [0, 1, 2], out, report_only=True)
    md = (out / "report.md").read_text()
    assert [r["seeds_done"] for r in rows] == [3, 3, 3] and "Partial study" not in md
    assert "Rebuilt from runs.csv" in md and "nothing was trained" in md
    # no curves: still converging by the longer study's baseline
    assert rows[1]["verdict_note"] == \
        f"{NOTE}: 40 updates, baseline 70.00 vs 91.20 in the evidence study (1,560 updates){CONVERGING_MEANS}"
    assert (out / "runs.csv").read_text() == before


def test_a_study_recorded_before_hflip_existed_still_rebuilds(tmp_path):
    """Committed studies (reports/evidence_r20 among them) predate the hflip setting; they flipped."""
    from convattn.study.stats import check_study
    defaults = ClassificationStudy(CompareConfig(variants=["se"]), ["se"]).recipe_defaults()
    (tmp_path / "study.json").write_text(json.dumps(dict(task="classification", model="resnet20",
                                                         recipe={"lr": 0.05})))
    check_study(tmp_path, dict(task="classification", model="resnet20", recipe={"lr": 0.05, "hflip": True}),
                defaults, ("task", "model"))
    (tmp_path / "study.json").write_text(json.dumps(dict(task="classification", model="resnet20",
                                                         recipe={"lr": 0.05})))
    with pytest.raises(ValueError, match="hflip: True -> False"):
        check_study(tmp_path, dict(task="classification", model="resnet20", recipe={"lr": 0.05, "hflip": False}),
                    defaults, ("task", "model"))


def test_differences_plot_shows_the_reference_study_and_says_when_still_converging(tmp_path, monkeypatch):
    """delta_vs_none.png: beside each arm the reference study's Δ (where it trained the arm), and a title saying
    the differences are learning speed when the baseline was still rising; neither without them."""
    from convattn.study import compare
    figs = {}

    def keep(fig, path):
        ax = fig.axes[0]
        figs[Path(path).name] = dict(title=ax.get_title(), legend=[t.get_text() for t in ax.get_legend().get_texts()],
                                     squares=[line.get_xdata()[0] for line in ax.lines if line.get_marker() == "s"])

    from convattn.study import verdicts
    monkeypatch.setattr(verdicts, "save_figure", keep)
    top1 = Metric("top1", "top-1", lambda r: r["val_top1"])
    results = {v: [dict(seed=s, val_top1=b + d) for s, b in enumerate((80.0, 81.0, 79.0))]
               for v, d in (("none", 0.0), ("se", -2.0), ("eca", -1.0))}
    rows = [dict(variant="none"), dict(variant="se", reference_delta=0.12), dict(variant="eca")]
    verdicts.plot_study(tmp_path, rows, results, top1, dict(rising=True, updates=624), "evidence study (long)")
    fig = figs["delta_vs_none.png"]
    assert fig["squares"] == [0.12] and "evidence study (long)" in fig["legend"]
    assert fig["title"].startswith("after 624 updates;") and "learning speed, not final accuracy" in fig["title"]
    verdicts.plot_study(tmp_path, [dict(variant=v) for v in results], results, top1, dict(rising=False), None)
    fig = figs["delta_vs_none.png"]
    assert fig["squares"] == [] and fig["title"] == "" and fig["legend"] == ["seeds", "this study: mean ± SE"]

"""The identity form against the official form of the same modules at the evidence study's scale: per seed,
paired with the evidence study's runs of the same arm and seed (reports/evidence_r20/runs.csv) and with its plain
network. Run from the repository root: ``python reports/evidence_r20_identity/compare_forms.py`` (writes
forms.md next to this file)."""
import csv
import statistics
from pathlib import Path

here = Path(__file__).parent
official = {(r["variant"], int(r["seed"])): float(r["val_top1"])
            for r in csv.DictReader(open(here.parent / "evidence_r20" / "runs.csv"))}


def mean_se(xs):
    return statistics.mean(xs), (statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan"))


lines = ["| arm | form | per seed (top-1 %) | mean ± std | Δ vs none (paired ± SE) | identity − official (paired ± SE) |",
         "|---|---|---|---|---|---|"]
for arm in ("se", "cbam", "eca", "steam"):
    path = here / arm / "runs.csv"
    if not path.exists():
        continue
    ident = {int(r["seed"]): float(r["val_top1"]) for r in csv.DictReader(open(path)) if r["variant"] == arm}
    seeds = sorted(ident)
    for form, vals in (("official (evidence study)", {s: official[(arm, s)] for s in seeds}), ("identity", ident)):
        v = [vals[s] for s in seeds]
        d = mean_se([vals[s] - official[("none", s)] for s in seeds])
        diff = mean_se([ident[s] - official[(arm, s)] for s in seeds]) if form == "identity" else None
        lines.append(f"| {arm} | {form} | {' '.join(f'{x:.2f}' for x in v)} | {statistics.mean(v):.2f} ± "
                     f"{statistics.stdev(v) if len(v) > 1 else 0:.2f} | {d[0]:+.2f} ± {d[1]:.2f} | "
                     + (f"{diff[0]:+.2f} ± {diff[1]:.2f}" if diff else "") + " |")
plain = " ".join(f"{official['none', s]:.2f}" for s in (0, 1, 2))
text = (f"Seeds compared: those finished in each folder. Plain network (evidence study), seeds 0-2: {plain}.\n\n"
        + "\n".join(lines) + "\n")
(here / "forms.md").write_text(text)
print(text)

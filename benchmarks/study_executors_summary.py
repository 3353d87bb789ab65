"""Summarise ``benchmarks/study_executors.sh OUT``: wall time of each way of running the default study, its size,
the training time its runs add up to, and each arm's top-1 (mean ± std over seeds); writes ``OUT/summary.csv``
and ``OUT/summary.md``."""
from __future__ import annotations

import csv
import json
import statistics as st
import sys
from pathlib import Path

WAYS = {"local": "local (1 process x 2 threads), budgeted",
        "proc": "processes (2 workers x 1 thread), the same work as local",
        "procb": "processes (2 workers x 1 thread), budgeted"}


def main(out: Path) -> None:
    times = dict(line.split() for line in (out / "times.txt").read_text().splitlines() if line.strip())
    base = float(times["local"])
    rows = []
    for name, title in WAYS.items():
        runs = list(csv.DictReader(open(out / name / "runs.csv")))
        budget = out / name / "budget.json"
        predicted = json.loads(budget.read_text())["predicted_s"] if budget.exists() else None
        arms: dict[str, list[float]] = {}
        for r in runs:
            arms.setdefault(r["variant"], []).append(float(r["val_top1"]))
        rows.append(dict(
            way=title, wall_s=round(float(times[name]), 1), wall_vs_local=round(float(times[name]) / base, 3),
            predicted_train_s=predicted, runs=len(runs), train_images=runs[0]["train_images"],
            epochs=runs[0]["epochs"], threads_per_run=runs[0]["threads"],
            train_s_sum=round(sum(float(r["train_time_s"]) for r in runs), 1),
            **{f"top1_{a}": f"{st.mean(v):.2f} ± {st.stdev(v):.2f}" for a, v in arms.items()}))
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cols = list(rows[0])
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""Per-stage summary of the learned attention of every arm (seed 0), from the files written by
``convattn maps --run runs/<arm>/seed0 --stats 512``. Run from this folder: ``python summarise_attention.py``
(writes attention_summary.md)."""
import csv
import collections
from pathlib import Path

ARMS = ["se", "cbam", "eca", "gct", "steam", "steam-all", "aw", "se_aw", "cbam_aw"]
KIND = {"channel": "channel gate", "spatial": "spatial gate", "aw": "AW modulation A"}

here = Path(__file__).parent
lines = ["# Learned attention after 10 epochs (seed 0, 512 validation images)", "",
         "Per stage, averaged over the stage's modules: mean value, spread over all values, and the spread across "
         "images (how much the attention depends on the input; 0 = the same for every image). Gates are sigmoid "
         "outputs (GCT: 1 + tanh, identity = 1); AW's A modulates the kernel as K(1 + A) and starts at 0.", "",
         "| arm | output | stage | mean | spread (std) | spread across images |", "|---|---|---|---|---|---|"]
for arm in ARMS:
    rows = list(csv.DictReader(open(here / "runs" / arm / "seed0" / "maps" / "attention_stats.csv")))
    by = collections.defaultdict(list)
    for r in rows:
        stage = r["module"].split(".")[0]
        by[(r["kind"], stage)].append(r)
    for (kind, stage), rs in sorted(by.items(), key=lambda kv: (list(KIND).index(kv[0][0]), kv[0][1])):
        avg = {c: sum(float(r[c]) for r in rs) / len(rs) for c in ("mean", "std", "sample_std")}
        lines.append(f"| {arm} | {KIND[kind]} | {stage} ({len(rs)}) | {avg['mean']:.3f} | {avg['std']:.3f} | "
                     f"{avg['sample_std']:.4f} |")
(here / "attention_summary.md").write_text("\n".join(lines) + "\n")
print(here / "attention_summary.md")

"""The verified-backbone table: what ``convattn.attach`` inserts into each timm/torchvision CNN, and the largest
relative output difference to the original network at insertion with ``identity=True`` (random init, 2 x 3 x 64 x 64
input, eval mode).

    python benchmarks/attach_backbones.py --out benchmarks/results/attach_backbones.md
"""
from __future__ import annotations

import argparse
import platform

import torch

from convattn.models import VERIFIED_BACKBONES, create_model
from convattn.report import atomic_write_text, to_markdown

KINDS = (("se", dict(attn="se")), ("steam", dict(attn="steam")), ("coord", dict(attn="coord")),
         ("gct", dict(attn="gct")), ("aw", dict(conv="aw")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    x = torch.randn(2, 3, 64, 64)
    for name in VERIFIED_BACKBONES:
        plain = create_model(name).eval()
        with torch.no_grad():
            y0 = plain(x)
        row = {"backbone": name, "params (M)": f"{sum(p.numel() for p in plain.parameters()) / 1e6:.2f}"}
        worst = 0.0
        for label, kw in KINDS:
            m = create_model(name, identity=True, **kw).eval()
            m.load_state_dict(plain.state_dict(), strict=False)
            r = m.convattn_report
            with torch.no_grad():
                worst = max(worst, ((m(x) - y0).abs().max() / y0.abs().max()).item())
            row["blocks per stage"] = str(r.blocks_per_stage)
            row[label] = f"{r.count()} / {r.added_params:,}"
        row["max rel. diff (identity)"] = f"{worst:.1e}"
        rows.append(row)
        print(row, flush=True)
    cols = ["backbone", "params (M)", "blocks per stage"] + [k for k, _ in KINDS] + ["max rel. diff (identity)"]
    md = to_markdown(rows, cols, {})
    text = (f"# convattn.attach on timm/torchvision backbones\n\nUnits inserted / parameters added (with "
            f"identity=True: one zero-initialised scale per gated block-output module). torch {torch.__version__}, "
            f"{platform.machine()}.\n\nCommand: `python benchmarks/attach_backbones.py --out "
            f"benchmarks/results/attach_backbones.md`\n\n{md}\n")
    print(md)
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()

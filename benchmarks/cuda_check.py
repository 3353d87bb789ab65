"""CUDA agrees with the CPU for every variant (float64, same weights): eval outputs, training-mode outputs and
parameter gradients; then bf16 autocast + channels_last runs and stays finite. Writes a Markdown table.

    python benchmarks/cuda_check.py --out benchmarks/results/cuda_check.md
"""
from __future__ import annotations

import argparse
import copy

import torch

from convattn import create_model
from convattn.models import parse_variant
from convattn.report import atomic_write_text, to_markdown

VARIANTS = ["none", "se", "cbam", "eca", "gct", "steam", "coord", "aw", "se+aw", "cbam+aw", "steam@all"]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    dev = torch.device("cuda")
    rows = []
    for v in VARIANTS:
        torch.manual_seed(0)
        cpu = create_model(args.model, num_classes=10, **parse_variant(v)).double()
        gpu = copy.deepcopy(cpu).to(dev)
        x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
        with torch.no_grad():
            e = _rel(gpu.eval()(x.to(dev)), cpu.eval()(x))
        yc, yg = cpu.train()(x), gpu.train()(x.to(dev))
        yc.square().sum().backward()
        yg.square().sum().backward()
        t = _rel(yg, yc)
        # gradients relative to the largest gradient of the model (a parameter whose gradient is zero up to
        # rounding, such as a bias before a training-mode BatchNorm, has no meaningful relative error of its own)
        scale = max(float(p.grad.abs().max()) for p in cpu.parameters())
        g = max(float((pg.grad.cpu() - pc.grad).abs().max()) for pc, pg in zip(cpu.parameters(), gpu.parameters())) / scale
        m = copy.deepcopy(cpu).float().to(dev).to(memory_format=torch.channels_last).train()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = m(x.float().to(dev).contiguous(memory_format=torch.channels_last))
        out.float().sum().backward()
        finite = bool(torch.isfinite(out).all()) and all(torch.isfinite(p.grad).all() for p in m.parameters())
        rows.append(dict(variant=v, eval_rel=f"{e:.1e}", train_rel=f"{t:.1e}", grad_rel=f"{g:.1e}",
                         bf16_cl_finite=finite, ok=max(e, t, g) < 1e-9 and finite))
        print(rows[-1], flush=True)
    atomic_write_text(args.out, f"# CUDA vs CPU, {args.model}, float64 (max relative difference)\n\n"
                      f"Command: `python benchmarks/cuda_check.py --model {args.model} --out {args.out}`; "
                      f"{torch.cuda.get_device_name()}, torch {torch.__version__}.\n\n"
                      + to_markdown(rows, list(rows[0])))


if __name__ == "__main__":
    main()

"""convattn's plain ResNet against torchvision's identical network (same weights, outputs checked equal first),
forward and forward + backward, interleaved repeats, medians; ratio convattn / torchvision (<= 1.00: as fast).

    python benchmarks/bench_reference.py --model resnet50 --batches 8,32 --repeats 9 --out benchmarks/results/cpu_reference_r50
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torchvision

from convattn import create_model
from convattn.report import atomic_write_text, to_markdown, write_csv


def _step(model: torch.nn.Module, x: torch.Tensor, backward: bool) -> None:
    if backward:
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()
    else:
        with torch.no_grad():
            model(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ours = create_model(args.model)
    ref = torchvision.models.get_model(args.model, weights=None)
    ref.load_state_dict(ours.state_dict())
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        x = torch.randn(batch, 3, args.size, args.size)
        for backward in (False, True):
            for m in (ours, ref):
                m.train(backward)
            if not backward:
                with torch.no_grad():
                    torch.testing.assert_close(ours(x), ref(x))
            for m in (ours, ref):  # warm-up
                _step(m, x, backward)
            times: dict[str, list[float]] = {"convattn": [], "torchvision": []}
            for _ in range(args.repeats):  # interleaved: machine noise hits both sides
                for key, m in (("convattn", ours), ("torchvision", ref)):
                    t0 = time.perf_counter()
                    _step(m, x, backward)
                    times[key].append(time.perf_counter() - t0)
            a, b = statistics.median(times["convattn"]), statistics.median(times["torchvision"])
            row = dict(model=args.model, batch=batch, pass_="fwd+bwd" if backward else "fwd",
                       convattn_ms=round(a * 1e3, 1), torchvision_ms=round(b * 1e3, 1), ratio=round(a / b, 3))
            rows.append(row)
            print(row, flush=True)
    cmd = "python benchmarks/bench_reference.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    env = f"torch {torch.__version__}, torchvision {torchvision.__version__}, {platform.machine()}, {args.threads} threads"
    write_csv(f"{args.out}/bench.csv", rows)
    atomic_write_text(f"{args.out}/bench.md", f"# convattn vs torchvision, plain {args.model}\n\nCommand: `{cmd}`\n\n"
                      f"Environment: {env}; fp32, {args.size}², medians of {args.repeats} interleaved repeats.\n\n"
                      + to_markdown(rows, ["model", "batch", "pass_", "convattn_ms", "torchvision_ms", "ratio"],
                                    {"pass_": "pass", "ratio": "convattn / torchvision"}))


if __name__ == "__main__":
    main()

"""convattn's ResNets against the reference libraries' identical networks: plain vs torchvision's (same weights,
outputs checked equal first), SE / ECA / CBAM vs timm's ResNet with the same attention layer (timing only: the
two libraries name the weights differently). Forward and forward + backward, interleaved repeats, medians;
ratio convattn / reference (<= 1.00: as fast).

    python benchmarks/bench_reference.py --model resnet50 --batches 8,32 --repeats 9 --out benchmarks/results/cpu_reference_r50
    python benchmarks/bench_reference.py --refs plain,se,eca,cbam --device cuda --batches 32,128 --amp bfloat16 \
        --channels-last --out benchmarks/results/cuda_reference_r50_bf16_cl
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time

import timm
import torch
import torchvision

from convattn import create_model
from convattn.report import atomic_write_text, to_markdown, write_csv

_LAYERS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


def _reference(model: str, attn: str) -> torch.nn.Module:
    if attn == "plain":
        return torchvision.models.get_model(model, weights=None)
    from timm.models.resnet import Bottleneck, ResNet
    return ResNet(Bottleneck, list(_LAYERS[model]), block_args=dict(attn_layer=attn))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _step(model: torch.nn.Module, x: torch.Tensor, backward: bool, amp: str | None) -> None:
    ctx = torch.autocast(x.device.type, dtype=getattr(torch, amp)) if amp else contextlib.nullcontext()
    if backward:
        model.zero_grad(set_to_none=True)
        with ctx:
            y = model(x)
        y.float().sum().backward()
    else:
        with torch.inference_mode(), ctx:
            model(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--refs", default="plain", help="comma list of plain (torchvision), se, eca, cbam (timm)")
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", choices=["bfloat16", "float16"], default=None)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    rows = []
    for ref_name in args.refs.split(","):
        ours = create_model(args.model, attn=None if ref_name == "plain" else ref_name)
        ref = _reference(args.model, ref_name)
        if ref_name == "plain":
            ref.load_state_dict(ours.state_dict())
        for m in (ours, ref):
            m.to(dev)
            if args.channels_last:
                m.to(memory_format=torch.channels_last)
        for batch in [int(b) for b in args.batches.split(",")]:
            x = torch.randn(batch, 3, args.size, args.size, device=dev)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for backward in (False, True):
                for m in (ours, ref):
                    m.train(backward)
                if ref_name == "plain" and not backward and not args.amp:
                    with torch.no_grad():
                        torch.testing.assert_close(ours(x), ref(x), rtol=1e-3, atol=1e-3)
                for m in (ours, ref):  # warm-up
                    for _ in range(args.warmup):
                        _step(m, x, backward, args.amp)
                times: dict[str, list[float]] = {"convattn": [], "reference": []}
                for r in range(args.repeats):  # interleaved, alternating who goes first: noise hits both sides
                    pair = [("convattn", ours), ("reference", ref)]
                    for key, m in (pair if r % 2 == 0 else pair[::-1]):
                        _sync(dev)
                        t0 = time.perf_counter()
                        _step(m, x, backward, args.amp)
                        _sync(dev)
                        times[key].append(time.perf_counter() - t0)
                a, b = statistics.median(times["convattn"]), statistics.median(times["reference"])
                row = dict(model=args.model, attn=ref_name, reference="torchvision" if ref_name == "plain" else "timm",
                           batch=batch, pass_="fwd+bwd" if backward else "fwd", convattn_ms=round(a * 1e3, 2),
                           reference_ms=round(b * 1e3, 2), ratio=round(a / b, 3))
                rows.append(row)
                print(row, flush=True)
    cmd = "python benchmarks/bench_reference.py " + " ".join(
        f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items()
        if v not in (None, False))
    where = torch.cuda.get_device_name() if dev.type == "cuda" else f"{platform.machine()}, {args.threads} threads"
    env = f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, {where}"
    mode = f"{args.amp or 'fp32'}{' autocast' if args.amp else ''}{', channels_last' if args.channels_last else ''}"
    write_csv(f"{args.out}/bench.csv", rows)
    atomic_write_text(f"{args.out}/bench.md", f"# convattn vs reference networks, {args.model}\n\nCommand: `{cmd}`\n\n"
                      f"Environment: {env}; {mode}, {args.size}², medians of {args.repeats} interleaved repeats.\n\n"
                      + to_markdown(rows, ["model", "attn", "reference", "batch", "pass_", "convattn_ms",
                                           "reference_ms", "ratio"],
                                    {"pass_": "pass", "ratio": "convattn / reference"}))


if __name__ == "__main__":
    main()

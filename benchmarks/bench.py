#!/usr/bin/env python3
"""Benchmarks: convattn modules vs timm, attention ResNets vs the plain ResNet, AWConv2d strategies vs nn.Conv2d.

Every ratio is against a baseline timed in the same run, round-robin (interleaved), so machine noise hits
both sides alike. Forward ("fwd") runs under inference_mode; "fwd+bwd" runs forward, backward of the sum
and clears gradients. Outputs are checked to match before timing (modules vs timm: equal weights).

    python benchmarks/bench.py --suite modules,models,aw --threads 2 --out benchmarks/results/cpu
    python benchmarks/bench.py --suite models --device cuda --amp bfloat16 --channels-last --out benchmarks/results/cuda

Peak memory is reported on CUDA only (torch.cuda.max_memory_allocated); CPU runs leave it empty.
"""
from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from convattn.layers import AWConv2d, CBAM, ECA, SEModule
from convattn.models import create_model, parse_variant
from convattn.report import atomic_write_text, to_markdown, write_csv


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_fns(fns, make_input, dev, warmup: int, repeats: int, backward: bool, amp: str | None):
    """Median ms per call of each fn, interleaved; peak CUDA memory per fn."""
    ctx = (lambda: torch.autocast(dev.type, dtype=getattr(torch, amp))) if amp else (lambda: torch.autocast(dev.type, enabled=False))
    xs = [make_input() for _ in fns]

    def call(i):
        if backward:
            with ctx():
                y = fns[i](xs[i])
            y.float().sum().backward()
        else:
            with torch.inference_mode(), ctx():
                fns[i](xs[i])

    peaks = []
    for i in range(len(fns)):
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(warmup):
            call(i)
        _sync(dev)
        peaks.append(torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None)
    times = [[] for _ in fns]
    for r in range(repeats):
        order = list(range(len(fns)))
        order = order[r % len(order):] + order[:r % len(order)]
        for i in order:
            _sync(dev)
            t0 = time.perf_counter()
            call(i)
            _sync(dev)
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times], peaks


def prep(m: nn.Module, dev, channels_last: bool, compile: bool, train: bool) -> nn.Module:
    m = m.to(dev).train(train)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    return torch.compile(m) if compile else m


def suite_modules(args, dev):
    """Each of SE, ECA, CBAM vs timm's implementation with the same weights."""
    import timm.layers
    from timm.layers.cbam import CbamModule
    rows = []
    shapes = [(32, 256, 56, 56), (32, 1024, 14, 14), (128, 64, 8, 8)]
    for shape in shapes:
        n, c, h, w = shape
        pairs = []
        se = SEModule(c)
        tse = timm.layers.SEModule(c, rd_ratio=1 / 16, rd_divisor=1)
        tse.load_state_dict(se.state_dict())
        pairs.append(("se", se, tse))
        eca = ECA(c)
        teca = timm.layers.EcaModule(None, kernel_size=eca.kernel_size)
        teca.load_state_dict(eca.state_dict())
        pairs.append(("eca", eca, teca))
        cb = CBAM(c).eval()
        tcb = CbamModule(c, rd_ratio=1 / 16, rd_divisor=1, mlp_bias=True).eval()
        sd = tcb.state_dict()
        for a, b in (("fc1", "fc1"), ("fc2", "fc2")):
            sd[f"channel.{b}.weight"] = getattr(cb.channel_gate, a).weight
            sd[f"channel.{b}.bias"] = getattr(cb.channel_gate, a).bias
        sd["spatial.conv.conv.weight"] = cb.spatial_gate.conv.weight.flip(1)
        for k in ("weight", "bias", "running_mean", "running_var"):
            sd[f"spatial.conv.bn.{k}"] = getattr(cb.spatial_gate.bn, k)
        tcb.load_state_dict(sd)
        pairs.append(("cbam", cb, tcb))
        for name, ours, theirs in pairs:
            x = torch.randn(shape)
            torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), atol=1e-5, rtol=1e-4)
            for backward in (False, True):
                fns = [prep(m, dev, args.channels_last, args.compile, backward) for m in (theirs, ours)]

                def mk():
                    t = torch.randn(shape, device=dev, requires_grad=backward)
                    return t.to(memory_format=torch.channels_last) if args.channels_last else t
                (t_timm, t_ours), _ = time_fns(fns, mk, dev, args.warmup, args.repeats, backward, args.amp)
                rows.append(dict(suite="modules", item=name, shape="x".join(map(str, shape)),
                                 mode="fwd+bwd" if backward else "fwd", baseline="timm", baseline_ms=t_timm,
                                 ms=t_ours, ratio=t_ours / t_timm))
                print(rows[-1], flush=True)
    return rows


MODEL_SETS = {
    "resnet50": (224, 32, ["se", "cbam", "eca", "gct", "steam", "aw", "se+aw", "cbam+aw"]),
    "resnet18": (224, 32, ["se", "cbam", "eca", "gct", "steam", "aw"]),
    "resnet56": (32, 128, ["se", "cbam", "eca", "gct", "steam", "aw", "se+aw", "cbam+aw"]),
}


def suite_models(args, dev):
    rows = []
    for name in args.models:
        size, batch, variants = MODEL_SETS[name]
        batch = args.batch or batch
        variants = args.variants or variants
        for backward in (False, True):
            if args.fwd_only and backward:
                continue
            for v in variants:
                base = create_model(name, num_classes=10)
                var = create_model(name, num_classes=10, **parse_variant(v))
                fns = [prep(m, dev, args.channels_last, args.compile, backward) for m in (base, var)]

                def mk():
                    t = torch.randn(batch, 3, size, size, device=dev)
                    return t.to(memory_format=torch.channels_last) if args.channels_last else t
                (tb, tv), (pb, pv) = time_fns(fns, mk, dev, args.warmup, args.repeats, backward, args.amp)
                rows.append(dict(suite="models", item=f"{name}/{v}", shape=f"{batch}x3x{size}x{size}",
                                 mode="fwd+bwd" if backward else "fwd", baseline="plain", baseline_ms=tb, ms=tv,
                                 ratio=tv / tb, peak_mib=pv, baseline_peak_mib=pb))
                print(rows[-1], flush=True)
    return rows


AW_SHAPES = [  # (N, C_in, C_out, H, W, stride): ResNet-50 3x3 convs at batch 32, CIFAR ResNet-56 at batch 128
    (32, 64, 64, 56, 56, 1), (32, 128, 128, 28, 28, 1), (32, 256, 256, 14, 14, 1), (32, 512, 512, 7, 7, 1),
    (32, 128, 128, 56, 56, 2), (32, 512, 512, 14, 14, 2), (128, 16, 16, 32, 32, 1), (128, 64, 64, 8, 8, 1),
]


def suite_aw(args, dev):
    rows = []
    for n, cin, cout, h, w, s in AW_SHAPES:
        for mode in args.aw_modes:
            plain = nn.Conv2d(cin, cout, 3, s, 1, bias=False)
            impls = [i for i in args.aw_impls if i != "taps" or mode != "full"]  # taps: full_g/out/outer
            mods = []
            for impl in impls:
                m = AWConv2d.from_conv(plain, mode=mode, impl=impl, init="small")
                if mods:
                    m.load_state_dict(mods[0].state_dict())
                mods.append(m)
            x = torch.randn(2, cin, h, w)
            ref = mods[0](x)
            for m in mods[1:]:
                torch.testing.assert_close(m(x), ref, atol=1e-4, rtol=1e-4)
            for backward in (False, True):
                if args.fwd_only and backward:
                    continue
                fns = [prep(m, dev, args.channels_last, False, backward) for m in [plain] + mods]

                def mk():
                    t = torch.randn(n, cin, h, w, device=dev, requires_grad=backward)
                    return t.to(memory_format=torch.channels_last) if args.channels_last else t
                ts, peaks = time_fns(fns, mk, dev, args.warmup, args.repeats, backward, args.amp)
                for impl, t, pk in zip(impls, ts[1:], peaks[1:]):
                    if impl == "auto":  # name the strategy the rule picked for this shape and pass
                        with torch.set_grad_enabled(backward):
                            impl = "auto=" + mods[impls.index("auto")]._auto_impl(torch.empty(n, cin, h, w))
                    rows.append(dict(suite="aw", item=f"{mode}/{impl}", shape=f"{n}x{cin}->{cout}x{h}x{w}/s{s}",
                                     mode="fwd+bwd" if backward else "fwd", baseline="nn.Conv2d", baseline_ms=ts[0],
                                     ms=t, ratio=t / ts[0], peak_mib=pk, baseline_peak_mib=peaks[0]))
                    print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="modules,models,aw")
    ap.add_argument("--models", default="resnet56,resnet18,resnet50")
    ap.add_argument("--aw-modes", default="full,full_g,out,outer")
    ap.add_argument("--aw-impls", default="fold,unfold,loop,taps,auto",
                    help="AWConv2d strategies to time (taps is skipped for mode full; auto names its pick)")
    ap.add_argument("--variants", default=None, help="override the variants of the models suite")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=None, help="override the model batch size")
    ap.add_argument("--amp", choices=["bfloat16", "float16"], default=None)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--fwd-only", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    args.aw_modes = [m for m in args.aw_modes.split(",") if m]
    args.aw_impls = [m for m in args.aw_impls.split(",") if m]
    args.variants = [v for v in args.variants.split(",") if v] if args.variants else None
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    rows = []
    for s in args.suite.split(","):
        rows += {"modules": suite_modules, "models": suite_models, "aw": suite_aw}[s](args, dev)
    out = Path(args.out)
    cols = ["suite", "item", "shape", "mode", "baseline", "baseline_ms", "ms", "ratio", "peak_mib", "baseline_peak_mib"]
    write_csv(out / "bench.csv", rows, cols)
    env = (f"torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()} "
           f"{platform.processor()}, {torch.get_num_threads()} threads, device {dev}"
           + (f" ({torch.cuda.get_device_name()})" if dev.type == "cuda" else "")
           + f", amp {args.amp or 'off'}, channels_last {args.channels_last}, compile {args.compile}")
    md = (f"# convattn benchmarks\n\nCommand: `python benchmarks/bench.py {shlex.join(sys.argv[1:])}`\n\n"
          f"Environment: {env}\n\nTimes are medians (ms) of interleaved runs; ratio = ms / baseline_ms from the "
          "same run (< 1 is faster than the baseline).\n\n" + to_markdown(rows, cols[:8]))
    atomic_write_text(out / "bench.md", md)
    print(f"wrote {out / 'bench.csv'} and {out / 'bench.md'}")


if __name__ == "__main__":
    main()

"""``torch.compile`` training throughput per variant: eager vs compiled training steps (forward, loss, backward,
SGD step) of the same model, weights and in-memory batches, timed interleaved; the compile time, the steps it
takes to pay for itself, and ``torch._dynamo.explain``'s graph and break counts of the training forward.

    python benchmarks/bench_compile.py --model resnet20 --batch-size 64 --out benchmarks/results/cpu_compile_r20

Each round times ``--steps`` steps of one side and then of the other (the first side alternates between
rounds); img/s is the batch over the median step time. The compiled loss of the first step is checked
against the eager one (same weights, same batch) before timing.
"""
from __future__ import annotations

import argparse
import copy
import platform
import shlex
import statistics
import sys
import time

import torch
import torch._inductor.config as inductor_config
from torch import nn

from convattn.data import DataBundle
from convattn.engine import compile_model, seed_all
from convattn.report import atomic_write_text, to_markdown, write_csv
from convattn.tasks.classification import TrainConfig, build_model, data_for, resolve_config


def batches(data: DataBundle, batch_size: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` full training batches of the run's real data, held in memory."""
    out = []
    for x, y in data.train.epoch(1):
        if len(y) == batch_size:
            out.append((x.contiguous(), y))
        if len(out) == count:
            break
    return out


class Stepper:
    """One model and its SGD optimizer; ``step(x, y)`` is one training step, returning the loss."""

    def __init__(self, model: nn.Module, compile: bool) -> None:
        self.model = model.train()
        self.net = compile_model(model) if compile else model  # the engine's torch.compile (train --compile)
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.loss_fn = nn.CrossEntropyLoss()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        loss = self.loss_fn(self.net(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def explain_counts(model: nn.Module, x: torch.Tensor) -> tuple[int, int, list[str]]:
    """Graphs, graph breaks and break reasons of the training forward + loss (on a copy: BN statistics move)."""
    import torch._dynamo as dynamo
    m = copy.deepcopy(model).train()
    e = dynamo.explain(lambda t: m(t).sum())(x)
    dynamo.reset()
    return e.graph_count, e.graph_break_count, sorted({str(b.reason).splitlines()[0] for b in e.break_reasons})


def bench_variant(cfg: TrainConfig, steps: int, rounds: int) -> dict:
    seed_all(cfg.seed)
    bundle = data_for(cfg, cfg.batch_size)
    data = batches(bundle, cfg.batch_size, steps)
    model = build_model(cfg, bundle)
    graphs, breaks, reasons = explain_counts(model, data[0][0])
    eager, comp = Stepper(copy.deepcopy(model), False), Stepper(copy.deepcopy(model), True)
    x0, y0 = data[0]
    t0 = time.perf_counter()
    loss_c = comp.step(x0, y0)  # first call: traces and compiles forward and backward
    t1 = time.perf_counter()
    loss_e = eager.step(x0, y0)
    t_compile = (t1 - t0) - (time.perf_counter() - t1)  # the first compiled step minus one eager step
    if abs(loss_c - loss_e) > 1e-3 * max(1.0, abs(loss_e)):
        raise RuntimeError(f"{cfg.variant}: compiled loss {loss_c:.6f} != eager {loss_e:.6f}")
    comp.step(*data[1 % len(data)])  # a second compiled step (recompiles would show here, not in the timing)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for r in range(rounds):
        sides = [("eager", eager), ("compiled", comp)]
        for name, s in (sides if r % 2 == 0 else sides[::-1]):
            for x, y in data:
                t = time.perf_counter()
                s.step(x, y)
                times[name].append(time.perf_counter() - t)
    te, tc = statistics.median(times["eager"]), statistics.median(times["compiled"])
    gain = te - tc
    return dict(model=cfg.model, variant=cfg.variant, batch=cfg.batch_size, graphs=graphs, graph_breaks=breaks,
                eager_img_s=round(cfg.batch_size / te, 1), compiled_img_s=round(cfg.batch_size / tc, 1),
                speedup=round(te / tc, 3), compile_s=round(t_compile, 1),
                break_even_steps=round(t_compile / gain) if gain > 0 else "never",
                break_reasons="; ".join(reasons))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--variants", default="none,se,cbam,eca,gct,steam,aw,se+aw,cbam+aw")
    ap.add_argument("--data", default="embedded")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="training steps per side per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warm-cache", action="store_true",
                    help="let inductor reuse its on-disk caches (default: off, so compile_s is a cold compile)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not args.warm_cache:
        inductor_config.force_disable_caches = True
    rows = []
    for v in args.variants.split(","):
        cfg = resolve_config(TrainConfig(model=args.model, variant=v, data=args.data, batch_size=args.batch_size,
                                         workers=0, progress=False, threads=args.threads))
        rows.append(bench_variant(cfg, args.steps, args.rounds))
        print(rows[-1], flush=True)
    cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    cols = ["model", "variant", "batch", "graphs", "graph_breaks", "eager_img_s", "compiled_img_s", "speedup",
            "compile_s", "break_even_steps"]
    write_csv(f"{args.out}/bench.csv", rows)
    atomic_write_text(f"{args.out}/bench.md", f"# torch.compile training throughput\n\nCommand: `{cmd}`\n\n"
                      f"Environment: torch {torch.__version__}, {platform.machine()} ({platform.processor() or 'cpu'}), "
                      f"{args.threads} threads, fp32, inductor (default mode, the engine's options: "
                      "convattn.engine.compile_model); training step = forward, cross-entropy, "
                      f"backward, SGD step; median over {args.rounds} alternating rounds of {args.steps} steps per side. "
                      f"compile_s: first compiled step minus one eager step ({'warm' if args.warm_cache else 'cold'} inductor caches); "
                      "break_even_steps: compile_s over the "
                      "per-step saving. graphs / graph_breaks: torch._dynamo.explain of the training forward.\n\n"
                      + to_markdown(rows, cols, {"speedup": "eager / compiled step time"}))


if __name__ == "__main__":
    main()

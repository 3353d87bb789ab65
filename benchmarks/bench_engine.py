"""The ``train`` engine against a bare PyTorch loop over the same in-memory data, model, optimizer groups and
schedule: training images per second of each epoch's training loop (evaluation excluded on both sides),
alternating engine and bare runs so that machine noise hits both; ratio bare / engine throughput (<= 1.05: the
engine costs at most 5 %).

    python benchmarks/bench_engine.py --variants none,steam,aw --epochs 2 --rounds 3 --out benchmarks/results/cpu_engine
"""
from __future__ import annotations

import argparse
import csv
import functools
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from convattn.report import atomic_write_text, to_markdown, write_csv
from convattn.engine import create_scheduler, param_groups, seed_all
from convattn.tasks.classification import TrainConfig, build_model, data_for, evaluate, resolve_config, train


def engine_epochs(cfg: TrainConfig) -> list[float]:
    """Images/s of each epoch of a real ``train`` run (its own metrics)."""
    with tempfile.TemporaryDirectory() as d:
        train(TrainConfig(**{**cfg.__dict__, "out": d}))
        rows = list(csv.DictReader(open(Path(d) / "metrics.csv")))
    return [float(r["images_per_s"]) for r in rows]


def bare_epochs(cfg: TrainConfig, evaluate_each_epoch: bool = False) -> list[float]:
    """Images/s of the same training written as a plain loop (no checks, metrics, progress or checkpoints); with
    ``evaluate_each_epoch`` it also evaluates on the validation set after every epoch (untimed), as the engine does."""
    seed_all(cfg.seed)
    data = data_for(cfg, cfg.batch_size)
    model = build_model(cfg, data)
    opt = torch.optim.SGD(param_groups(model, cfg.lr, cfg.weight_decay, cfg.wd_exclude, cfg.attn_lr_mult),
                          lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    steps = len(data.train)
    sched = create_scheduler(opt, cfg.schedule, steps, cfg.epochs, int(round(cfg.warmup_epochs * steps)), cfg.warmup_lr,
                             cfg.min_lr, cfg.milestones, cfg.gamma)
    loss_fn = torch.nn.CrossEntropyLoss()
    out, updates = [], 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        n, t0 = 0, time.perf_counter()
        for x, y in data.train.epoch(epoch):
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            updates += 1
            sched.step_update(updates)
            n += len(y)
        out.append(n / (time.perf_counter() - t0))
        if evaluate_each_epoch:
            evaluate(model, data.val, torch.device("cpu"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--variants", default="none,steam,aw")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-size", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bare-eval", action="store_true", help="the bare loop also evaluates after every epoch (untimed)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for v in args.variants.split(","):
        cfg = resolve_config(TrainConfig(model=args.model, variant=v, epochs=args.epochs, train_size=args.train_size,
                                         batch_size=args.batch_size, workers=0, progress=False,
                                         threads=args.threads))
        eng, bare = [], []
        bare_fn = functools.partial(bare_epochs, evaluate_each_epoch=args.bare_eval)
        # alternating, each side first in every other round: the machine's drifts and warm-up hit both sides alike
        for r in range(args.rounds):
            first, second = (engine_epochs, bare_fn) if r % 2 == 0 else (bare_fn, engine_epochs)
            a, b = first(cfg), second(cfg)
            eng += a if first is engine_epochs else b
            bare += b if first is engine_epochs else a
        e, b = statistics.median(eng), statistics.median(bare)
        rows.append(dict(model=args.model, variant=v, engine_img_s=round(e, 1), bare_img_s=round(b, 1),
                         ratio=round(b / e, 3)))
        print(rows[-1], flush=True)
    cmd = "python benchmarks/bench_engine.py " + " ".join(
        f"--{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v}") for k, v in vars(args).items()
        if v is not False)
    write_csv(f"{args.out}/bench.csv", rows)
    atomic_write_text(f"{args.out}/bench.md", f"# train engine vs a bare loop\n\nCommand: `{cmd}`\n\n"
                      f"Environment: torch {torch.__version__}, {platform.machine()}, {args.threads} threads; median "
                      f"training images/s over {args.rounds} alternating rounds of {args.epochs} epochs.\n\n"
                      + to_markdown(rows, ["model", "variant", "engine_img_s", "bare_img_s", "ratio"],
                                    {"ratio": "bare / engine (≤ 1.05: within 5 %)"}))


if __name__ == "__main__":
    main()

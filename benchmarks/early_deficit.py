"""Where does the early deficit of gated attention modules in short studies come from? (issue 27, part 1)

Trains CIFAR ResNet-20 (1 input channel, 10 classes) on the embedded Fashion-MNIST subset with the default
study's recipe and evaluates top-1 on the 2,000 embedded validation images after a fixed number of updates. Arms
are paired by seed (a seed fixes the initialisation of the shared layers, the data order and the augmentation for
every arm), and every table reports the paired gap ``arm - none`` (same seed, same cause) as mean ± std over seeds.

The recipe is the one the committed default study resolved to (reports/default_study/study.json): SGD momentum 0.9
with Nesterov, lr 0.05, batch 32, weight decay 5e-4 (decay kept off module-declared parameters: ``declared``),
timm cosine schedule to 0 stepped per update with a linear warm-up from 1e-4, no label smoothing, fp32. The default
study trains 2 epochs and warms up for 0.25 epochs, i.e. for 1/8 of its updates; so a run of N updates here is
what a 2-epoch study of that length would be: ``N * 32 / 2`` training images (the class-balanced subset of the
embedded set that ``--train-size`` picks; at most its 10,000 images, more epochs then), a cosine schedule over
exactly N updates (``--schedule per-run``: every update count is its own run, so each ends at LR 0 as a study of
that length does) and round(N / 8) warm-up updates. ``--schedule single`` instead trains one run to the largest
count and evaluates at the others on the way (cheaper, but those evaluations happen at a high LR).

The loop is the engine's update (``convattn.engine.loop.Loop``: zero_grad, backward, SGD step, then the
scheduler's ``step_update``) written out so that it can stop and evaluate at any update; seeds as ``convattn
train`` sets them (``seed_all`` before data and model, ``torch.manual_seed(seed * 100_003 + epoch)`` per epoch);
the data (``convattn.tasks.classification.data_for``), model (``build_model``), parameter groups
(``engine.optim``), scheduler (``engine.schedule``) and evaluation (``tasks.classification.evaluate``) are
convattn's own. Checked: a 78-update run on 1,250 images (``--updates 78 --train-size 1250``) gives the top-1
that ``convattn train --train-size 1250 --epochs 2 --batch-size 32 --lr 0.05 --warmup-epochs 0.25 --threads 1``
gives (none 68.65, se 62.55, seed 0).

Causes (``--cause``, one at a time; each re-runs only the arms it affects and reuses the others' runs):

* ``default``: the arms as the study trains them.
* ``identity``: every gated module wrapped as ``y = x + s * (m(x) - x)``, ``s`` a scalar initialised to 0 and kept
  out of weight decay (``convattn.models.attach.ResidualScale``, what ``attach(identity=True)`` does).
* ``zero_init_last``: the last BN of every residual block starts at gamma = 0 (``--zero-init-last``); every arm,
  the baseline included.
* ``lr``: peak LR ``--lr`` (default here 0.1, twice the study's); every arm.
* ``warmup``: warm-up of ``--warmup-frac`` of the run (default here 0, no warm-up); every arm.
* ``no_gate_wd``: no weight decay on the attention modules' parameters; gated arms.
* ``se_width``: SE/CBAM hidden width rounded to multiples of ``--rd-divisor`` (default 8, timm's rule: 8 hidden
  units on every stage instead of the official 1/2/4 at ratio 1/16); se and cbam.
* ``gate_bias``: the bias in front of each sigmoid gate set to ``--gate-bias`` (default 3: sigmoid 0.95) so the
  gate starts near 1 instead of 0.5; no module has this as an option, the script sets the bias after the model is
  built: SE ``fc2.bias``, CBAM channel MLP ``fc2.bias`` (to half the value: the MLP runs on two pools whose
  outputs are summed) and its spatial gate's BN bias, coord ``conv_h``/``conv_w`` biases. ECA and STEAM have no
  bias before their sigmoid, so they are not run.

Results accumulate in ``<out>/runs.csv`` (one row per run and evaluation; finished runs are skipped when the
command is repeated), and every invocation rewrites ``<out>/gaps.csv`` and ``<out>/gaps.md`` from all rows.

Example (the committed study, reports/early_deficit/README.md):

    OMP_NUM_THREADS=1 python benchmarks/early_deficit.py --cause default --updates 80,250 --out reports/early_deficit
"""
from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from convattn.engine.common import seed_all
from convattn.engine.optim import attention_parameter_names, param_groups
from convattn.engine.schedule import create_scheduler
from convattn.tasks.classification import TrainConfig, build_model, data_for, evaluate, resolve_config

ARMS = ["none", "se", "eca", "cbam", "steam", "coord"]
GATED = ARMS[1:]
# the recipe the committed default study resolved to (reports/default_study/study.json)
RECIPE = dict(model="resnet20", data="embedded", preset="fmnist", batch_size=32, lr=0.05, momentum=0.9,
              nesterov=True, weight_decay=5e-4, wd_exclude="declared", schedule="cosine", warmup_lr=1e-4,
              min_lr=0.0, label_smoothing=0.0)
STUDY_EPOCHS = 2  # the default study's epochs: a run of N updates sees N * batch / 2 images twice
WARMUP_FRAC = 0.125  # 0.25 of 2 epochs
EMBEDDED_TRAIN = 10_000

# cause -> (arms it affects, whether the baseline is among them)
CAUSES: dict[str, list[str]] = {
    "default": ARMS,
    "identity": GATED,
    "zero_init_last": ARMS,
    "lr": ARMS,
    "warmup": ARMS,
    "no_gate_wd": GATED,
    "se_width": ["se", "cbam"],
    "gate_bias": ["se", "cbam", "coord"],
}
RUN_FIELDS = ["cause", "setting", "arm", "seed", "run_updates", "updates", "top1", "val_loss", "train_images",
              "epochs", "warmup_updates", "lr"]


def setting_of(cause: str, args: argparse.Namespace) -> str:
    """The cause's parameter as text (part of a run's key, so that two settings of one cause never mix)."""
    return {"default": "", "identity": "s0=0", "zero_init_last": "gamma0=0", "lr": f"lr={args.lr:g}",
            "warmup": f"warmup={args.warmup_frac:g}", "no_gate_wd": "wd_attn=0",
            "se_width": f"rd_divisor={args.rd_divisor}", "gate_bias": f"bias={args.gate_bias:g}"}[cause]


def _residual_scale():
    from convattn.models.attach import ResidualScale
    return ResidualScale


def wrap_identity(model: nn.Module) -> int:
    """Wrap every attached output attention (a module's ``attn`` child, e.g. ``layer1.0.bn2.attn``) in ResidualScale;
    returns how many."""
    rs = _residual_scale()
    n = 0
    for block in [m for m in model.modules() if isinstance(getattr(m, "attn", None), nn.Module)]:
        if not isinstance(block.attn, (nn.Identity, rs)):
            block.attn = rs(block.attn)
            n += 1
    return n


@torch.no_grad()
def set_gate_bias(model: nn.Module, arm: str, bias: float) -> int:
    """Set the bias in front of every sigmoid gate of ``arm``'s modules; returns how many gates were set."""
    from convattn.layers.cbam import CBAM
    from convattn.layers.coord import CoordAttention
    from convattn.layers.se import SEModule
    n = 0
    for m in model.modules():
        if isinstance(m, SEModule):
            m.fc2.bias.fill_(bias)
            n += 1
        elif isinstance(m, CBAM):
            if m.channel_gate.fc2.bias is None:
                raise ValueError("CBAM without MLP bias: no gate bias to set")
            m.channel_gate.fc2.bias.fill_(bias / 2)  # mlp(avg) + mlp(max): the bias counts twice
            n += 1
            if m.spatial_gate is not None:
                m.spatial_gate.bn.bias.fill_(bias)
                n += 1
        elif isinstance(m, CoordAttention):
            m.conv_h.bias.fill_(bias)
            m.conv_w.bias.fill_(bias)
            n += 2
    if n == 0:
        raise ValueError(f"gate_bias: {arm} has no gate bias this script knows how to set")
    return n


def run_length(updates: int, batch: int, images: int | None = None) -> tuple[int, int]:
    """(training images, epochs) of a 2-epoch study of ``updates`` updates on the embedded set (or of a run on
    ``images`` training images)."""
    images = images or min(EMBEDDED_TRAIN, updates * batch // STUDY_EPOCHS)
    steps = images // batch
    return images, math.ceil(updates / steps)


def train_one(arm: str, seed: int, run_updates: int, eval_at: list[int], cause: str,
              args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train one run of ``run_updates`` updates (schedule over exactly that many); top-1 at each of ``eval_at``."""
    images, epochs = run_length(run_updates, RECIPE["batch_size"], args.train_size)
    kw: dict[str, Any] = dict(RECIPE, variant=arm, train_size=images, epochs=epochs, seed=seed, threads=1,
                              progress=False)
    if cause == "zero_init_last":
        kw["zero_init_last"] = True
    if cause == "lr":
        kw["lr"] = args.lr
    if cause == "se_width":
        kw["attn_kwargs"] = {"rd_divisor": args.rd_divisor}
    warmup_frac = args.warmup_frac if cause == "warmup" else WARMUP_FRAC
    warmup_frac = min(warmup_frac, 1.0)
    kw["warmup_epochs"] = warmup_frac * epochs  # only checked by resolve_config; the steps are set below
    cfg = resolve_config(TrainConfig(**kw))
    torch.set_num_threads(1)
    seed_all(cfg.seed)
    data = data_for(cfg, cfg.batch_size, 500, workers=0)
    if (getattr(data.train, "pad", None), getattr(data.train, "flip", None)) != (2, True):  # the committed runs'
        raise RuntimeError("the embedded training pipeline is no longer pad 2 + random crop + h-flip, which every "
                           "run in reports/early_deficit used; pin it before adding runs to that folder")
    model = build_model(cfg, data)
    if cause == "identity":
        wrap_identity(model)
    if cause == "gate_bias":
        set_gate_bias(model, arm, args.gate_bias)
    groups = param_groups(model, cfg.lr, cfg.weight_decay, cfg.wd_exclude, cfg.attn_lr_mult)
    if cause == "no_gate_wd":  # attention parameters move to a decay-free group
        attn = {id(p) for n, p in model.named_parameters() if n in attention_parameter_names(model)}
        if not attn:
            raise ValueError(f"no_gate_wd: {arm} has no attention parameters")
        moved = []
        for g in groups:
            keep = [p for p in g["params"] if id(p) not in attn]
            moved += [p for p in g["params"] if id(p) in attn]
            g["params"] = keep
        groups = [g for g in groups if g["params"]] + [{"params": moved, "weight_decay": 0.0, "lr": cfg.lr}]
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    warmup = int(round(warmup_frac * run_updates))
    # one "epoch" of run_updates steps: the cosine spans exactly the run (t_initial = run_updates)
    sched = create_scheduler(opt, cfg.schedule, run_updates, 1, warmup, cfg.warmup_lr, cfg.min_lr)
    crit = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    rows, updates, want = [], 0, sorted(set(eval_at))
    for epoch in range(1, epochs + 1):
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # as the engine's loop
        model.train()
        for x, y in data.train.epoch(epoch):
            loss = crit(model(x).float(), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{arm} seed {seed}: loss {loss.item()} at update {updates}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            updates += 1
            sched.step_update(updates)
            if updates in want:
                ev = evaluate(model, data.val, torch.device("cpu"))
                rows.append(dict(cause=cause, setting=setting_of(cause, args), arm=arm, seed=seed,
                                 run_updates=run_updates, updates=updates, top1=round(ev["top1"], 3),
                                 val_loss=round(ev["loss"], 5), train_images=images, epochs=epochs,
                                 warmup_updates=warmup, lr=cfg.lr))
            if updates >= run_updates:
                return rows
    raise RuntimeError(f"ran out of data at {updates} of {run_updates} updates")


@torch.no_grad()
def gate_stats(arms: list[str], seeds: list[int], out: Path, images: int = 256) -> str:
    """Mean gate value at initialisation per arm and stage: each block's attention(x) on the input it sees for the
    first ``images`` validation images (a network's product of gates when a module has two, e.g. CBAM's channel
    and spatial gates), written to ``gate_init.csv``; returns a Markdown table."""
    rows = []
    for arm in [a for a in arms if a != "none"]:
        for seed in seeds:
            cfg = resolve_config(TrainConfig(**dict(RECIPE, variant=arm, train_size=1280, epochs=2, seed=seed,
                                                    warmup_epochs=0.25, threads=1, progress=False)))
            seed_all(seed)
            data = data_for(cfg, cfg.batch_size, images, workers=0)
            model = build_model(cfg, data).train()  # training-mode BN, as the first updates see it
            seen: dict[str, torch.Tensor] = {}
            hooks = [m.attn.register_forward_hook(lambda mod, inp, outp, n=n: seen.__setitem__(n, inp[0]))
                     for n, m in model.named_modules()
                     if isinstance(getattr(m, "attn", None), nn.Module) and not isinstance(m.attn, nn.Identity)]
            x, _ = next(iter(data.val.epoch(0)))
            model(x)
            for h in hooks:
                h.remove()
            for name, inp in seen.items():
                gates = model.get_submodule(name).attn.attention(inp)
                prod = torch.ones(())
                for g in gates.values():
                    prod = prod * g
                stage = int(name.split(".")[0].replace("layer", "")) if name.startswith("layer") else 0
                rows.append(dict(arm=arm, seed=seed, block=name, stage=stage, gates="*".join(gates),
                                 mean=float(prod.mean()), std=float(prod.std())))
    with (out / "gate_init.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    md = ["| arm | gates | stage 1 | stage 2 | stage 3 |", "|---|---|---|---|---|"]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        cells = []
        for st in (1, 2, 3):
            v = [r["mean"] for r in mine if r["stage"] == st]
            cells.append(f"{np.mean(v):.3f}" if v else "")
        md.append(f"| {arm} | {mine[0]['gates']} | " + " | ".join(cells) + " |")
    return "\n".join(md) + "\n"


# --- results ---

def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open() as f:
        return [dict(r, seed=int(r["seed"]), run_updates=int(r["run_updates"]), updates=int(r["updates"]),
                     top1=float(r["top1"])) for r in csv.DictReader(f)]


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, RUN_FIELDS)
        if new:
            w.writeheader()
        w.writerows(rows)


def _mean_std(v: list[float]) -> tuple[float, float]:
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"))


def _fmt(m: float, s: float) -> str:
    return f"{m:+.2f} ± {s:.2f}" if s == s else f"{m:+.2f}"


def gap_tables(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Paired gaps of every (cause, setting, schedule, arm, updates): ``arm - none`` of the same seed, where the
    baseline is the cause's own when the cause changes it, else the default one; and ``arm - default arm``."""
    by: dict[tuple, dict[int, float]] = {}
    for r in rows:
        by.setdefault((r["cause"], r["setting"], r["run_updates"], r["updates"], r["arm"]), {})[r["seed"]] = r["top1"]
    out, md = [], []
    causes = list(dict.fromkeys([r["cause"] for r in rows]))
    causes.sort(key=lambda c: list(CAUSES).index(c))
    for cause in causes:
        settings = list(dict.fromkeys(r["setting"] for r in rows if r["cause"] == cause))
        for setting in settings:
            cells = sorted({(r["run_updates"], r["updates"]) for r in rows
                            if r["cause"] == cause and r["setting"] == setting})
            arms = [a for a in ARMS if any(k[0] == cause and k[1] == setting and k[4] == a for k in by)]
            table = []
            for arm in arms:
                row_md: dict[str, str] = {"arm": arm}
                for ru, u in cells:
                    mine = by.get((cause, setting, ru, u, arm), {})
                    base = by.get((cause, setting, ru, u, "none")) or by.get(("default", "", ru, u, "none"), {})
                    dflt = by.get(("default", "", ru, u, arm), {})
                    col = f"{u}" if ru == u else f"{u} (of {ru})"
                    if not mine:
                        continue
                    acc = _mean_std(list(mine.values()))
                    seeds = sorted(s for s in mine if s in base)
                    gap = _mean_std([mine[s] - base[s] for s in seeds]) if seeds and arm != "none" else None
                    dseeds = sorted(s for s in mine if s in dflt)
                    change = (_mean_std([mine[s] - dflt[s] for s in dseeds])
                              if dseeds and cause != "default" else None)
                    out.append(dict(cause=cause, setting=setting, arm=arm, run_updates=ru, updates=u,
                                    seeds=len(mine), top1_mean=round(acc[0], 3), top1_std=round(acc[1], 3),
                                    gap_vs_none=round(gap[0], 3) if gap else "",
                                    gap_std=round(gap[1], 3) if gap and gap[1] == gap[1] else "",
                                    gap_seeds=len(seeds) if gap else "",
                                    change_vs_default=round(change[0], 3) if change else "",
                                    change_std=round(change[1], 3) if change and change[1] == change[1] else ""))
                    txt = f"{acc[0]:.2f}"
                    if gap:
                        txt += f", gap {_fmt(*gap)}"
                    if change:
                        txt += f", vs default {_fmt(*change)}"
                    row_md[col] = txt + (f" ({len(mine)} seeds)" if len(mine) != 3 else "")
                table.append(row_md)
            cols = ["arm"] + [f"{u}" if ru == u else f"{u} (of {ru})" for ru, u in cells]
            md += [f"### {cause}" + (f" ({setting})" if setting else ""), "",
                   "| " + " | ".join(["arm"] + [f"top-1 after {c} updates" for c in cols[1:]]) + " |",
                   "|" + "---|" * len(cols)]
            for r in table:
                md.append("| " + " | ".join(r.get(c, "") for c in cols) + " |")
            md.append("")
    return out, "\n".join(md)


def write_report(out: Path) -> str:
    rows = read_rows(out / "runs.csv")
    gaps, md = gap_tables(rows)
    if gaps:
        with (out / "gaps.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, list(gaps[0]))
            w.writeheader()
            w.writerows(gaps)
    text = ("# Early deficit: paired gaps at fixed update counts\n\n"
            "Cells: mean top-1 % over seeds; *gap*: arm − none of the same seed (the cause's own baseline when "
            "the cause changes the baseline, else the default one), mean ± std over seeds; *vs default*: the arm "
            "under this cause − the same arm by default, same seed. Column `N`: a run of N updates with its own "
            "schedule; `u (of N)`: evaluated at update u of a run of N. Commands: README.md of this folder.\n\n"
            + md + "\n")
    (out / "gaps.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cause", default="default", choices=list(CAUSES), help="what to change (one at a time)")
    p.add_argument("--arms", default=None, help="comma-separated arms (default: the arms the cause affects)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--updates", default="80,250", help="update counts (comma-separated)")
    p.add_argument("--schedule", default="per-run", choices=["per-run", "single"],
                   help="per-run: each update count is a run with its own cosine schedule; single: one run to the "
                        "largest count, evaluated at each")
    p.add_argument("--lr", type=float, default=0.1, help="cause lr: the peak LR (study: 0.05)")
    p.add_argument("--warmup-frac", type=float, default=0.0, help="cause warmup: warm-up fraction (study: 0.125)")
    p.add_argument("--rd-divisor", type=int, default=8, help="cause se_width: SE/CBAM hidden width divisor")
    p.add_argument("--gate-bias", type=float, default=3.0, help="cause gate_bias: bias before the sigmoid")
    p.add_argument("--train-size", type=int, default=None,
                   help="training images of every run (default: updates x 32 / 2, a 2-epoch study of that length)")
    p.add_argument("--out", default="runs/early_deficit")
    p.add_argument("--report-only", action="store_true", help="rewrite gaps.csv/gaps.md from runs.csv")
    p.add_argument("--gate-stats", action="store_true",
                   help="only the mean gate value at initialisation per arm and stage (gate_init.csv / .md)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.gate_stats:
        md = gate_stats(args.arms.split(",") if args.arms else GATED, [int(s) for s in args.seeds.split(",")], out)
        (out / "gate_init.md").write_text("# Mean gate value at initialisation (training-mode BN, 256 validation "
                                          "images; product of a module's gates)\n\n" + md)
        print(md)
        return
    if not args.report_only:
        arms = args.arms.split(",") if args.arms else CAUSES[args.cause]
        bad = [a for a in arms if a not in CAUSES[args.cause]]
        if bad:
            p.error(f"cause {args.cause} does not affect {bad}; its arms: {CAUSES[args.cause]}")
        counts = sorted({int(u) for u in args.updates.split(",")})
        runs = [(c, [c]) for c in counts] if args.schedule == "per-run" else [(counts[-1], counts)]
        setting = setting_of(args.cause, args)
        done = {(r["cause"], r["setting"], r["arm"], r["seed"], r["run_updates"], r["updates"])
                for r in read_rows(out / "runs.csv")}
        for run_updates, eval_at in runs:
            for seed in [int(s) for s in args.seeds.split(",")]:
                for arm in arms:
                    if all((args.cause, setting, arm, seed, run_updates, u) in done for u in eval_at):
                        continue
                    t0 = time.perf_counter()
                    rows = train_one(arm, seed, run_updates, eval_at, args.cause, args)
                    append_rows(out / "runs.csv", rows)
                    print(f"{args.cause} {setting} {arm} seed {seed} run {run_updates}: "
                          + ", ".join(f"{r['updates']} -> {r['top1']:.2f}" for r in rows)
                          + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(write_report(out))


if __name__ == "__main__":
    main()

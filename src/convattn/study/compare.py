"""``convattn compare``: train a baseline and attention variants under one recipe and several seeds, then report
accuracy (mean ± std over seeds), parameters, MACs, measured latency and training time in one table.

Resumable: finished runs (``final.json``) are read back, unfinished ones resume from their last epoch
checkpoint, and the report is rebuilt from whatever has finished. All files are written atomically.
"""
from __future__ import annotations

import json
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..models import DEFAULT_VARIANTS, parse_variant
from ..profile.counting import count_complexity
from ..profile.latency import measure_latency, prepare_for_timing
from ..report import atomic_write_text, print_table, save_figure, to_markdown, write_csv
from ..tasks.classification import TrainConfig, build_model, data_for, resolve_config, train
from ..validate import ConfigError
from .stats import check_study, paired_cells, paired_deltas, per_seed_table, slug, welch

__all__ = ["CompareConfig", "run_compare", "DEFAULT_STUDY"]

# The README's main job: ResNet-20 on the embedded Fashion-MNIST subset, sized to finish in under
# 15 minutes on 2 CPU cores.
DEFAULT_STUDY = dict(model="resnet20", data="embedded", train_size=4000, epochs=2, seeds=[0, 1, 2], batch_size=64,
                     lr=0.05, warmup_epochs=0.25)


@dataclass
class CompareConfig:
    model: str = DEFAULT_STUDY["model"]
    variants: Sequence[str] = DEFAULT_VARIANTS
    seeds: Sequence[int] = tuple(DEFAULT_STUDY["seeds"])
    data: str = DEFAULT_STUDY["data"]
    data_dir: str | None = None
    out: str = "runs/compare"
    train: dict[str, Any] = field(default_factory=lambda: {k: DEFAULT_STUDY[k] for k in (
        "train_size", "epochs", "batch_size", "lr", "warmup_epochs")})
    threads: int | None = None
    latency_batch: int = 64
    latency_repeats: int = 10
    progress: bool = True
    report_only: bool = False  # train nothing; report the finished runs (a partial study says so)


def _default_aw_mode(model: str) -> str:
    """What AWConv2d's mode is when the study does not set one (see convattn.models.resnet / attach)."""
    from ..models.backbones import is_backbone_name
    if is_backbone_name(model):
        return "full_g where its grouped generator divides the conv, else full (attach default)"
    return "full (CIFAR-ResNet default)" if model in ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110") \
        else "full_g (ImageNet-ResNet default)"


def _module_lines(base: TrainConfig, variants: Sequence[str]) -> str:
    """The options each attention module of the study ran with (constructor and registry defaults, then the
    study's --attn-kwargs / --conv-kwargs), read from the code, never fixed text."""
    from ..layers import module_options
    names: dict[str, dict[str, Any]] = {}
    for v in variants:
        parts = parse_variant(v)
        for a in (parts["attn"] or "").split("+"):
            if a and a != "none":
                names.setdefault(a, base.attn_kwargs)
        if parts["conv"] == "aw":
            names.setdefault("aw", base.conv_kwargs)
    lines = []
    for name, kwargs in names.items():
        opts = {k: repr(v) for k, v in module_options(name, kwargs).items()}
        if name == "aw" and "mode" not in kwargs:
            opts["mode"] = _default_aw_mode(base.model)
        lines.append(f"{name}: " + ", ".join(f"{k}={v}" for k, v in opts.items()))
    return ("Module options (code defaults, then this study's options): " + "; ".join(lines) + ".") if lines else ""


def _base_config(cfg: CompareConfig, variants: Sequence[str]) -> TrainConfig:
    """The study's recipe, resolved once; module options (``--attn-kwargs``/``--conv-kwargs``) are kept for the
    variants that have the module (see ``_variant_config``) and refused when no variant has it."""
    train = dict(cfg.train)
    attn_kwargs, conv_kwargs = train.pop("attn_kwargs", None) or {}, train.pop("conv_kwargs", None) or {}
    parts = [parse_variant(v) for v in variants]
    if attn_kwargs and not any(p["attn"] for p in parts):
        raise ConfigError(f"attn_kwargs (--attn-kwargs) {attn_kwargs} configure an attention module, but none of the "
                          f"variants {', '.join(variants)} has one")
    if conv_kwargs and not any(p["conv"] == "aw" for p in parts):
        raise ConfigError(f"conv_kwargs (--conv-kwargs) {conv_kwargs} configure AW-convolution, but none of the "
                          f"variants {', '.join(variants)} has it")
    base = resolve_config(TrainConfig(model=cfg.model, data=cfg.data, data_dir=cfg.data_dir, threads=cfg.threads,
                                      progress=cfg.progress, **train))
    return replace(base, attn_kwargs=dict(attn_kwargs), conv_kwargs=dict(conv_kwargs))


def _variant_config(base: TrainConfig, variant: str) -> TrainConfig:
    """The recipe for one variant: the module options only where the variant has the module (the baseline
    trains with none)."""
    parts = parse_variant(variant)
    return replace(base, variant=variant, attn_kwargs=base.attn_kwargs if parts["attn"] else {},
                   conv_kwargs=base.conv_kwargs if parts["conv"] == "aw" else {})


def _run_config(base: TrainConfig, out: Path, variant: str, seed: int) -> TrainConfig:
    return replace(_variant_config(base, variant), seed=seed, out=str(out / "runs" / slug(variant) / f"seed{seed}"))


def _profile_variants(cfg: CompareConfig, base: TrainConfig, variants: list[str]) -> list[dict[str, Any]]:
    data = data_for(replace(base, seed=0), base.batch_size, workers=0)
    models = [build_model(_variant_config(base, v), data).eval() for v in variants]
    x1 = torch.randn(1, data.in_chans, data.image_size, data.image_size)
    rows = []
    for v, m in zip(variants, models):
        c = count_complexity(m, x1)
        rows.append(dict(variant=v, params=c.params, gmacs=c.macs / 1e9, gmacs_hook=c.hook_macs / 1e9))
    x = torch.randn(cfg.latency_batch, data.in_chans, data.image_size, data.image_size)
    timings = measure_latency([prepare_for_timing(m, torch.device("cpu")) for m in models], x, warmup=2,
                              repeats=cfg.latency_repeats)
    base_t = timings[variants.index("none")].median_ms if "none" in variants else timings[0].median_ms
    for r, t in zip(rows, timings):
        r.update(latency_ms=t.median_ms, latency_ratio=t.median_ms / base_t)
    return rows


def _stacked_table(variants: list[str], seeds: Sequence[int], results: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: each stacked arm (``a+b``) against each of its parts that the study also trained, paired by seed.

    Empty when the study has no stacked arm with a trained part.
    """
    cols = ["arm", "vs"] + [f"Δ seed {s}" for s in seeds] + ["paired", "better"]
    rows = []
    for v in variants:
        for part in (v.split("+") if "+" in v else []):
            if part not in results or not results[part] or not results[v]:
                continue
            p = paired_deltas(results[v], results[part])
            if p["per_seed"]:
                rows.append({"arm": v, "vs": part, **{f"Δ seed {s}": f"{d:+.2f}" for s, d in p["per_seed"].items()},
                             **paired_cells(p)})
    return to_markdown(rows, cols, {"paired": "paired Δ (mean ± SE)"}) if rows else ""


def _delta_plot(plt, out: Path, results: dict[str, list[dict[str, Any]]]) -> None:
    """``delta_vs_none.png``: each arm's per-seed difference to the same seed's baseline, with mean ± SE."""
    pairs = {v: paired_deltas(results[v], results["none"]) for v in results if v != "none"}
    arms = [v for v, p in pairs.items() if p["per_seed"]]
    fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.42 * max(len(arms), 1)))
    for i, v in enumerate(arms):
        p = pairs[v]
        ax.plot(list(p["per_seed"].values()), [i] * len(p["per_seed"]), "o", color="0.6", ms=4)
        ax.errorbar(p["mean"], i, xerr=p["se"] if p["se"] == p["se"] else None, fmt="D", color="C0", capsize=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(arms)), arms)
    ax.invert_yaxis()
    ax.set_xlabel("val top-1 − baseline of the same seed (points); grey: seeds, blue: mean ± SE")
    save_figure(fig, out / "delta_vs_none.png")


def _plots(out: Path, rows: list[dict[str, Any]], curves: dict[str, list[list[float]]],
           results: dict[str, list[dict[str, Any]]]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name):
        save_figure(fig, out / name)

    done = [r for r in rows if r.get("top1_mean") is not None]
    for key, label, name in (("gmacs", "GMACs (dispatch counter, 10^9 multiply-accumulates)", "acc_vs_macs.png"),
                             ("latency_ratio", "forward latency / plain model (same run)", "acc_vs_latency.png")):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for r in done:
            if r.get(key) is None:
                continue
            ax.errorbar(r[key], r["top1_mean"], yerr=r["top1_std"] if r["top1_std"] == r["top1_std"] else None,
                        fmt="o", capsize=3)
            ax.annotate(r["variant"], (r[key], r["top1_mean"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("val top-1 (%), mean ± std over seeds")
        save(fig, name)
    _delta_plot(plt, out, results)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for v, runs in curves.items():
        n = min((len(r) for r in runs), default=0)
        if n:
            ax.plot(range(1, n + 1), np.mean([r[:n] for r in runs], 0), "o-", label=v)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val top-1 (%), mean over seeds")
    ax.legend(fontsize=8)
    save(fig, "curves.png")


def environment() -> dict[str, str]:
    import timm
    return {"torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
            "machine": f"{platform.machine()} {platform.processor()}".strip(), "cpu_threads": str(torch.get_num_threads()),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else "none"}


REPORT_COLUMNS = ["variant", "seeds_done", "top1_mean", "top1_std", "delta", "delta_se", "verdict", "params",
                  "added_params", "gmacs", "gmacs_hook", "latency_ratio", "train_time_s", "train_img_s"]
REPORT_HEADERS = {"seeds_done": "seeds", "top1_mean": "top-1 % (mean)", "top1_std": "± std", "delta": "Δ vs none",
                  "delta_se": "SE(Δ)", "verdict": "Δ vs seed spread", "added_params": "added params",
                  "gmacs": "GMACs (dispatch)", "gmacs_hook": "GMACs (hooks)", "latency_ratio": "latency / none",
                  "train_time_s": "train s/run (robust)", "train_img_s": "train img/s (robust)"}


def _accuracy_cells(row: dict[str, Any]) -> dict[str, Any]:
    """Display copy of a report row: accuracies and their differences in points with two decimals."""
    out = dict(row)
    for k in ("top1_mean", "top1_std", "delta", "delta_se"):
        v = row.get(k)
        if isinstance(v, float) and v == v:
            out[k] = f"{v:+.2f}" if k == "delta" else f"{v:.2f}"
    return out


def run_compare(cfg: CompareConfig, command: str | None = None) -> list[dict[str, Any]]:
    """Run (or continue) the study and write ``report.md``, ``results.csv``, ``runs.csv`` and plots."""
    variants = list(dict.fromkeys(["none"] + [v.strip() for v in cfg.variants if v.strip()]))
    for v in variants:
        parse_variant(v)
    if not cfg.seeds:
        raise ValueError("compare needs at least one seed")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    base = _base_config(cfg, variants)
    recipe = {k: v for k, v in asdict(base).items() if k not in ("variant", "seed", "out", "progress", "threads")}
    study = dict(model=cfg.model, variants=variants, seeds=list(cfg.seeds), recipe=recipe,
                 command=command or "convattn " + shlex.join(sys.argv[1:]), environment=environment())
    if cfg.report_only:
        if not (out / "study.json").exists():
            raise FileNotFoundError(f"--report-only: no study in {out} (study.json missing); run compare without it first")
        study["command"] = json.loads((out / "study.json").read_text()).get("command", study["command"])
    out.mkdir(parents=True, exist_ok=True)
    check_study(out, study, asdict(TrainConfig()))
    t_start = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    curves: dict[str, list[list[float]]] = {v: [] for v in variants}
    for seed in cfg.seeds:  # seed-major: an interrupted study has complete seeds first
        for v in variants:
            rc = _run_config(base, out, v, seed)
            final_path = Path(rc.out) / "final.json"
            if final_path.exists():
                final = json.loads(final_path.read_text())
            elif cfg.report_only:
                continue
            else:
                final = train(rc)
            metrics = Path(rc.out) / "metrics.jsonl"
            epochs = [json.loads(line) for line in metrics.read_text().splitlines() if line]
            curves[v].append([e["val_top1"] for e in epochs])
            # robust to epochs slowed by other work on the machine: the median epoch stands for every epoch
            results[v].append(dict(final, robust_train_time_s=len(epochs) * float(np.median(
                [e["epoch_time_s"] for e in epochs])), robust_img_s=float(np.median([e["images_per_s"] for e in epochs]))))
    prof_path = out / "profile.json"
    if prof_path.exists() and [r["variant"] for r in json.loads(prof_path.read_text())] == variants:
        prof = json.loads(prof_path.read_text())
    else:
        prof = _profile_variants(cfg, base, variants)
        atomic_write_text(prof_path, json.dumps(prof, indent=2))
    prof_by = {r["variant"]: r for r in prof}
    base_acc = [r["val_top1"] for r in results["none"]]
    if not base_acc:
        raise RuntimeError(f"no finished baseline run in {out} yet: nothing to compare against")
    n_done, n_all = sum(len(r) for r in results.values()), len(variants) * len(cfg.seeds)
    rows = []
    for v in variants:
        accs = [r["val_top1"] for r in results[v]]
        if not accs:
            p = prof_by[v]
            rows.append(dict(variant=v, seeds_done=0, verdict="not run yet", params=p["params"],
                             added_params=p["params"] - prof_by["none"]["params"], gmacs=p["gmacs"],
                             gmacs_hook=p["gmacs_hook"], latency_ratio=p["latency_ratio"]))
            continue
        d, se = welch(accs, base_acc)
        if v == "none":
            verdict = "baseline"
        elif se != se:
            verdict = "n/a (1 seed)"
        else:
            verdict = ("exceeds spread (better)" if d > 0 else "exceeds spread (worse)") if abs(d) > 2 * se else "within spread"
        p = prof_by[v]
        rows.append(dict(variant=v, seeds_done=len(accs), top1_mean=float(np.mean(accs)),
                         top1_std=float(np.std(accs, ddof=1)) if len(accs) > 1 else float("nan"),
                         delta=None if v == "none" else d, delta_se=None if v == "none" else se, verdict=verdict,
                         params=p["params"], added_params=p["params"] - prof_by["none"]["params"], gmacs=p["gmacs"],
                         gmacs_hook=p["gmacs_hook"], latency_ratio=p["latency_ratio"],
                         train_time_s=float(np.median([r["robust_train_time_s"] for r in results[v]])),
                         train_img_s=float(np.median([r["robust_img_s"] for r in results[v]])),
                         top1_per_seed=" ".join(f"{a:.2f}" for a in accs)))
    all_runs = [dict(variant=v, **{k: r[k] for k in ("seed", "val_top1", "val_top5", "val_loss", "train_time_s",
                                                     "images_per_s")}) for v in variants for r in results[v]]
    write_csv(out / "results.csv", rows, REPORT_COLUMNS + ["top1_per_seed"])
    write_csv(out / "runs.csv", all_runs)
    _plots(out, rows, curves, results)
    wall = time.perf_counter() - t_start
    r0 = results["none"][0]
    shown = [_accuracy_cells(r) for r in rows]
    partial = ([f"**Partial study: {n_done} of {n_all} runs finished.** Rerun the command to continue; finished "
                "runs are kept and unfinished ones resume from their last epoch.", ""] if n_done < n_all else [])
    md = [f"# convattn compare: {cfg.model} on {base.data}", "", *partial,
          f"Command: `{study['command']}`", "",
          f"Recipe (one for every arm): preset `{base.preset}`, {base.epochs} epochs, batch {base.batch_size}, SGD lr "
          f"{base.lr} momentum {base.momentum} (nesterov {base.nesterov}), weight decay {base.weight_decay} "
          f"(excluded: {base.wd_exclude}), {base.schedule} schedule, warm-up {base.warmup_epochs} epochs, "
          f"label smoothing {base.label_smoothing}"
          + (f", attention learning rate × {base.attn_lr_mult:g} (attention modules and AW's generator)"
             if base.attn_lr_mult != 1 else "")
          + (f", attention options {json.dumps(base.attn_kwargs)}" if base.attn_kwargs else "")
          + (f", AW options {json.dumps(base.conv_kwargs)}" if base.conv_kwargs else "")
          + f"; {r0['train_images']} training / {r0['val_images']} validation images; seeds {list(cfg.seeds)}.", "",
          "Environment: " + ", ".join(f"{k} {v}" for k, v in study["environment"].items()), "",
          to_markdown(shown, REPORT_COLUMNS, REPORT_HEADERS), "",
          "* top-1: validation accuracy after the last epoch, mean and sample std over seeds; per seed below and in "
          "results.csv.",
          "* Δ vs none: difference of means; SE(Δ) = sqrt(s²/n + s₀²/n₀) (Welch). \"exceeds spread\" means |Δ| > 2·SE(Δ); "
          "with few seeds this is a rough screen, not a significance test.",
          "* GMACs: 10^9 multiply-accumulates for one image; *dispatch*: torch.utils.flop_counter (sees functional "
          "convs); *hooks*: nn.Conv/nn.Linear hooks as thop/ptflops. Latency: CPU forward at batch "
          f"{cfg.latency_batch}, median of interleaved runs, ratio to the plain model timed in the same run. Training "
          "time (robust): epochs × the run's median epoch time, and throughput: the run's median epoch throughput, "
          "each then the median over seeds, so that epochs or runs slowed by other work on the machine do not count; "
          "raw per-run totals in runs.csv.",
          "* AW-convolution and STEAM are reconstructions (no public code): numbers here are ours, not the papers'. "
          + _module_lines(base, variants), "",
          "## Per seed", "",
          "A seed fixes the data order and augmentation for every arm, so each arm can also be compared with the "
          "baseline run of the same seed: Δ in brackets, then the mean of those paired differences with its "
          "standard error std(Δ)/√n.", "",
          per_seed_table(variants, list(cfg.seeds), results), "",
          *(["Stacked arms against their parts (same pairing by seed):", "", stacked, ""]
            if (stacked := _stacked_table(variants, list(cfg.seeds), results)) else []),
          f"Wall time of this invocation: {wall:.0f} s (finished runs read back are not re-timed).", "",
          "Plots: acc_vs_macs.png, acc_vs_latency.png, delta_vs_none.png, curves.png."]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    print_table(shown, REPORT_COLUMNS, REPORT_HEADERS, title=f"compare: {cfg.model} on {base.data} ({wall:.0f} s)")
    print(f"report: {out / 'report.md'}")
    return rows

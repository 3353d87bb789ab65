"""The classification study of ``convattn compare``: validation top-1 per arm, with parameters, MACs, measured
latency and training time as its cost columns (the study loop, statistics and report: ``study.compare``)."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ...models import COMPARE_VARIANTS, CIFAR_MODELS, DEFAULT_VARIANTS
from ...models.plan import AttachPlan, canonical_variants
from ...profile.counting import count_complexity
from ...profile.latency import measure_latency, prepare_for_timing
from ...report import atomic_write_text
from ...study.compare import Metric, Results, as_executor, run_study, study_lock
from ...validate import ConfigError
from .budget import size_study, stored_budget
from .config import TrainConfig, arm_config, resolve_config
from .run import build_model, data_for, train

__all__ = ["CompareConfig", "ClassificationStudy", "run_compare", "resolve_compare", "DEFAULT_STUDY", "TOP1",
           "evidence_result", "evidence_study", "study_recipe"]

# The README's main job: ResNet-20 on the embedded Fashion-MNIST subset, sized on the machine it runs on to a
# 15-minute budget (training images, then epochs; see study.budget); 4,000 images x 2 epochs without a budget.
DEFAULT_STUDY = dict(model="resnet20", data="embedded", train_size=4000, epochs=2, seeds=[0, 1, 2], batch_size=32,
                     lr=0.05, warmup_epochs=0.25, time_budget_min=15.0)

TOP1 = Metric("top1", "val top-1 %", lambda run: run["val_top1"])

# TrainConfig fields that are not part of a study's recipe (set per run, or how a run is executed)
_NOT_RECIPE = ("variant", "seed", "out", "progress", "threads")


@dataclass
class CompareConfig:
    """A classification study: arms (``variants``) x ``seeds`` of ``model`` on ``data`` under one recipe.

    ``train`` holds the recipe options given (:class:`TrainConfig` fields); for the default study (its model and
    data) :data:`DEFAULT_STUDY`'s recipe fills the rest. ``time_budget_min``: ``None`` applies the budget policy
    of :func:`resolve_compare` (the same for the CLI and the API), ``0`` trains unbudgeted, minutes > 0 size
    ``budget_sizes`` (default: ``train_size`` and ``epochs``, those not in ``train``) to that wall time.
    """

    model: str = DEFAULT_STUDY["model"]
    variants: Sequence[str] = COMPARE_VARIANTS
    seeds: Sequence[int] = tuple(DEFAULT_STUDY["seeds"])
    data: str = DEFAULT_STUDY["data"]
    data_dir: str | None = None
    out: str = "runs/compare"
    train: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None
    latency_batch: int = 64
    latency_repeats: int = 10
    progress: bool = True
    report_only: bool = False  # train nothing; report the finished runs (a partial study says so)
    time_budget_min: float | None = None
    budget_sizes: Sequence[str] | None = None


BUDGET_SIZES = ("train_size", "epochs")  # what a time budget may size, in this order


def resolve_compare(cfg: CompareConfig) -> CompareConfig:
    """The study ``cfg`` describes, with the budget policy applied; idempotent (a resolved ``time_budget_min`` is a
    number: 0 for no budget).

    The default study (:data:`DEFAULT_STUDY`'s model and data) gets its recipe for every option not in
    ``cfg.train`` and, unless a budget is given, a ``DEFAULT_STUDY["time_budget_min"]``-minute budget over the
    sizes not given, except when ``cfg.out`` already holds a study (it keeps the recipe it started with, sized
    or not). Other studies are unbudgeted unless ``time_budget_min`` is given.
    """
    budget = cfg.time_budget_min
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                               or not math.isfinite(budget) or budget < 0):
        raise ConfigError(f"time_budget (--time-budget) must be a number >= 0 (minutes > 0, or 0 for no budget), "
                          f"got {budget!r}")
    default_study = cfg.data == DEFAULT_STUDY["data"] and cfg.model == DEFAULT_STUDY["model"]
    train = {k: DEFAULT_STUDY[k] for k in ("train_size", "epochs", "batch_size", "lr", "warmup_epochs")} \
        if default_study else {}
    train.update(cfg.train)
    sizes = tuple(cfg.budget_sizes) if cfg.budget_sizes is not None else \
        tuple(k for k in BUDGET_SIZES if k not in cfg.train)
    if budget is None:
        started = (Path(cfg.out) / "study.json").exists()
        budget = DEFAULT_STUDY["time_budget_min"] if default_study and sizes and not started else 0.0
    if budget and not sizes:
        raise ConfigError(f"--time-budget {budget:g} sizes --train-size and --epochs, but both are given; drop one "
                          "of them, or --time-budget")
    return replace(cfg, train=train, time_budget_min=float(budget), budget_sizes=sizes)


# The committed long study that a short one is read against (README, "The evidence study"): ResNet-20 on
# Fashion-MNIST, 20,000 images x 10 epochs, 3 seeds. A folder of the repository: installed without it, no column.
EVIDENCE_STUDY = Path("reports") / "evidence_r20"
# data sets that are the same images for this purpose: the embedded set is a subset of Fashion-MNIST
_DATA_FAMILY = {"embedded": "fashion-mnist", "fashion-mnist": "fashion-mnist"}


def reference_folder() -> Path:
    """The evidence study's ``results.csv`` and ``study.json`` as they ship with the package (package data
    ``convattn/data/reference/evidence_r20``, a copy of the repository's reports/evidence_r20 that a test keeps
    equal), so a wheel install reads the same reference as a checkout."""
    from importlib.resources import files
    return Path(str(files("convattn.data") / "reference" / EVIDENCE_STUDY.name))


def _evidence_folder(folder: str | Path | None) -> Path:
    return Path(folder) if folder is not None else reference_folder()


def _number(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if v == v else None


def evidence_result(arm: str, folder: str | Path | None = None) -> dict[str, Any] | None:
    """The evidence study's result for ``arm``, read now from its committed ``results.csv``: ``mean`` (top-1 %),
    ``delta`` and ``delta_se`` (vs its baseline, Welch), ``verdict`` and ``seeds``. None when the file or the arm is
    absent. ``folder``: the study folder (default: the copy that ships with the package,
    :func:`reference_folder`)."""
    path = _evidence_folder(folder)
    try:
        with (path / "results.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return None
    for r in rows:
        if r.get("variant") == arm:
            def pick(*keys: str) -> float | None:  # the first column present (older reports: delta, delta_se)
                return next((_number(r[k]) for k in keys if _number(r.get(k)) is not None), None)
            return dict(variant=arm, mean=pick("top1_mean"), delta=pick("top1_delta", "delta"),
                        delta_se=pick("top1_delta_se", "delta_se"), verdict=r.get("verdict") or "",
                        seeds=int(pick("seeds_done") or 0))
    return None


def evidence_study(folder: str | Path | None = None) -> dict[str, Any] | None:
    """The evidence study's ``study.json`` plus ``updates`` (per run: epochs x training images // batch; None
    when the training set size is not recorded) and ``folder``; None when it is absent."""
    path = _evidence_folder(folder)
    try:
        study = json.loads((path / "study.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(study, dict):
        return None
    rec = study.get("recipe", {})
    try:
        updates = int(rec["epochs"]) * (int(rec["train_size"]) // int(rec["batch_size"]))
    except (KeyError, TypeError, ValueError):
        updates = None
    return dict(study, updates=updates, folder=str(path))


def _default_aw_mode(model: str) -> str:
    """What AWConv2d's mode is when the study does not set one: the one rule (``default_aw_modes``) for the
    model's first stage (a CIFAR ResNet's keeps the input resolution)."""
    from ...layers.aw_conv import AW_DEFAULT_MODE_RULE, default_aw_modes
    if model in CIFAR_MODELS:
        return f"{default_aw_modes(1)[0]} (the default rule: {AW_DEFAULT_MODE_RULE})"
    return " where it divides, else ".join(default_aw_modes(4)) + f" (the default rule: {AW_DEFAULT_MODE_RULE})"


def _module_lines(base: TrainConfig, variants: Sequence[str]) -> str:
    """The options each attention module of the study ran with (constructor and registry defaults, then the
    study's --attn-kwargs / --conv-kwargs), read from the code, never fixed text."""
    from ...layers import module_options
    names: dict[str, dict[str, Any]] = {}
    for v in variants:
        plan = AttachPlan.parse(v)
        for a in plan.attn_parts:
            names.setdefault(a, base.attn_kwargs)
        if plan.conv:
            names.setdefault(plan.conv, base.conv_kwargs)
    lines = []
    for name, kwargs in names.items():
        opts = {k: repr(v) for k, v in module_options(name, kwargs).items()}
        if name == "aw" and "mode" not in kwargs:
            opts["mode"] = _default_aw_mode(base.model)
        lines.append(f"{name}: " + ", ".join(f"{k}={v}" for k, v in opts.items()))
    return ("Module options (code defaults, then this study's options): " + "; ".join(lines) + ".") if lines else ""


def study_recipe(cfg: CompareConfig, variants: Sequence[str]) -> TrainConfig:
    """The study's recipe, resolved once; module options (``--attn-kwargs``/``--conv-kwargs``) are kept for the
    variants that have the module (see ``arm_config``) and refused when no variant has it."""
    train_kw = dict(cfg.train)
    attn_kwargs, conv_kwargs = train_kw.pop("attn_kwargs", None) or {}, train_kw.pop("conv_kwargs", None) or {}
    parts = [AttachPlan.parse(v).kwargs() for v in variants]
    if attn_kwargs and not any(p["attn"] for p in parts):
        raise ConfigError(f"attn_kwargs (--attn-kwargs) {attn_kwargs} configure an attention module, but none of the "
                          f"variants {', '.join(variants)} has one")
    if conv_kwargs and not any(p["conv"] == "aw" for p in parts):
        raise ConfigError(f"conv_kwargs (--conv-kwargs) {conv_kwargs} configure AW-convolution, but none of the "
                          f"variants {', '.join(variants)} has it")
    base = resolve_config(TrainConfig(model=cfg.model, data=cfg.data, data_dir=cfg.data_dir, threads=cfg.threads,
                                      progress=cfg.progress, **train_kw))
    return replace(base, attn_kwargs=dict(attn_kwargs), conv_kwargs=dict(conv_kwargs))


COST_COLUMNS = ["params", "added_params", "gmacs", "gmacs_hook", "latency_ratio", "train_time_s", "train_img_s"]
COST_HEADERS = {"added_params": "added params", "gmacs": "GMACs (dispatch)", "gmacs_hook": "GMACs (hooks)",
                "latency_ratio": "latency / none", "train_time_s": "train s/run (robust)",
                "train_img_s": "train img/s (robust)"}


class ClassificationStudy:
    """Image classification under one :class:`TrainConfig` recipe; metric: validation top-1 after the last epoch."""

    name = "classification"
    metrics = (TOP1,)

    def __init__(self, cfg: CompareConfig, variants: Sequence[str]):
        self.cfg = cfg
        self.variants = [p.name for p in canonical_variants(variants)]  # one arm per canonical name
        self.base = study_recipe(cfg, self.variants)
        self.title = f"convattn compare: {cfg.model} on {self.base.data}"

    def fixed_settings(self) -> dict[str, Any]:
        return {"model": self.cfg.model}

    def recipe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self.base).items() if k not in _NOT_RECIPE}

    def recipe_defaults(self) -> dict[str, Any]:
        # a study recorded before a setting existed ran with what the code then did: horizontal flips were always on
        return {**asdict(TrainConfig()), "hflip": True}

    def train(self, variant: str, seed: int, run_dir: Path) -> dict[str, Any]:
        return train(replace(arm_config(self.base, variant), seed=seed, out=str(run_dir)))

    def read_run(self, final: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
        # robust to epochs slowed by other work on the machine: the median epoch stands for every epoch
        return dict(final, curve=[e["val_top1"] for e in epochs],
                    robust_train_time_s=len(epochs) * float(np.median([e["epoch_time_s"] for e in epochs])),
                    robust_img_s=float(np.median([e["images_per_s"] for e in epochs])))

    def updates_per_run(self, results: Results) -> int | None:
        """Optimizer updates of one run: epochs x full batches per epoch (the last partial batch is dropped)."""
        runs = results.get("none") or []
        if not runs or runs[0].get("train_images") is None or runs[0].get("epochs") is None:
            return None
        return int(runs[0]["epochs"]) * (int(runs[0]["train_images"]) // self.base.batch_size)

    def reference(self) -> dict[str, Any] | None:
        """The evidence study's result per arm, when this study has its model and data (Fashion-MNIST, the
        embedded subset included) and module options, and is not the evidence study itself; else None."""
        ev = evidence_study()
        out = Path(self.cfg.out).resolve()
        if ev is None or Path(ev["folder"]).resolve() == out or out.as_posix().endswith(EVIDENCE_STUDY.as_posix()):
            return None  # the evidence study's own report does not read itself
        rec = ev.get("recipe", {})
        family = _DATA_FAMILY.get(rec.get("data"))
        if (ev.get("model") != self.cfg.model or family is None or family != _DATA_FAMILY.get(self.base.data)
                or (rec.get("attn_kwargs") or {}) != self.base.attn_kwargs
                or (rec.get("conv_kwargs") or {}) != self.base.conv_kwargs):
            return None
        arms = {v: evidence_result(v, ev["folder"]) for v in self.variants}
        arms = {v: a for v, a in arms.items() if a is not None}
        if "none" not in arms or arms["none"]["mean"] is None:
            return None
        size = f"{rec['train_size']:,} images" if rec.get("train_size") else "all training images"
        label = f"evidence study ({size} × {rec.get('epochs')} epochs)"
        note = (f"* {label}: {EVIDENCE_STUDY.as_posix()}/results.csv of the convattn repository (shipped with the "
                f"package), read when this report was written: the same model on {rec.get('data')} (validated on its test set), batch "
                f"{rec.get('batch_size')}, " + (f"{ev['updates']:,} updates per run, " if ev["updates"] else "")
                + f"seeds {ev.get('seeds')}; for `none` its baseline's top-1, for the other arms Δ vs its baseline "
                "(Welch) and its verdict; \"not in it\": an arm it did not train.")
        return dict(label=label, short="evidence study", updates=ev["updates"], baseline=arms["none"]["mean"],
                    arms=arms, note=note)

    def _profile(self, variants: list[str]) -> list[dict[str, Any]]:
        base = self.base
        data = data_for(replace(base, seed=0), base.batch_size, workers=0)
        models = [build_model(arm_config(base, v), data).eval() for v in variants]
        x1 = torch.randn(1, data.in_chans, data.image_size, data.image_size)
        rows = []
        for v, m in zip(variants, models):
            c = count_complexity(m, x1)
            rows.append(dict(variant=v, params=c.params, gmacs=c.macs / 1e9, gmacs_hook=c.hook_macs / 1e9))
        x = torch.randn(self.cfg.latency_batch, data.in_chans, data.image_size, data.image_size)
        timings = measure_latency([prepare_for_timing(m, torch.device("cpu")) for m in models], x, warmup=2,
                                  repeats=self.cfg.latency_repeats)
        base_t = timings[variants.index("none")].median_ms
        for r, t in zip(rows, timings):
            r.update(latency_ms=t.median_ms, latency_ratio=t.median_ms / base_t)
        return rows

    def columns(self, variants: list[str], results: Results, out: Path):
        prof_path = out / "profile.json"
        if prof_path.exists() and [r["variant"] for r in json.loads(prof_path.read_text())] == variants:
            prof = json.loads(prof_path.read_text())
        else:
            prof = self._profile(variants)
            atomic_write_text(prof_path, json.dumps(prof, indent=2))
        by = {r["variant"]: r for r in prof}
        cost = {}
        for v in variants:
            p = by[v]
            cost[v] = dict(params=p["params"], added_params=p["params"] - by["none"]["params"], gmacs=p["gmacs"],
                           gmacs_hook=p["gmacs_hook"], latency_ratio=p["latency_ratio"])
            if results[v]:
                cost[v].update(train_time_s=float(np.median([r["robust_train_time_s"] for r in results[v]])),
                               train_img_s=float(np.median([r["robust_img_s"] for r in results[v]])))
        return cost, COST_COLUMNS, COST_HEADERS

    def describe(self, results: Results, seeds: Sequence[int]) -> str:
        base, r0 = self.base, results["none"][0]
        return (f"Recipe (one for every arm): preset `{base.preset}`, {base.epochs} epochs, batch {base.batch_size}, "
                f"SGD lr {base.lr} momentum {base.momentum} (nesterov {base.nesterov}), weight decay "
                f"{base.weight_decay} (excluded: {base.wd_exclude}), {base.schedule} schedule, warm-up "
                f"{base.warmup_epochs} epochs, label smoothing {base.label_smoothing}"
                + (f", attention learning rate × {base.attn_lr_mult:g} (attention modules and AW's generator)"
                   if base.attn_lr_mult != 1 else "")
                + (f", attention options {json.dumps(base.attn_kwargs)}" if base.attn_kwargs else "")
                + (f", AW options {json.dumps(base.conv_kwargs)}" if base.conv_kwargs else "")
                + f"; {r0['train_images']} training / {r0['val_images']} validation images; seeds {list(seeds)}."
                + self._budget_line() + self._arms_line())

    def _arms_line(self) -> str:
        if tuple(self.variants) != COMPARE_VARIANTS:
            return ""
        left = [f"`{v}`" for v in DEFAULT_VARIANTS if v not in COMPARE_VARIANTS]
        return (" Arms: compare's default set, the two reconstructions (STEAM, AW), the baselines both papers report "
                f"(SE, CBAM) and ECA, the cheapest; {', '.join(left)} are left out so that the time budget trains each "
                "arm on more images (add them with `--variants`; the evidence study trained all of them).")

    def _budget_line(self) -> str:
        b = stored_budget(Path(self.cfg.out))
        if b is None:
            return ""
        lanes = b.get("lanes", 1)
        par = (f" for {lanes} parallel runs x {b.get('threads')} thread{'s' if b.get('threads') != 1 else ''}"
               if lanes > 1 else "")
        return (f" Sized to a {b['budget_min']:g}-minute budget on the machine that ran it{par} (training images, "
                f"then epochs, from each arm's measured cost per image; predicted {b['predicted_s'] / 60:.1f} min).")

    def notes(self) -> list[str]:
        return [
            "* top-1: validation accuracy after the last epoch, mean and sample std over seeds; per seed below and in "
            "results.csv.",
            "* GMACs: 10^9 multiply-accumulates for one image; *dispatch*: torch.utils.flop_counter (sees functional "
            "convs); *hooks*: nn.Conv/nn.Linear hooks as thop/ptflops. Latency: CPU forward at batch "
            f"{self.cfg.latency_batch}, median of interleaved runs, ratio to the plain model timed in the same run. "
            "Training time (robust): epochs × the run's median epoch time, and throughput: the run's median epoch "
            "throughput, each then the median over seeds, so that epochs or runs slowed by other work on the machine "
            "do not count; raw per-run totals in runs.csv.",
            "* AW-convolution and STEAM are reconstructions (no public code): numbers here are ours, not the papers'. "
            + _module_lines(self.base, self.variants)]


def run_compare(cfg: CompareConfig, command: str | None = None, executor: Any = None) -> list[dict[str, Any]]:
    """Run (or continue) the classification study of ``cfg`` (resolved by :func:`resolve_compare`: the CLI and
    the API give the same study for the same arguments); see :func:`convattn.study.compare.run_study`.

    ``executor``: where the runs execute: None or ``"local"`` (in this process, one after another), a name
    (``"processes"``, ``"ray"``, ``"slurm"``), an :class:`~convattn.study.executors.ExecutorConfig`, or anything
    with ``submit(fn, *args) -> Future`` (a ``concurrent.futures`` executor). ``"auto"`` (the command's default)
    is a pool of one 1-thread run per core when the study is sized by its time budget on a CPU with 2 or more cores,
    else local (:func:`~convattn.study.executors.resolve_auto`); here None stays local, as a pool needs the
    caller's ``if __name__ == "__main__":`` guard. A time budget is sized for the executor's parallel runs and
    their threads."""
    cfg = resolve_compare(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    variants = [v.strip() for v in cfg.variants if v.strip()]
    study = ClassificationStudy(cfg, variants)
    out = Path(cfg.out)
    runs = len(study.variants) * len(cfg.seeds)
    if cfg.report_only:
        return run_study(study, variants, cfg.seeds, cfg.out, command, True)
    out.mkdir(parents=True, exist_ok=True)
    with study_lock(out):  # the sizing too: two commands on one folder are refused before either measures
        stored = stored_budget(out)
        budgeted = bool(cfg.budget_sizes and (stored is not None or cfg.time_budget_min))
        ex, threads, owned = as_executor(executor, runs, cfg.threads, out, parallel=budgeted,
                                         sized_lanes=stored.get("lanes", 1) if stored is not None else None)
        try:
            if budgeted:
                lanes = max(1, min(int(getattr(ex, "lanes", 1)), runs))
                sized = size_study(study.base, study.variants, len(cfg.seeds), cfg.time_budget_min or 0.0, out,
                                   "train_size" in cfg.budget_sizes, "epochs" in cfg.budget_sizes,
                                   cfg.latency_batch, lanes=lanes, threads=threads)
                sized = {k: v for k, v in sized.items() if k in cfg.budget_sizes}  # given options stay as given
                if sized:
                    cfg = replace(cfg, train={**cfg.train, **sized})
                    study = ClassificationStudy(cfg, variants)
            return run_study(study, variants, cfg.seeds, cfg.out, command, False, ex, threads)
        finally:
            if owned:
                ex.shutdown(wait=True)

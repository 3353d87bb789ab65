"""Size a classification study to a wall-clock budget on the machine it runs on.

Each arm's training and evaluation cost per image is measured with a few real training steps (the study's
model, recipe and data), then :func:`plan` picks the largest recipe that fits: more training images first (up
to the whole training set, in steps of 250), then more epochs. ``convattn compare`` with no arguments uses a
15-minute budget, so that a fast machine trains more and a slow one still finishes; the resolved recipe is
printed, stored with the study (a resumed study keeps it) and stated in the report.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ...data import DataBundle
from ...report import atomic_write_text
from .config import TrainConfig, arm_config
from .run import build_model, data_for

__all__ = ["ArmCost", "Plan", "measure_costs", "plan", "size_study", "stored_budget"]

BUDGET_FILE = "budget.json"
_SIZE_STEP = 250  # training-set sizes are multiples of this (25 images per class for 10 classes)
_MIN_TRAIN = 1000
_MAX_EPOCHS = 100
_MARGIN = 0.9  # plan to 90 % of the budget: the measurement is short and the machine noisy


@dataclass(frozen=True)
class ArmCost:
    """Measured seconds per image of one arm: a training step (forward, loss, backward, SGD) and evaluation."""

    variant: str
    train_s: float
    eval_s: float


@dataclass(frozen=True)
class Plan:
    """What fits: training images and epochs per run, and the predicted wall time of the whole study."""

    train_size: int
    epochs: int
    predicted_s: float
    budget_s: float

    @property
    def fits(self) -> bool:
        return self.predicted_s <= self.budget_s


def measure_costs(base: TrainConfig, variants: Sequence[str], min_steps: int = 3, min_s: float = 1.5,
                  data: DataBundle | None = None, rounds: int = 3) -> list[ArmCost]:
    """Seconds per training and per evaluation image of each arm: the median of its timed training steps (at least
    ``min_steps`` and ``min_s`` seconds per arm, after one untimed step) on a real training batch of the study's
    data (``data``, loaded here when not given).

    The arms are timed in ``rounds`` interleaved rounds (none, se, ..., none, se, ...), so that a burst of other
    work on the machine slows a few steps of every arm rather than all steps of one. Measured against the training
    that followed (2-core EPYC): within 6 % for every arm but AW, which trained 1.5x faster than measured here (an
    overestimate: it makes the study end early, not overrun).
    """
    data = data or data_for(replace(base, seed=0, train_size=None), base.batch_size, workers=0)
    x, y = next(iter(data.train.epoch(1)))
    n = len(y)
    models, opts = [], []
    for v in variants:
        torch.manual_seed(0)
        models.append(build_model(arm_config(base, v), data).train())
        opts.append(torch.optim.SGD(models[-1].parameters(), lr=1e-3, momentum=0.9))

    def step(i: int) -> float:
        t = time.perf_counter()
        loss = nn.functional.cross_entropy(models[i](x), y)
        opts[i].zero_grad(set_to_none=True)
        loss.backward()
        opts[i].step()
        return time.perf_counter() - t

    for i in range(len(variants)):
        step(i)  # untimed: the first step allocates and picks kernels
    times: list[list[float]] = [[] for _ in variants]
    for r in range(1, rounds + 1):
        for i in range(len(variants)):  # round r brings every arm to r/rounds of its steps and seconds
            while len(times[i]) < r * min_steps / rounds or sum(times[i]) < r * min_s / rounds:
                times[i].append(step(i))
    out = []
    for v, m, ts in zip(variants, models, times):
        m.eval()
        evals = []
        with torch.no_grad():
            for _ in range(3):
                t = time.perf_counter()
                m(x)
                evals.append(time.perf_counter() - t)
        out.append(ArmCost(v, statistics.median(ts) / n, statistics.median(evals[1:]) / n))
    return out


def _predict(costs: Sequence[ArmCost], seeds: int, train_size: int, epochs: int, val_images: int,
             fixed_s: float, lanes: int = 1) -> float:
    """Predicted seconds of the study: every arm and seed trains ``epochs`` × ``train_size`` images and evaluates
    the validation set after every epoch; ``fixed_s`` covers what runs once (profiling, latency, report). With
    ``lanes`` runs in parallel, each run starts on the first lane free, in the order the study submits them (seed
    by seed, arm by arm)."""
    runs = [epochs * (train_size * c.train_s + val_images * c.eval_s) for _ in range(seeds) for c in costs]
    if lanes <= 1:
        return sum(runs) + fixed_s
    free = [0.0] * min(lanes, len(runs))
    for r in runs:
        i = free.index(min(free))
        free[i] += r
    return max(free) + fixed_s


def plan(costs: Sequence[ArmCost], seeds: int, budget_s: float, val_images: int, max_train: int, epochs: int = 2,
         fixed_s: float = 0.0, size_epochs: bool = True, size_train: bool = True, train_size: int | None = None,
         lanes: int = 1) -> Plan:
    """The largest recipe predicted to fit ``_MARGIN`` × ``budget_s``: training images first (multiples of 250,
    at least 1,000, at most ``max_train``) at ``epochs`` epochs, then, with the whole training set, more epochs.
    With ``size_train=False`` only the epochs are sized (for the given ``train_size``), with ``size_epochs=False``
    only the images. When even the smallest recipe does not fit it is returned with ``fits`` False."""
    usable = _MARGIN * budget_s

    def cost(n: int, e: int) -> float:
        return _predict(costs, seeds, n, e, val_images, fixed_s, lanes)

    n = min(_MIN_TRAIN if size_train else (train_size or max_train), max_train)
    if size_train:
        while n + _SIZE_STEP <= max_train and cost(n + _SIZE_STEP, epochs) <= usable:
            n += _SIZE_STEP
        if n + _SIZE_STEP > max_train and cost(max_train, epochs) <= usable:
            n = max_train  # the whole training set
    e = epochs
    if size_epochs and (n == max_train or not size_train):
        e = 1 if cost(n, epochs) > usable else epochs
        while e < _MAX_EPOCHS and cost(n, e + 1) <= usable:
            e += 1
    return Plan(n, e, round(cost(n, e), 1), budget_s)


def stored_budget(out: Path) -> dict[str, Any] | None:
    """The ``budget.json`` of the study in ``out`` (how its time budget sized it: images, epochs, lanes, threads,
    measured costs), or None when no budget sized it."""
    path = Path(out) / BUDGET_FILE
    return json.loads(path.read_text()) if path.exists() else None


def size_study(base: TrainConfig, variants: Sequence[str], seeds: int, budget_min: float, out: Path,
               size_train: bool, size_epochs: bool, latency_batch: int = 64, lanes: int = 1,
               threads: int | None = None) -> dict[str, int]:
    """The training images and epochs of a budgeted study: read back from ``out`` when the study was sized
    before (a resumed study keeps its recipe), else measured here, printed and written to ``out/budget.json``.

    ``lanes`` runs train at once, each with ``threads`` torch threads (None: this process's): the arms are timed
    at that thread count and the runs spread over the lanes."""
    from ...validate import check_value
    check_value("time_budget", budget_min, lo=0)  # minutes (0: none); NaN, inf and < 0 are refused
    stored = stored_budget(out)
    if stored is not None:
        print(f"time budget: {stored['budget_min']:g} min, recipe sized when the study started: "
              f"{stored['train_size']:,} training images x {stored['epochs']} epochs")
        if budget_min and budget_min != stored["budget_min"]:
            print(f"time budget: the {budget_min:g} min given now is ignored: {out} was sized to "
                  f"{stored['budget_min']:g} min when the study started and keeps that recipe (use a new --out to "
                  f"size a study to {budget_min:g} min)")
        return {"train_size": stored["train_size"], "epochs": stored["epochs"]}
    if (out / "study.json").exists():  # a study started without a budget keeps its own recipe
        recipe = json.loads((out / "study.json").read_text()).get("recipe", {})
        kept = {k: recipe[k] for k in ("train_size", "epochs") if k in recipe}
        if budget_min:
            n = "the whole training set" if kept.get("train_size") is None else \
                f"{kept['train_size']:,} training images"
            print(f"time budget: the {budget_min:g} min given now is ignored: {out} holds a study started without a "
                  f"time budget ({n} x {kept.get('epochs')} epochs per run), which keeps that recipe (use a new "
                  f"--out for a budgeted study)")
        return kept
    t0 = time.perf_counter()
    print(f"time budget: {budget_min:g} min; timing a few training steps of each of the {len(variants)} arms to size "
          "the study ...", flush=True)
    full = data_for(replace(base, seed=0, train_size=None), base.batch_size, workers=0)
    had = torch.get_num_threads()
    threads = threads or had
    torch.set_num_threads(threads)
    try:
        costs = measure_costs(base, variants, data=full)
    finally:
        torch.set_num_threads(had)
    # once per study: a profile (one forward per arm) and the latency table (about 12 batches per arm)
    fixed = sum(12 * latency_batch * c.eval_s + 1.0 for c in costs)
    spent = time.perf_counter() - t0  # the measurement is part of the budget
    p = plan(costs, seeds, 60 * budget_min - spent, full.val.num_samples, full.train.num_samples, base.epochs, fixed,
             size_epochs=size_epochs, size_train=size_train, train_size=base.train_size, lanes=lanes)
    p = replace(p, predicted_s=round(p.predicted_s + spent, 1), budget_s=60 * budget_min)
    per_arm = ", ".join(f"{c.variant} {1e3 * c.train_s:.2f}" for c in costs)
    print(f"time budget: {budget_min:g} min on this machine for {lanes} parallel run{'s' if lanes != 1 else ''} x "
          f"{threads} thread{'s' if threads != 1 else ''}; measured training ms/image: {per_arm}")
    print(f"time budget: {p.train_size:,} training images x {p.epochs} epochs per run, predicted "
          f"{p.predicted_s / 60:.1f} min" + ("" if p.fits else " (the smallest recipe; it does not fit the budget)"))
    record = dict(budget_min=budget_min, **asdict(p), lanes=lanes, threads=threads, costs=[asdict(c) for c in costs])
    atomic_write_text(out / BUDGET_FILE, json.dumps(record, indent=2))
    return {"train_size": p.train_size, "epochs": p.epochs}

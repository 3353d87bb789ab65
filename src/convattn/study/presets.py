"""The papers' main tables as named studies (``convattn compare --study NAME``) and the plan of a study before
anything trains (``--dry-run``): runs, estimated device-hours, each run's command and where results go.

Neither paper states its training recipe. The ImageNet studies use the SE/CBAM lineage's 100-epoch step recipe
(convattn's ``imagenet`` preset: SGD lr 0.1, batch 256, x0.1 at epochs 30, 60, 90, weight decay 1e-4) and the
COCO study torchvision's 1x detection schedule (the ``1x`` preset: 12 epochs, x0.1 after 8 and 11, lr 0.02 per 16
images); the report says so. The cost estimate is each arm's MACs (the profiler's dispatch counter) times the
images it trains and evaluates on, divided by a training throughput measured on this machine now.
"""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..validate import ConfigError
from .executors import resolve_auto

__all__ = ["PaperStudy", "PAPER_STUDIES", "PRESET_NAMES", "plan_study", "run_paper_study", "measure_throughput"]


@dataclass(frozen=True)
class PaperStudy:
    """One paper's main table: models x arms x seeds under one recipe."""

    name: str
    task: str  # classification, detection
    models: tuple[str, ...]  # classification: the networks; detection: the backbones
    variants: tuple[str, ...]  # the arms besides the baseline
    recipe: str  # the preset
    claim: str  # what the paper reports (the reason the study exists)
    recipe_note: str
    detector: str = "fasterrcnn"
    seeds: int = 1  # the papers report single runs; --seeds adds more
    train_images: int = 1_281_167  # the data set's size when no folder is given to count (ImageNet-1k)
    val_images: int = 50_000
    image: tuple[int, int] = (224, 224)  # the training input the MACs are counted at


_IMAGENET_NOTE = ("the paper states no recipe: the SE/CBAM lineage's 100-epoch step recipe (preset imagenet: SGD "
                  "lr 0.1, batch 256, x0.1 at epochs 30/60/90, weight decay 1e-4)")
PAPER_STUDIES: dict[str, PaperStudy] = {s.name: s for s in (
    PaperStudy("aw-imagenet", "classification", ("resnet50", "resnet101"), ("se", "cbam", "aw", "se+aw", "cbam+aw"),
               "imagenet", "AW-convolution (ICANN 2021): +1.00 top-1 on ImageNet ResNet-101", _IMAGENET_NOTE),
    PaperStudy("steam-imagenet", "classification", ("resnet50",), ("se", "eca", "gct", "cbam", "steam"), "imagenet",
               "STEAM (2024): about +2 top-1 on ImageNet ResNet-50", _IMAGENET_NOTE),
    PaperStudy("aw-coco", "detection", ("resnet101",), ("aw", "se", "se+aw"), "1x",
               "AW-convolution (ICANN 2021): +0.63 box AP, Faster R-CNN R-101-FPN on COCO",
               "the paper states no recipe: torchvision's 1x detection schedule (preset 1x: 12 epochs, x0.1 after "
               "epochs 8 and 11, lr 0.02 per 16 images, images 800-1333, frozen BN)",
               train_images=118_287, val_images=5_000, image=(800, 1216)),
)}
PRESET_NAMES = tuple(PAPER_STUDIES)


def measure_throughput(model: str = "resnet50", device: str | None = None, image: int | None = None,
                       batch: int | None = None, steps: int | None = None) -> dict[str, Any]:
    """Training multiply-accumulates per second on this machine: SGD steps of the plain ``model`` (forward,
    backward: 3x the forward's MACs) at ``batch`` x ``image`` px, the median of ``steps`` after one untimed
    (defaults: a GPU 64 x 224 px x 10 steps, a CPU 4 x 112 px x 3 steps, a few seconds)."""
    import statistics

    import torch

    from ..models import create_model
    from ..profile.counting import count_macs_dispatch
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = dev.type == "cuda"
    image, batch, steps = image or (224 if gpu else 112), batch or (64 if gpu else 4), steps or (10 if gpu else 3)
    net = create_model(model, num_classes=1000).to(dev)
    x = torch.randn(batch, 3, image, image, device=dev)
    y = torch.randint(0, 1000, (batch,), device=dev)
    with torch.no_grad():
        macs = count_macs_dispatch(net.eval(), x[:1])[0] * batch
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    times = []
    for i in range(steps + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    step = statistics.median(times)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return dict(device=dev.type, name=name, macs_per_s=3 * macs / step, step_s=step, model=model, batch=batch,
                image=image, threads=torch.get_num_threads())


def _arm_macs(study: PaperStudy, model: str, variants: Sequence[str]) -> dict[str, float]:
    """Forward MACs of one image per arm (the profiler's dispatch counter); detection: the detector without
    attention counted once at the study's image size, plus each arm's backbone difference."""
    import torch

    from ..models import create_model, parse_variant
    from ..profile.counting import count_macs_dispatch
    h, w = study.image
    x = torch.randn(1, 3, h, w)
    out = {}
    with torch.no_grad():
        backbone = {v: count_macs_dispatch(create_model(model, num_classes=1000, **parse_variant(v)).eval(), x)[0]
                    for v in variants}
        if study.task == "classification":
            return {v: float(m) for v, m in backbone.items()}
        from ..tasks.detection.models import create_detector
        det = create_detector(study.detector, model, "none", 91).eval()
        base = count_macs_dispatch(det, x)[0]
    for v in variants:
        out[v] = float(base + backbone[v] - backbone["none"])
    return out


def _clock(hours: float) -> str:
    """Hours as days and hours, or minutes."""
    if hours >= 24:
        return f"{hours / 24:,.1f} days of one device"
    return f"{hours:,.1f} h of one device" if hours >= 1 else f"{hours * 60:.0f} min of one device"


def plan_study(study: PaperStudy, cfg: Any, variants: Sequence[str], seeds: Sequence[int], out: Path,
               data_dir: str | None, executor: Any, throughput: dict[str, Any] | None = None) -> list[str]:
    """The plan of ``study`` (resolved recipe ``cfg``: epochs, images) as lines: runs, estimated hours at the
    measured throughput, each run's command and where the results go."""
    from .stats import slug
    epochs, train_n, val_n, counted = cfg["epochs"], cfg["train_images"], cfg["val_images"], cfg["counted"]
    arms = ["none", *[v for v in variants if v != "none"]]
    runs = len(study.models) * len(arms) * len(seeds)
    tp = throughput or measure_throughput()
    rate = tp["macs_per_s"]
    lines = [f"{study.name}: {study.claim}",
             f"recipe: {study.recipe_note}" + (f"; {epochs} epochs here" if cfg.get("epochs_given") else ""),
             f"data: {data_dir or '(no --data-dir)'}: {train_n:,} training / {val_n:,} validation images "
             + ("(counted)" if counted else "(the full data set's size; give --data-dir to count a folder)"),
             f"runs: {runs} = {len(study.models)} model{'s' if len(study.models) > 1 else ''} x {len(arms)} arms "
             f"({', '.join(arms)}) x {len(seeds)} seed{'s' if len(seeds) > 1 else ''}; executor: {executor}",
             f"throughput measured here: {tp['macs_per_s'] / 1e9:,.1f} GMAC/s of training on {tp['name']} "
             f"({tp['model']}, batch {tp['batch']} at {tp['image']} px, {tp['threads']} "
             f"thread{'s' if tp['threads'] != 1 else ''}: "
             f"{tp['step_s']:.2f} s per step)", ""]
    total_h = 0.0
    table = ["| model | arm | GMACs/image | hours per run |", "|---|---|---|---|"]
    commands = []
    for model in study.models:
        macs = _arm_macs(study, model, arms)
        folder = out / model if len(study.models) > 1 else out
        for v in arms:
            # training: forward + backward (3x the forward) on every training image; evaluation after each epoch
            hours = (3 * macs[v] * train_n + macs[v] * val_n) * epochs / rate / 3600
            total_h += hours * len(seeds)
            table.append(f"| {model} | {v} | {macs[v] / 1e9:.2f} | {hours:,.1f} |")
            for s in seeds:
                commands.append(_run_command(study, model, v, s, folder / "runs" / slug(v) / f"seed{s}", data_dir,
                                             cfg))
    device = "GPU" if tp["device"] == "cuda" else "CPU"
    lines += table + ["", f"estimated: {total_h:,.1f} {device}-hours in all ({_clock(total_h)}) at the throughput "
                      f"measured on {tp['name']} (divide by the runs in parallel for the wall time). MACs count "
                      "multiply-accumulates, not memory traffic: arms whose cost is not in their MACs (AW's weight "
                      "generation, STEAM's graph ops) take longer than this.", "",
                      f"each run ({len(commands)}):"] + [f"  {c}" for c in commands]
    where = [out / m for m in study.models] if len(study.models) > 1 else [out]
    lines += ["", "results: " + "; ".join(f"{w}/report.md (runs in {w}/runs/<arm>/seed<N>/)" for w in where)]
    return lines


def _run_command(study: PaperStudy, model: str, variant: str, seed: int, run_dir: Path, data_dir: str | None,
                 cfg: dict[str, Any]) -> str:
    extra = cfg.get("argv", [])
    if study.task == "classification":
        argv = ["convattn", "train", "--model", model, "--variant", variant, "--data", "folder", "--data-dir",
                data_dir or "IMAGENET", "--preset", study.recipe, "--seed", str(seed), "--out", str(run_dir), *extra]
    else:
        argv = ["convattn", "detect", "train", "--detector", study.detector, "--backbone", model, "--variant",
                variant, "--data", "coco", "--data-dir", data_dir or "COCO", "--preset", study.recipe, "--seed",
                str(seed), "--out", str(run_dir), *extra]
    return shlex.join(argv)


def _recipe_argv(given: dict[str, Any]) -> list[str]:
    """The recipe options given, as command-line arguments of each run's command."""
    argv = []
    for k, v in given.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            argv.append(flag if v else "--no-" + k.replace("_", "-"))
        elif isinstance(v, list):
            argv += [flag, ",".join(map(str, v))]
        elif isinstance(v, dict):
            import json
            argv += [flag, json.dumps(v)]
        else:
            argv += [flag, str(v)]
    return argv


def run_paper_study(name: str, data_dir: str | None, out: str | Path | None = None,
                    variants: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                    train: dict[str, Any] | None = None, executor: Any = None, dry_run: bool = False,
                    threads: int | None = None, latency_batch: int = 64, progress: bool = True,
                    report_only: bool = False, command: str | None = None) -> list[str] | None:
    """The named paper study ``name`` on ``data_dir`` (ImageNet folder: train/ and val/ with a folder per class;
    COCO: train/, val/, annotations/), in ``out`` (default ``runs/<name>``; one folder per model when the study has
    several), through ``executor`` (as ``run_compare``'s). ``variants``: a subset of its arms; ``seeds``: default
    one; ``train``: recipe options over the preset's. With ``dry_run`` nothing trains: the plan's lines are
    printed and returned."""
    if name not in PAPER_STUDIES:
        raise ConfigError(f"--study {name!r} is not a named study; valid: {', '.join(PRESET_NAMES)}")
    study = PAPER_STUDIES[name]
    given = dict(train or {})
    seeds = list(seeds) if seeds else list(range(study.seeds))
    variants = [v.strip() for v in (variants or study.variants) if v.strip()]
    foreign = [v for v in variants if v not in study.variants and v != "none"]
    if foreign:
        raise ConfigError(f"--variants {','.join(foreign)}: not an arm of {name} (its arms: none, "
                          f"{', '.join(study.variants)}); leave --variants out for all of them")
    out = Path(out or f"runs/{name}")
    if data_dir is None and not dry_run:
        raise ConfigError(f"--study {name} trains on "
                          + ("a local ImageNet folder: give --data-dir with train/ and val/ (a folder per class)"
                             if study.task == "classification" else
                             "local COCO data: give --data-dir with train/, val/ and annotations/"))
    if data_dir is not None and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"--data-dir {data_dir}: no such folder")
    if dry_run:
        resolved = _resolved_sizes(study, data_dir, given)
        resolved["argv"] = _recipe_argv({k: v for k, v in given.items() if k != "preset"})
        lines = plan_study(study, resolved, variants, seeds, out, data_dir, _executor_label(executor))
        for line in lines:
            print(line)
        return lines
    given.setdefault("preset", study.recipe)
    given.update(_scaled_milestones(study, given))
    if study.task == "classification":
        from ..tasks.classification.study import CompareConfig, run_compare
        for model in study.models:
            cfg = CompareConfig(model=model, variants=variants, seeds=seeds, data="folder", data_dir=data_dir,
                                out=str(out / model if len(study.models) > 1 else out), train=given,
                                threads=threads, latency_batch=latency_batch, progress=progress,
                                report_only=report_only, time_budget_min=0)
            run_compare(cfg, command, executor)
        return None
    from ..tasks.detection.run import DetectConfig
    from ..tasks.detection.study import compare_detection
    base = DetectConfig(detector=study.detector, backbone=study.models[0], data="coco", data_dir=data_dir,
                        threads=threads, progress=progress, **given)
    compare_detection(base, variants, seeds, out, command, report_only, executor)
    return None


def _scaled_milestones(study: PaperStudy, given: dict[str, Any]) -> dict[str, Any]:
    """With ``--epochs`` but no ``--milestones``: the preset's learning-rate drops at the same fractions of the
    run (30/60/90 of 100 epochs -> 3/6/9 of 10), so that a shorter run keeps the schedule's shape."""
    if "epochs" not in given or "milestones" in given:
        return {}
    if study.task == "classification":
        from ..tasks.classification.config import PRESETS
        preset = PRESETS[given["preset"]]
    else:
        from ..tasks.detection.run import DETECT_PRESETS
        preset = DETECT_PRESETS[given["preset"]]
    if not preset.get("milestones"):
        return {}
    e0, e = preset["epochs"], int(given["epochs"])
    return {"milestones": sorted({min(e, max(1, round(m * e / e0))) for m in preset["milestones"]})}


def _executor_label(executor: Any) -> str:
    """How the plan names the executor (a dry run starts none)."""
    if executor is None or isinstance(executor, str):
        return executor or "local (one run after another)"
    if not hasattr(executor, "executor"):
        return type(executor).__name__
    executor, _ = resolve_auto(executor, runs=1, threads=None, parallel=False)  # a named study: no budget
    e = executor.executor
    if e == "processes":
        return f"processes ({executor.workers or 'one per core'} workers" + (
            f", GPUs {executor.devices})" if executor.devices else ")")
    if e == "ray":
        return f"ray ({executor.ray_address or 'a local cluster'})"
    if e == "slurm":
        return (f"slurm (partition {executor.slurm_partition or 'default'}, {executor.slurm_time_min} min per job, "
                f"{executor.slurm_array_parallelism} runs at once)")
    return "local (one run after another)"


def _resolved_sizes(study: PaperStudy, data_dir: str | None, given: dict[str, Any]) -> dict[str, Any]:
    """Epochs and image counts of the plan: the preset's epochs unless given; the folder's images when given."""
    if study.task == "classification":
        from ..tasks.classification.config import PRESETS
        epochs = given.get("epochs") or PRESETS[given.get("preset", study.recipe)]["epochs"]
    else:
        from ..tasks.detection.run import DETECT_PRESETS
        epochs = given.get("epochs") or DETECT_PRESETS[given.get("preset", study.recipe)]["epochs"]
    train_n, val_n, counted = study.train_images, study.val_images, False
    if data_dir is not None:
        if study.task == "classification":
            from ..data import survey_folder
            s = survey_folder(data_dir, sample=8)
            train_n, val_n, counted = s.num_train, s.num_val, True
        else:
            import json
            try:
                ann = Path(data_dir) / "annotations"
                train_n = len(json.loads((ann / "instances_train.json").read_text())["images"])
                val_n = len(json.loads((ann / "instances_val.json").read_text())["images"])
                counted = True
            except (OSError, ValueError, KeyError):
                pass
    if given.get("train_size"):
        train_n = min(train_n, int(given["train_size"]))
    return dict(epochs=int(epochs), train_images=train_n, val_images=val_n, counted=counted,
                epochs_given="epochs" in given)

"""Arguments of ``convattn train | eval | detect | compare``; each handler calls the library."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any

from .options import add_config_args, config_kwargs, int_list

__all__ = ["add_task_commands", "compare_config", "train_overrides"]


# TrainConfig fields each command declares itself (names, folders, seeds, resume, progress)
_TRAIN_OWN = ("model", "variant", "data", "data_dir", "seed", "out", "resume", "deterministic", "progress")


def _recipe_args(p: argparse.ArgumentParser, study: bool = False) -> None:
    """Every other TrainConfig field as an option (help, type and choices from the dataclass). In a study
    (``compare``) ``--workers`` are the runs in parallel: the DataLoader's are ``--loader-workers``."""
    from ..tasks.classification import TrainConfig
    g = p.add_argument_group("recipe (defaults come from --preset)")
    add_config_args(g, TrainConfig, skip=_TRAIN_OWN + (("workers",) if study else ()))
    if study:
        g.add_argument("--loader-workers", type=int, default=None,
                       help="DataLoader workers of each run (default 2; --workers: runs in parallel)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _data_args(p: argparse.ArgumentParser, default: str = "embedded") -> None:
    p.add_argument("--data", default=default,
                   help="embedded (default, ships with convattn), fashion-mnist, cifar10, cifar100, folder")
    p.add_argument("--data-dir", default=None, help="folder of the data set (fashion-mnist, cifar*, folder)")


def _variant(args: argparse.Namespace) -> str:
    if args.variant and (args.attn or args.conv):
        raise ValueError("give either --variant or --attn/--conv, not both")
    from ..models.plan import AttachPlan
    plan = AttachPlan.parse(args.variant) if args.variant else AttachPlan(attn=args.attn, conv=args.conv)
    return plan.name


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe options given on the command line (every value given is passed on as given: 0, 0.0 and False
    are values, only None means "not given"); threads are the command's own."""
    from dataclasses import fields

    from ..tasks.classification import TrainConfig
    if args.ema_decay is not None and not args.ema:
        raise ValueError(f"--ema-decay {args.ema_decay} has no effect without --ema; add --ema or drop --ema-decay")
    names = [f.name for f in fields(TrainConfig) if f.name not in _TRAIN_OWN and f.name != "threads"]
    if getattr(args, "command", None) == "compare":  # --workers: the study's parallel runs, not the DataLoader's
        names.remove("workers")
        return {**config_kwargs(args, names),
                **({"workers": args.loader_workers} if args.loader_workers is not None else {})}
    return config_kwargs(args, names)


def _run_train(args: argparse.Namespace) -> int:
    from ..tasks.classification import TrainConfig, train
    cfg = TrainConfig(model=args.model, variant=_variant(args), data=args.data, data_dir=args.data_dir, seed=args.seed,
                      out=args.out, resume=not args.no_resume, deterministic=args.deterministic, threads=args.threads,
                      progress=not args.quiet, **train_overrides(args))
    final = train(cfg)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(json.dumps(final, indent=2))
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from ..validate import check_values
    from ..tasks.classification import evaluate_run
    check_values(args, (("batch_size", dict(lo=1, integer=True, optional=True)),
                        ("recalibrate_bn", dict(lo=0, integer=True))))
    res = evaluate_run(args.run, args.data, args.data_dir, args.checkpoint, args.ema, args.batch_size, args.device,
                       args.recalibrate_bn)
    print(json.dumps(res, indent=2))
    return 0


MAX_SEEDS = 1000  # runs per arm of one study
MAX_SEED = 2**32 - 1  # NumPy's seed range (torch and Python take more)


def _seed_list(seeds: list[int]) -> list[int]:
    """``--seeds``: one number is a count (3 -> 0, 1, 2), several are the seeds themselves."""
    if not seeds:
        raise ValueError("--seeds needs a count (e.g. 3) or a list of seeds (e.g. 0,5,7)")
    if len(seeds) == 1:
        if seeds[0] < 1:
            raise ValueError(f"--seeds {seeds[0]}: a seed count must be >= 1 (give a list such as 0,1 for seed 0)")
        if seeds[0] > MAX_SEEDS:
            raise ValueError(f"--seeds {seeds[0]}: a seed count must be <= {MAX_SEEDS} (each seed trains every arm "
                             "once)")
        return list(range(seeds[0]))
    if min(seeds) < 0 or max(seeds) > MAX_SEED or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {','.join(map(str, seeds))}: seeds must be distinct integers >= 0 and "
                         f"<= {MAX_SEED}")
    if len(seeds) > MAX_SEEDS:
        raise ValueError(f"--seeds: {len(seeds)} seeds given; at most {MAX_SEEDS}")
    return list(seeds)


def _run_compare(args: argparse.Namespace) -> int:
    """One study for every task (convattn.study.compare.run_study); the task supplies recipe, runs and metrics."""
    from ..tasks.classification.study import DEFAULT_STUDY
    from ..validate import ConfigError, check_value
    seeds = _seed_list(args.seeds or [len(DEFAULT_STUDY["seeds"])])
    check_value("latency_batch", args.latency_batch, lo=1, integer=True)
    command = "convattn " + shlex.join(a for a in sys.argv[1:] if a != "--report-only")  # the command that trains
    executor = executor_config(args)
    if args.study or args.dry_run:
        from ..study.presets import PRESET_NAMES, run_paper_study
        if not args.study:
            raise ConfigError("--dry-run plans a named study: give --study " + " | ".join(PRESET_NAMES))
        run_paper_study(args.study, args.data_dir, args.out, args.variants,
                        _seed_list(args.seeds) if args.seeds else None, train_overrides(args), executor,
                        args.dry_run, args.threads, args.latency_batch, not args.quiet, args.report_only, command)
        return 0
    args.out = args.out or "runs/compare"  # (a named study's default is runs/<name>)
    if args.task == "yolo":
        from .yolo import run_compare_yolo
        return run_compare_yolo(args, seeds, command, executor, train_overrides(args))
    if args.task == "detection":
        if args.time_budget:
            raise ConfigError("--time-budget sizes classification studies; give the detection recipe (--epochs, "
                              "--train-size) instead")
        from ..tasks.detection.study import compare_detection
        compare_detection(_detection_base(args), args.variants or ["steam", "aw"], seeds, args.out or "runs/compare",
                          command,
                          args.report_only, executor)
    else:
        from ..tasks.classification.study import run_compare
        run_compare(compare_config(args, seeds), command, executor)
    return 0


def executor_config(args: argparse.Namespace):
    """Where the runs of ``compare`` execute (``--executor``, ``--workers``, ``--devices``, ``--ray-address``,
    ``--slurm-*``)."""
    from dataclasses import fields

    from ..study.executors import ExecutorConfig
    return ExecutorConfig(**config_kwargs(args, [f.name for f in fields(ExecutorConfig)]))


def compare_config(args: argparse.Namespace, seeds: list[int]):
    """The study the arguments describe, resolved as the API resolves it (:func:`resolve_compare`: the default
    study's recipe and time budget): the CLI and ``run_compare`` give the same study for the same arguments."""
    from ..tasks.classification.study import CompareConfig, resolve_compare
    return resolve_compare(CompareConfig(
        model=args.model, variants=args.variants or list(CompareConfig.variants), seeds=seeds, data=args.data,
        data_dir=args.data_dir, out=args.out or "runs/compare", train=train_overrides(args), threads=args.threads,
        latency_batch=args.latency_batch, progress=not args.quiet, report_only=args.report_only,
        time_budget_min=args.time_budget))


def _detection_base(args: argparse.Namespace):
    """The detection recipe of ``compare --task detection``: every recipe option given, or a clear refusal."""
    from dataclasses import fields

    from ..tasks.detection.run import DetectConfig
    from ..validate import ConfigError
    given = train_overrides(args)
    foreign = sorted(k for k in given if k not in {f.name for f in fields(DetectConfig)})
    if foreign:
        raise ConfigError(f"compare --task detection does not take {', '.join('--' + k.replace('_', '-') for k in foreign)} "
                          "(classification options); see `convattn detect --help` for the detection recipe")
    return DetectConfig(detector=args.detector, backbone=args.backbone,
                        data=args.data, data_dir=args.data_dir,  # checked by the detection config
                        threads=args.threads, progress=not args.quiet, **given)


# DetectConfig fields the detect command sets itself (positional-style options, --no-resume, --quiet)
_DETECT_OWN = ("variant", "seed", "out", "resume", "progress")


def _detect_args(p: argparse.ArgumentParser) -> None:
    """Every DetectConfig field as an option (help, type and choices from the dataclass)."""
    from ..tasks.detection.run import DetectConfig
    g = p.add_argument_group("detection recipe (defaults from --preset)")
    add_config_args(g, DetectConfig, skip=_DETECT_OWN)
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _detect_config(args: argparse.Namespace, **extra: Any):
    from dataclasses import fields

    from ..tasks.detection.run import DetectConfig
    names = [f.name for f in fields(DetectConfig) if f.name not in _DETECT_OWN]
    return DetectConfig(progress=not args.quiet, **config_kwargs(args, names), **extra)


def _run_detect(args: argparse.Namespace) -> int:
    from ..tasks.detection import run as engine
    from ..validate import check_values
    check_values(args, (("score_thresh", dict(lo=0, hi=1)), ("num", dict(lo=1, integer=True))))
    if args.action == "train":
        res = engine.train_detector(_detect_config(args, variant=args.variant, seed=args.seed, out=args.out or "runs/detect",
                                                   resume=not args.no_resume))
        print(json.dumps(res, indent=2))
        return 0
    if not args.run:
        raise ValueError(f"detect {args.action} needs --run (a folder written by `convattn detect train`)")
    cfg, info, model = engine.load_detector_run(args.run, args.checkpoint)
    if args.action == "eval":
        _, val = engine.build_datasets(cfg)
        res = engine.evaluate_detector(model, val, cfg.detector == "maskrcnn", next(model.parameters()).device, args.run)
        print(json.dumps(res, indent=2))
        return 0
    from pathlib import Path

    import numpy as np
    import torch

    from ..data import list_image_files
    from ..data.files import open_image
    from ..report import safe_name
    items = []
    for f in list_image_files(args.image):
        arr = np.asarray(open_image(f, "RGB"), dtype=np.float32) / 255.0
        items.append((safe_name(f.stem, "image"), torch.from_numpy(arr).permute(2, 0, 1)))
    if not items:
        _, val = engine.build_datasets(cfg)
        items = [(f"val{i}", val[i][0]) for i in range(min(args.num, len(val)))]
    out = args.out or str(Path(args.run) / "predictions")
    for p in engine.predict(model, items, info["classes"], out, args.score_thresh):
        print(p)
    return 0


def add_task_commands(sub: argparse._SubParsersAction) -> None:
    from ..models import COMPARE_VARIANTS, DEFAULT_VARIANTS
    from ..tasks.classification.study import DEFAULT_STUDY
    p = sub.add_parser("train", help="train one model/variant (torchrun for several processes)")
    p.add_argument("--model", default="resnet20",
                   help="convattn model (resnet20, resnet50, ...) or a timm/torchvision CNN: timm:<name>, torchvision:<name>")
    p.add_argument("--variant", default=None, help="e.g. se+aw, steam@all (or use --attn/--conv)")
    p.add_argument("--attn", default=None, help="se, cbam, eca, gct, steam (joined with +)")
    p.add_argument("--conv", default=None, choices=[None, "none", "aw"])
    _data_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--out", default="runs/train")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds checkpoints")
    _recipe_args(p)
    p.set_defaults(func=_run_train)

    p = sub.add_parser("eval", help="evaluate a trained run on its (or another) validation set")
    p.add_argument("--run", required=True, help="folder written by convattn train")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder or .safetensors file (default: latest)")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    _data_args(p, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's evaluation batch size")
    p.add_argument("--device", default="auto")
    p.add_argument("--recalibrate-bn", type=int, default=0, metavar="BATCHES",
                   help="first re-estimate BatchNorm statistics on this many training batches (precise BN; weights "
                        "unchanged; writes eval_precise_bn.json)")
    p.set_defaults(func=_run_eval)

    p = sub.add_parser("detect", help="detection / instance segmentation: train, eval, predict")
    p.add_argument("action", choices=["train", "eval", "predict"])
    p.add_argument("--variant", default="none", help="backbone variant, e.g. steam, aw, cbam+aw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="train: run folder (default runs/detect); predict: PNG folder")
    p.add_argument("--run", default=None, help="eval/predict: folder written by detect train")
    p.add_argument("--checkpoint", default=None, help="eval/predict: checkpoint folder or .safetensors file (default: latest)")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--image", action="append", default=[], help="predict: image file or folder (repeatable)")
    p.add_argument("--num", type=int, default=4, help="predict: validation images to draw when no --image")
    p.add_argument("--score-thresh", type=float, default=0.5)
    _detect_args(p)
    p.set_defaults(func=_run_detect)

    p = sub.add_parser("compare", help="train baseline + attention variants over seeds and write one report",
                       description="With no arguments: ResNet-20 on the embedded Fashion-MNIST subset, the default arms "
                                   f"({', '.join(COMPARE_VARIANTS)}), {len(DEFAULT_STUDY['seeds'])} seeds, sized to a "
                                   f"{DEFAULT_STUDY['time_budget_min']:g}-minute budget on this machine (training "
                                   "images, then epochs; printed before training).")
    p.add_argument("--model", default=DEFAULT_STUDY["model"])
    p.add_argument("--variants", type=lambda s: [v for v in s.split(",") if v.strip()], default=None,
                   help=f"comma-separated (default: {','.join(COMPARE_VARIANTS)}; the papers' other arms: "
                        f"{','.join(v for v in DEFAULT_VARIANTS if v not in COMPARE_VARIANTS)})")
    p.add_argument("--seeds", type=int_list, default=None,
                   help=f"a count (3 = seeds 0,1,2) or a list (0,5,7) (default {len(DEFAULT_STUDY['seeds'])}; a "
                        "named --study: 1)")
    _data_args(p)
    p.add_argument("--out", default=None, help="study folder (default runs/compare; a named --study: runs/<name>)")
    p.add_argument("--latency-batch", type=int, default=64)
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the report from the runs finished so far (marked partial)")
    p.add_argument("--time-budget", type=float, default=None, metavar="MIN",
                   help="size --train-size and --epochs (those not given) to this wall time on this machine, from "
                        f"each arm's measured cost (default: {DEFAULT_STUDY['time_budget_min']:g} for the default "
                        "study, else none; 0: no budget)")
    p.add_argument("--task", choices=["classification", "detection", "yolo"], default="classification")
    from .yolo import add_yolo_args
    add_yolo_args(p)
    from ..study.executors import ExecutorConfig
    from ..study.presets import PRESET_NAMES
    add_config_args(p.add_argument_group("where the runs execute (docs/scale.md)"), ExecutorConfig)
    p.add_argument("--study", default=None, metavar="NAME",
                   help=f"a paper's table as a named study: {', '.join(PRESET_NAMES)} (needs --data-dir: an "
                        "ImageNet folder with train/ and val/, or a COCO folder)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (runs, estimated GPU-hours, each run's command, where results go) and train "
                        "nothing")
    p.add_argument("--detector", default="fasterrcnn", choices=["fasterrcnn", "maskrcnn", "retinanet"])
    p.add_argument("--backbone", default="resnet18", help="--task detection: convattn ResNet or timm:<name> / torchvision:<name>")
    _recipe_args(p, study=True)
    p.set_defaults(func=_run_compare)

"""Command line: ``convattn profile | train | eval | compare | export | maps``. Thin: parses arguments, calls the library."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Sequence

__all__ = ["main"]


def _csv_list(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


# ProfileConfig fields the profile command declares itself (lists, the latency switch)
_PROFILE_OWN = ("models", "variants", "latency", "model_kwargs")


def _add_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="parameters, MACs and measured latency of models and attention variants",
                       description="Profile models and variants; latency ratios are to the plain model measured "
                                   "in the same run.")
    from ..models import DEFAULT_VARIANTS
    from ..profile import ProfileConfig
    from .options import add_config_args
    p.add_argument("--models", type=_csv_list, default=list(ProfileConfig.models), help="comma-separated model names "
                   f"(default {','.join(ProfileConfig.models)})")
    p.add_argument("--variants", type=_csv_list, default=None,
                   help=f"comma-separated variants (default {','.join(DEFAULT_VARIANTS)}; any variant string, e.g. "
                        "steam@all)")
    add_config_args(p, ProfileConfig, skip=_PROFILE_OWN)  # defaults and help from ProfileConfig
    p.add_argument("--no-latency", action="store_true", help="count params/MACs only")
    p.add_argument("--out", default=None, help="folder for profile.csv and profile.md")
    p.set_defaults(func=_run_profile)


def _run_profile(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from ..models import DEFAULT_VARIANTS, list_models
    from ..models.backbones import is_backbone_name
    from ..profile import ProfileConfig, profile, show_profile, write_profile
    from .options import config_kwargs
    for m in args.models:
        if m not in list_models() and not is_backbone_name(m):
            raise ValueError(f"Unknown model '{m}'. Valid names: {', '.join(list_models())}, or 'timm:<name>' / "
                             "'torchvision:<name>'")
    given = config_kwargs(args, [f.name for f in fields(ProfileConfig) if f.name not in _PROFILE_OWN])
    cfg = ProfileConfig(models=args.models, variants=args.variants or list(DEFAULT_VARIANTS),
                        latency=not args.no_latency, **given)
    rows = profile(cfg)
    show_profile(rows, title="convattn profile (MACs: 10^9 multiply-accumulates)")
    if args.out:
        csv_path, md_path = write_profile(rows, args.out, "convattn " + shlex.join(sys.argv[1:]))
        print(f"wrote {csv_path} and {md_path}")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained run or a fresh model to ONNX and TorchScript, verified")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="folder written by convattn train (weights of its latest checkpoint)")
    src.add_argument("--model", help="model name (fresh weights) when no --run is given")
    p.add_argument("--variant", default="none", help="with --model: e.g. steam, se+aw")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--input-size", type=int, default=None, help="default: the run's image size, or 224/32")
    p.add_argument("--formats", default="onnx,torchscript",
                   help="comma-separated: onnx, torchscript, hf (a timm / Hugging Face folder that "
                        "timm.create_model('local-dir:...') reloads, with a model card; docs/sharing.md)")
    p.add_argument("--dynamic-hw", action="store_true", help="also dynamic height/width in ONNX")
    p.add_argument("--ema", action="store_true", help="with --run: export the EMA weights")
    p.add_argument("--out", default="exported")
    p.set_defaults(func=_run_export)


MAX_EXPORT_SIZE = 2048  # --input-size: the traced and verified batches (up to 5 images) stay within memory


def _file_stem(model: str, variant: str) -> str:
    """``timm:mobilenetv3_large_100`` + ``se+aw`` -> ``timm_mobilenetv3_large_100_se_aw`` (safe as a file name)."""
    from ..report import safe_name
    return safe_name(f"{model}_{variant}")


def _run_export(args: argparse.Namespace) -> int:
    import torch

    from ..validate import ConfigError, check_values
    check_values(args, (("num_classes", dict(lo=1, integer=True)), ("in_chans", dict(lo=1, integer=True)),
                        ("input_size", dict(lo=8, hi=MAX_EXPORT_SIZE, integer=True, optional=True))))
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    bad = set(formats) - {"onnx", "torchscript", "hf"}
    if bad:
        raise ValueError(f"unknown export format(s) {sorted(bad)}; valid: onnx, torchscript, hf")
    if not formats:
        raise ConfigError(f"formats (--formats) {args.formats!r} names no format; give onnx, torchscript, hf or "
                          "several (comma-separated)")

    from ..export import export_model, verify_export
    if args.run:
        from ..tasks.classification.run import load_run
        cfg, info, model = load_run(args.run, use_ema=args.ema)
        name, in_chans, size = _file_stem(cfg.model, cfg.variant), info["in_chans"], info["image_size"]
    else:
        from ..models import create_model
        model = create_model(args.model, variant=args.variant, num_classes=args.num_classes,
                             in_chans=args.in_chans).eval()
        name, in_chans = _file_stem(args.model, args.variant), args.in_chans
        size = getattr(model, "default_input_size", 224)
    size = args.input_size or size
    if "hf" in formats:  # a shared folder; a run's also carries its recipe and accuracy in the card
        from pathlib import Path

        from ..sharing import export_run, save_pretrained
        target = Path(args.out) / f"{name}_hf"
        saved = export_run(args.run, target, use_ema=args.ema) if args.run else \
            save_pretrained(model, target, check_size=size)
        print(f"hf: {saved.summary()}")
        formats = tuple(f for f in formats if f != "hf")
    paths = export_model(model, args.out, name, torch.randn(2, in_chans, size, size), formats, args.dynamic_hw)
    for fmt, path in paths.items():
        worst = verify_export(model, path, fmt, in_chans, size)
        print(f"{fmt}: {path} (max |diff| vs PyTorch at batch 1, 2, 5: {worst:.2e})")
    return 0


def _add_maps(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("maps", help="draw what each attention module attends to, and Grad-CAM, for a trained run")
    p.add_argument("--run", required=True, help="folder written by convattn train")
    p.add_argument("--image", action="append", default=[], help="image file or folder (repeatable)")
    p.add_argument("--index", default=None, help="indices of validation images of the run's data set, e.g. 0,5,9")
    p.add_argument("--ema", action="store_true")
    p.add_argument("--stats", type=int, default=None, metavar="N",
                   help="also write every module's attention statistics over the first N validation images "
                        "(attention_stats.csv/.md); draws per-image maps only when --image/--index is given")
    p.add_argument("--out", default=None, help="default: <run>/maps")
    p.set_defaults(func=_run_maps)


def _run_maps(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from ..analysis.maps import attention_statistics, load_image, save_maps, save_statistics, validation_images
    from ..data import list_image_files
    from ..report import safe_name
    from ..tasks.classification.run import data_for, load_run
    if args.stats is not None and args.stats < 2:
        raise ValueError(f"--stats needs at least 2 images, got {args.stats}")
    try:
        indices = [int(i) for i in (args.index or "0").split(",")]
    except ValueError:
        raise ValueError(f"--index takes validation-image numbers such as 0,5,9; got {args.index!r}") from None
    if min(indices) < 0:
        raise ValueError(f"--index numbers must be >= 0, got {args.index!r}")
    cfg, info, model = load_run(args.run, use_ema=args.ema)
    out = Path(args.out or Path(args.run) / "maps")

    def run_images(idx: list[int]) -> list:  # the run's validation images, as the run read them
        return validation_images(data_for(cfg, 1, 1, workers=0, run_info=info), info, idx)

    if args.stats is not None:
        imgs = run_images(list(range(args.stats)))
        rows = attention_statistics(model, torch.cat([x for _, x, _, _ in imgs]))
        files = save_statistics(rows, out, f"Attention statistics: {args.run} ({args.stats} validation images)")
        print(f"{len(rows)} attention outputs: {', '.join(map(str, files))}")
        if not args.image and args.index is None:
            return 0
    items = []  # (name, tensor, display, label)
    for f in list_image_files(args.image):
        x, disp = load_image(f, info["in_chans"], info["image_size"], info["mean"], info["std"])
        items.append((safe_name(f.stem, "image"), x, disp, None))
    if args.index is not None or not items:
        items += run_images(indices)
    for name, x, disp, label in items:
        s = save_maps(model, x, disp, out / name, info.get("classes"), label)
        print(f"{out / name}: {', '.join(s['files'])} (predicted {s['prediction']}, p={s['probability']:.2f})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convattn", description="Attention modules for convolutional networks.")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: environment variable CONVATTN_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_profile(sub)
    _add_export(sub)
    _add_maps(sub)
    from .yolo import add_yolo_data_command
    add_yolo_data_command(sub)
    from .tasks import add_task_commands
    add_task_commands(sub)
    for p in sub.choices.values():  # also accepted after the command; SUPPRESS keeps a top-level --debug
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Failures caused by the input, the files or the machine: reported in one line (``--debug``: traceback)."""
    from ..optional import MissingExtra  # an optional package a feature needs: the line names the extra to install
    from ..study.compare import RunsFailed  # some runs of a study failed: the others finished, the report names them
    errors: list[type[BaseException]] = [ValueError, OSError, FloatingPointError, MemoryError, MissingExtra,
                                         RunsFailed]
    try:
        from PIL import Image
        errors.append(Image.DecompressionBombError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _check_out(args: argparse.Namespace) -> None:
    """An empty ``--out`` would write into the current folder (``Path('')`` is ``.``), or fall back to a default
    the user did not ask for: refused for every command."""
    out = getattr(args, "out", None)
    if isinstance(out, str) and not out.strip():
        from ..validate import ConfigError
        raise ConfigError(f"--out {out!r} names no folder; give the folder to write to (e.g. --out "
                          f"runs/{args.command}), or leave --out out for the default")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("CONVATTN_DEBUG", "") not in ("", "0")
    try:
        _check_out(args)
        return args.func(args)
    except _expected_errors() as e:
        if debug:
            raise
        text = str(e)
        if "Original Traceback" in text:  # raised in a DataLoader worker: its own last line says what happened
            text = text.strip().splitlines()[-1]
        msg = " ".join(text.split()) if not isinstance(e, OSError) or not e.filename else \
            f"{e.strerror or type(e).__name__}: {e.filename}"
        print(f"convattn {args.command}: error: {msg or type(e).__name__} (--debug shows the traceback)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"convattn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

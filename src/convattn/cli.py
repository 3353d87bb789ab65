"""Command line: ``convattn profile | train | eval | compare``. Thin: parses arguments, calls the library."""
from __future__ import annotations

import argparse
import shlex
import sys
from typing import Sequence

__all__ = ["main"]


def _csv_list(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def _add_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="parameters, MACs and measured latency of models and attention variants",
                       description="Profile models and variants; latency ratios are to the plain model measured "
                                   "in the same run.")
    p.add_argument("--models", type=_csv_list, default=["resnet50"], help="comma-separated model names")
    p.add_argument("--variants", type=_csv_list, default=None,
                   help="comma-separated variants (none, se, cbam, eca, gct, steam, aw, se+aw, cbam+aw, steam@all...)")
    p.add_argument("--input-size", type=int, default=None, help="square input size (default 224 ImageNet / 32 CIFAR)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile each model before timing")
    p.add_argument("--no-latency", action="store_true", help="count params/MACs only")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--out", default=None, help="folder for profile.csv and profile.md")
    p.set_defaults(func=_run_profile)


def _run_profile(args: argparse.Namespace) -> int:
    from .models import DEFAULT_VARIANTS, list_models
    from .profile import ProfileConfig, profile, show_profile, write_profile
    for m in args.models:
        if m not in list_models():
            raise ValueError(f"Unknown model '{m}'. Valid names: {', '.join(list_models())}")
    cfg = ProfileConfig(models=args.models, variants=args.variants or list(DEFAULT_VARIANTS),
                        input_size=args.input_size, batch_size=args.batch_size, device=args.device,
                        threads=args.threads, warmup=args.warmup, repeats=args.repeats,
                        channels_last=args.channels_last, compile=args.compile, latency=not args.no_latency,
                        num_classes=args.num_classes)
    rows = profile(cfg)
    show_profile(rows, title="convattn profile (MACs: 10^9 multiply-accumulates)")
    if args.out:
        csv_path, md_path = write_profile(rows, args.out, "convattn " + shlex.join(sys.argv[1:]))
        print(f"wrote {csv_path} and {md_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convattn", description="Attention modules for convolutional networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_profile(sub)
    from .tasks.cli import add_task_commands
    add_task_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"convattn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"convattn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

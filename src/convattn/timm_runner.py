"""Run timm's own scripts (``train.py``, ``validate.py``, ``benchmark.py`` of pytorch-image-models) with convattn's
models registered: ``convattn-timm path/to/train.py /data --model convattn_resnet50_se_aw ...``.

timm's scripts find models by name in timm's registry, which convattn fills when it is imported; this runner
imports convattn, then runs the script as ``python script.py args...`` would (as ``__main__``, with the script's
folder first on ``sys.path`` and ``sys.argv`` set to the script and its arguments).
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

__all__ = ["main", "run_script"]

_USAGE = ("usage: convattn-timm SCRIPT [ARGS...]\n"
          "  Runs a timm script (train.py, validate.py, benchmark.py from a pytorch-image-models checkout) with the\n"
          "  convattn_* models registered, e.g.\n"
          "  convattn-timm pytorch-image-models/train.py /data/imagefolder --model convattn_resnet50_se_aw")


_SCRIPTS = ("train.py", "validate.py", "benchmark.py", "inference.py")


def run_script(script: str | Path, args: list[str]) -> None:
    """Run ``script`` as ``__main__`` with ``args`` after registering convattn's models with timm."""
    import convattn  # noqa: F401  (registers convattn_* with timm)

    path = Path(script)
    if path.is_dir():
        found = [n for n in _SCRIPTS if (path / n).is_file()]
        hint = (f"it holds {', '.join(found)}: pass one of them, e.g. convattn-timm {path / found[0]} ..." if found
                else f"pass the path of one of timm's scripts ({', '.join(_SCRIPTS)}) in a pytorch-image-models "
                     "checkout")
        raise FileNotFoundError(f"{path} is a folder, not a script; convattn-timm expects SCRIPT [ARGS...] with SCRIPT "
                                f"a Python file such as pytorch-image-models/train.py; {hint}")
    if not path.is_file():
        raise FileNotFoundError(f"script {path} not found: pass the path of timm's train.py/validate.py (from a "
                                f"pytorch-image-models checkout)")
    old_argv, old_path0 = sys.argv, sys.path[0] if sys.path else None
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.resolve().parent))
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = old_argv
        if sys.path and sys.path[0] == str(path.resolve().parent) and sys.path[0] != old_path0:
            sys.path.pop(0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if argv else 2
    try:
        run_script(argv[0], argv[1:])
    except FileNotFoundError as e:
        print(f"convattn-timm: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

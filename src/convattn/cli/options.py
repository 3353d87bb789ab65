"""Command-line options generated from a config dataclass: one ``--field-name`` per field, typed from its annotation,
help and choices from the field's metadata. An option left out is ``None`` and the dataclass default applies, so the
dataclass is the one place an option is declared."""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any, Iterable

__all__ = ["add_config_args", "config_kwargs", "json_dict", "int_list"]


def json_dict(s: str) -> dict[str, Any]:
    """argparse type: a JSON object."""
    try:
        d = json.loads(s)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from e
    if not isinstance(d, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"mode\": \"out\"}'")
    return d


def int_list(s: str) -> list[int]:
    """argparse type: comma-separated integers."""
    try:
        return [int(p) for p in s.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers such as 3 or 0,5,7, got {s!r}") \
            from None


def _base_type(hint: Any) -> Any:
    """``int | None`` -> ``int``; other hints unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _arg_type(hint: Any) -> Any:
    base = _base_type(hint)
    origin = typing.get_origin(base)
    if origin is list:
        return int_list
    if origin is dict or base is dict:
        return json_dict
    if base in (int, float, str):
        return base
    raise TypeError(f"no command-line type for {hint!r}")


def add_config_args(group: Any, cls: type, skip: Iterable[str] = ()) -> list[str]:
    """Add ``--field-name`` for every field of dataclass ``cls`` not in ``skip``; returns the field names added.

    ``bool`` fields get ``--name/--no-name``; every option defaults to ``None`` (not given)."""
    hints = typing.get_type_hints(cls)
    added = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = meta.get("help", "")
        if default is not None and not isinstance(default, (dict, list)):
            help_text = f"{help_text} (default {default})" if help_text else f"default {default}"
        if _base_type(hints[f.name]) is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, type=_arg_type(hints[f.name]), default=None, choices=meta.get("choices"),
                               help=help_text)
        added.append(f.name)
    return added


def config_kwargs(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The options among ``names`` given on the command line (``None`` = not given: the dataclass default)."""
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}

"""Range checks for configuration values: each value is used exactly as given or refused with one line.

Every config (training, comparison, profiling, detection, export) checks its values once, where it is resolved,
through :func:`check_value`. The message names the setting both as the Python field and as the CLI option, the
value and the valid range, e.g. ``weight_decay (--weight-decay) must be a number >= 0, got -1.0``.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import torch

__all__ = ["ConfigError", "check_value", "check_values", "check_device", "option_label", "option"]


class ConfigError(ValueError):
    """A configuration value outside its valid range (or of the wrong type)."""


def option(default: Any = None, help: str = "", choices: Sequence[str] | None = None, factory: Any = None) -> Any:
    """A config dataclass field with its command-line help and choices (the CLI builds its options from them)."""
    from dataclasses import field
    meta = {"help": help, "choices": choices}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


def option_label(name: str) -> str:
    """``weight_decay`` -> ``weight_decay (--weight-decay)``."""
    return f"{name} (--{name.replace('_', '-')})"


def _range_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    return " and ".join(parts)


def check_value(name: str, value: Any, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                hi_open: bool = False, integer: bool = False, optional: bool = False) -> Any:
    """``value`` itself when it is a finite number in the range; else a :class:`ConfigError` naming ``name``.

    Args:
        name: Config field name (shown with its CLI spelling).
        lo, hi: Bounds (None: unbounded); ``lo_open``/``hi_open`` exclude the bound itself.
        integer: Require an int (bools are refused).
        optional: Accept None (meaning "the default").
    """
    if value is None and optional:
        return value
    want = f"{'an integer' if integer else 'a number'} {_range_text(lo, hi, lo_open, hi_open)}".strip()
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    bad = isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value))
    if not bad:
        bad = (lo is not None and (value <= lo if lo_open else value < lo)) or \
              (hi is not None and (value >= hi if hi_open else value > hi))
    if bad:
        raise ConfigError(f"{option_label(name)} must be {want}, got {value!r}")
    return value


def check_values(config: Any, rules: Iterable[tuple[str, dict[str, Any]]]) -> None:
    """Apply :func:`check_value` to ``getattr(config, name)`` (or ``config[name]``) for each ``(name, bounds)``."""
    for name, bounds in rules:
        value = config[name] if isinstance(config, dict) else getattr(config, name)
        check_value(name, value, **bounds)


def check_device(device: str) -> torch.device:
    """Resolve ``auto``/``cpu``/``cuda``/``cuda:N``/``mps``; a clear error for unknown or unavailable devices."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device (--device) {device!r} is not a device; valid: auto, cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device (--device) {device!r}: no CUDA device is available on this machine; "
                              "use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device (--device) {device!r}: this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s), indices 0..{torch.cuda.device_count() - 1}")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError(f"device (--device) {device!r}: MPS is not available on this machine; use cpu or auto")
    elif dev.type != "cpu":
        raise ConfigError(f"device (--device) {device!r} is not supported; valid: auto, cpu, cuda, cuda:N, mps")
    return dev

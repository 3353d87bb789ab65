"""Optimizer parameter groups: weight-decay exclusions and a learning-rate multiplier for attention parameters.

The multiplier follows mmengine's ``paramwise_cfg`` ``lr_mult``: the parameters of attention (every parameter of an
activation-attention module and AW-convolution's generator, never its kernel) train at ``lr * attn_lr_mult``; the
schedulers (timm) scale every group from its own base rate, so the ratio holds after warm-up. Weight decay is not
rescaled (SGD's step already multiplies it by the group's rate).
"""
from __future__ import annotations

import math
from typing import Any

from torch import nn

from ..layers import AttentionModule
from ..layers.contract import declared_no_weight_decay

__all__ = ["WD_EXCLUDE_MODES", "attention_parameter_names", "check_attn_lr_mult", "check_wd_exclude", "param_groups"]

WD_EXCLUDE_MODES = ("none", "declared", "norm_bias")


def check_wd_exclude(mode: str) -> str:
    """The mode itself; a clear error unless it is one of ``WD_EXCLUDE_MODES``."""
    if mode not in WD_EXCLUDE_MODES:
        raise ValueError(f"wd_exclude must be one of {', '.join(WD_EXCLUDE_MODES)}, got {mode!r}")
    return mode


def check_attn_lr_mult(mult: Any) -> float:
    """The multiplier as a float; a clear error unless it is a finite number > 0."""
    if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not math.isfinite(mult) or mult <= 0:
        raise ValueError(f"attn_lr_mult must be a finite number > 0 (1 = one rate for all), got {mult!r}")
    return float(mult)


def attention_parameter_names(model: nn.Module) -> set[str]:
    """Full names of the parameters that belong to attention.

    What each ``AttentionModule`` declares in ``attention_parameters()``: every parameter of SE, CBAM, ECA, GCT,
    STEAM and coord, and of AW-convolution only the generator (PW1, PW2), not the kernel ``K`` or the conv bias.
    """
    names: set[str] = set()
    for prefix, m in model.named_modules():
        if isinstance(m, AttentionModule):  # each module declares its own (AW: the generator, not the kernel)
            names |= {f"{prefix}.{n}" if prefix else n for n, _ in m.attention_parameters()}
    return names


def param_groups(model: nn.Module, lr: float, weight_decay: float, wd_exclude: str = "declared",
                 attn_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """Parameter groups for a torch optimizer, backbone groups first (the first group's rate is the one logged).

    Args:
        lr: base learning rate.
        weight_decay: decay of the decayed groups.
        wd_exclude: no decay on ``"none"``: nothing; ``"declared"``: parameters a module declares in
            ``no_weight_decay()`` (GCT's beta, as the official code); ``"norm_bias"``: those plus every
            1-D parameter and bias.
        attn_lr_mult: learning-rate multiplier for :func:`attention_parameter_names`; 1 gives the plain groups.
    """
    check_wd_exclude(wd_exclude)
    attn_lr_mult = check_attn_lr_mult(attn_lr_mult)
    # what attention modules declare (GCT's beta, attach's scales), plus the model's own list (timm's convention)
    declared = declared_no_weight_decay(model)
    if callable(getattr(model, "no_weight_decay", None)):
        declared |= set(model.no_weight_decay())
    attention = attention_parameter_names(model) if attn_lr_mult != 1 else set()
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}  # (is attention, no decay) -> parameters
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = wd_exclude != "none" and (
            name in declared or (wd_exclude == "norm_bias" and (p.ndim <= 1 or name.endswith(".bias"))))
        buckets.setdefault((name in attention, skip), []).append(p)
    groups = []
    for key in ((False, False), (False, True), (True, False), (True, True)):
        if key in buckets or key == (False, False):
            is_attn, no_decay = key
            groups.append({"params": buckets.get(key, []), "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr": lr * attn_lr_mult if is_attn else lr})
    return groups

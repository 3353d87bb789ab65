"""Small shared helpers for the attention layers: width rounding, layer resolution, input checks."""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["first_conv", "numeric_padding", "make_divisible", "get_act_layer", "check_input", "check_width", "to_2tuple", "upcast", "adaptive_avg_pool2d",
           "is_exporting", "register_notrace_module", "refuse_torchscript"]

try:  # timm's fx feature extraction (and its model tests) keep registered modules as one leaf call
    from timm.layers import register_notrace_module
except ImportError:  # pragma: no cover - timm is a dependency
    def register_notrace_module(cls):  # type: ignore[no-redef]
        return cls


def make_divisible(v: float, divisor: int = 1, min_value: int | None = None, round_limit: float = 0.0) -> int:
    """Round a derived channel width to a multiple of ``divisor``.

    With ``divisor=1`` the width is floored (``int(C * ratio)``), which is the official SE/CBAM rule
    ``C // r``. With a larger divisor the width is rounded to the nearest multiple as in timm, and bumped up
    by one divisor when rounding lost more than ``1 - round_limit`` of ``v``.
    """
    min_value = divisor if min_value is None else min_value
    if divisor == 1:
        new_v = max(min_value, int(v))
    else:
        new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


_ACT_LAYERS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "hard_sigmoid": nn.Hardsigmoid,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "identity": nn.Identity,
}


def get_act_layer(act: str | type[nn.Module] | Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """Resolve an activation given as a name, a module class or a factory."""
    if isinstance(act, str):
        try:
            return _ACT_LAYERS[act.lower()]
        except KeyError:
            raise ValueError(f"Unknown activation '{act}'. Valid names: {', '.join(sorted(_ACT_LAYERS))}") from None
    return act


def check_width(name: str, channels: int, rd_ratio: float | None = None) -> None:
    """A clear error for a module built for fewer than one channel or with a non-positive reduction ratio."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"{name} needs channels >= 1 (an int), got {channels!r}")
    if rd_ratio is not None and not rd_ratio > 0:
        raise ValueError(f"{name} needs rd_ratio > 0 (hidden width = channels x rd_ratio), got {rd_ratio!r}")


def is_exporting() -> bool:
    """True while a graph is being captured: ``torch.jit`` tracing, the TorchScript-based ONNX exporter,
    ``torch.fx`` symbolic tracing, or ``torch.export`` (which the default dynamo ONNX exporter uses)."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return True
    fx_tracing = getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", None)  # torch.fx.symbolic_trace
    if fx_tracing is not None and fx_tracing():
        return True
    exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(exporting is not None and exporting())


def check_input(x: torch.Tensor, channels: int | None, name: str) -> None:
    """Raise a ValueError naming the module when ``x`` is not (N, C, H, W) with the expected C.

    Skipped while tracing or scripting so exported graphs carry no Python-side checks.
    """
    if torch.jit.is_scripting() or is_exporting():
        return
    if x.ndim != 4:
        raise ValueError(f"{name} expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{name} was built for {channels} channels but got an input with {x.shape[1]} channels "
            f"(shape {tuple(x.shape)}); build it with channels={x.shape[1]} or fix the input")


def to_2tuple(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def autocast_off(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """A context that disables autocast on ``x``'s device (nothing to disable on devices without autocast, such
    as ``meta``)."""
    kind = x.device.type
    return torch.autocast(kind, enabled=False) if torch.amp.is_autocast_available(kind) else contextlib.nullcontext()


def upcast(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32 for reductions and softmax that overflow or lose precision; other dtypes unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _pool_matrix(n: int | torch.Tensor, k: int, like: torch.Tensor) -> torch.Tensor:
    """(k, n) averaging matrix with PyTorch's adaptive-pooling bins [floor(i n / k), ceil((i + 1) n / k))."""
    i = torch.arange(k, device=like.device, dtype=torch.float64)
    start = torch.floor(i * n / k)
    end = torch.ceil((i + 1) * n / k)
    pos = torch.arange(n, device=like.device, dtype=torch.float64)
    m = ((pos[None] >= start[:, None]) & (pos[None] < end[:, None])).to(like.dtype)  # (k, n)
    return m / m.sum(1, keepdim=True)


def adaptive_avg_pool2d(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d`` in eager mode; while tracing/exporting, the same bins as two small matmuls.

    ONNX export of adaptive pooling fails when the input size is not a multiple of the output size
    (pytorch issues 42653, 19954): AW's k x k pooling of 56/28/14/7 maps is such a case.
    """
    if not is_exporting():
        return F.adaptive_avg_pool2d(x, size)
    ph = _pool_matrix(x.shape[-2], size[0], x)  # (kh, H)
    pw = _pool_matrix(x.shape[-1], size[1], x)  # (kw, W)
    return torch.matmul(torch.matmul(ph, x), pw.t())  # (N, C, kh, kw)


def refuse_torchscript(what: str = "convattn models") -> None:
    """Raise the one error ``torch.jit.script`` gets from convattn (models and the modules that cannot compile)."""
    raise NotImplementedError(
        f"{what} do not support torch.jit.script: their attention uses custom autograd functions and export-time "
        "path selection that TorchScript cannot compile, and TorchScript is deprecated in PyTorch. Use "
        "torch.export.export, torch.onnx.export (both exporters) or torch.jit.trace instead")


def numeric_padding(padding: Any, kernel_size: tuple[int, int], stride: tuple[int, int],
                    dilation: tuple[int, int]) -> tuple[int, int]:
    """Turn nn.Conv2d-style padding (int, pair, 'valid', 'same') into a symmetric numeric pair."""
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0
        if padding == "same":
            if stride != (1, 1):
                raise ValueError("padding='same' is only supported with stride 1 (as in nn.Conv2d)")
            total = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
            if any(t % 2 for t in total):
                raise ValueError(f"padding='same' needs symmetric padding; dilation*(k-1) = {total} is odd. "
                                 "Pass explicit padding instead")
            return total[0] // 2, total[1] // 2
        raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    return to_2tuple(padding)


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """(name, module) of the first ``nn.Conv2d`` (or subclass) of ``model`` in module order, None without one: the
    stem whose input channels a network takes."""
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)

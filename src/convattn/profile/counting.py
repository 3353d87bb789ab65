"""Parameter and MAC counting.

Two counters, both in multiply-accumulates (MACs; 1 MAC = 2 FLOPs), 10^9 units in tables:

* **dispatch** (``torch.utils.flop_counter.FlopCounterMode``): counts at the ATen dispatch level, so it sees
  functional convolutions (AWConv2d's folded ``F.conv2d``), matmuls and every op regardless of the module
  that issues it. Its conv/matmul FLOPs are halved to MACs. Element-wise work (gates, sigmoids, pooling,
  means, batch norm, upsampling) is counted separately as ``elementwise`` operations: output elements for
  point-wise ops, input elements for reductions and pooling.
* **hooks** (the papers' kind, as thop/ptflops): forward hooks on ``nn.Conv1d/2d`` and ``nn.Linear``
  modules only: ``MACs = output elements x C_in/groups x kernel size``. It misses functional ops and counts
  AWConv2d as the plain conv it wraps (plus its generator's 1x1 convs).
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["Complexity", "count_params", "count_complexity", "count_macs_hooks", "count_macs_dispatch"]

aten = torch.ops.aten


def _first_shape(args):
    return args[0] if isinstance(args[0], (list, tuple, torch.Size)) else None


def _out_numel(*args, out_shape=None, **kwargs) -> int:
    shape = out_shape[0] if isinstance(out_shape, (list, tuple)) and out_shape and isinstance(
        out_shape[0], (list, tuple, torch.Size)) else out_shape
    return int(prod(shape)) if shape is not None else 0


def _in_numel(*args, out_shape=None, **kwargs) -> int:
    shape = _first_shape(args)
    return int(prod(shape)) if shape is not None else 0


_POINTWISE = [
    "mul", "mul_", "add", "add_", "sub", "sub_", "div", "div_", "sigmoid", "sigmoid_", "tanh", "tanh_",
    "relu", "relu_", "hardsigmoid", "hardswish", "gelu", "silu", "exp", "log", "sqrt", "rsqrt", "pow",
    "_softmax", "masked_fill", "clamp", "upsample_bilinear2d", "upsample_nearest2d",
]
_REDUCTION = [
    "mean", "sum", "amax", "max", "logsumexp", "_adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d",
    "max_pool2d_with_indices", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
    "native_batch_norm", "linalg_vector_norm",
]


def _elementwise_mapping() -> dict:
    mapping = {}
    for names, fn in ((_POINTWISE, _out_numel), (_REDUCTION, _in_numel)):
        for n in names:
            op = getattr(aten, n, None)
            if op is not None:
                mapping[op] = fn
    return mapping


_ELEMENTWISE = _elementwise_mapping()


@dataclass
class Complexity:
    params: int
    macs: int  # dispatch-level conv + matmul MACs
    elementwise: int  # dispatch-level element-wise operations
    hook_macs: int  # conv/linear module hooks (thop-style)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs_dispatch(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(conv + matmul MACs, element-wise ops) of one forward pass."""
    counter = FlopCounterMode(display=False, custom_mapping=_ELEMENTWISE)
    with counter:
        model(x)
    macs = elementwise = 0
    for op, n in counter.get_flop_counts()["Global"].items():
        if op in _ELEMENTWISE:
            elementwise += n
        else:
            macs += n // 2  # FlopCounterMode counts 2 FLOPs per multiply-add
    return macs, elementwise


@torch.no_grad()
def count_macs_hooks(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of ``nn.Conv1d/2d`` and ``nn.Linear`` modules, as hook-based counters (thop, ptflops) report."""
    total = [0]

    def conv_hook(m: nn.Module, inp, out) -> None:
        total[0] += out.numel() * (m.in_channels // m.groups) * prod(m.kernel_size)

    def linear_hook(m: nn.Module, inp, out) -> None:
        total[0] += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def count_complexity(model: nn.Module, x: torch.Tensor) -> Complexity:
    """Parameters and both MAC counts of ``model`` on input ``x`` (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    try:
        macs, elementwise = count_macs_dispatch(model, x)
        hook = count_macs_hooks(model, x)
    finally:
        model.train(was_training)
    return Complexity(count_params(model), macs, elementwise, hook)

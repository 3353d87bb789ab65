"""Squeeze-and-Excitation (SE).

Paper: "Squeeze-and-Excitation Networks", Hu, Shen, Sun, CVPR 2018 (arXiv 1709.01507).
Official code: https://github.com/hujie-frank/SENet (Caffe prototxt), Apache-2.0.

Matches the official definition: global average pool, FC (C -> C // r, bias) + ReLU, FC (C // r -> C, bias)
+ sigmoid, channel-wise scale. The FCs are 1x1 convolutions (equal to linear layers on the pooled vector,
and friendlier to channels_last and quantization, torchvision PR 4504). ``rd_divisor=1`` reproduces the
official width ``C // 16``; timm rounds to multiples of 8 instead (timm issue 260).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .contract import AttentionModule
from .helpers import check_input, check_width, get_act_layer, make_divisible

__all__ = ["SEModule"]


class SEModule(AttentionModule):
    """Squeeze-and-Excitation channel gate: ``Y = X * sigmoid(W2 relu(W1 GAP(X)))``.

    Args:
        channels: Number of input (and output) channels.
        rd_ratio: Hidden width as a fraction of ``channels``.
        rd_channels: Absolute hidden width; overrides ``rd_ratio``.
        rd_divisor: Round the hidden width to a multiple of this (1 = official floor ``C // r``).
        act_layer: Hidden activation (name or module class).
        gate_layer: Gate activation (name or module class).
    """

    def __init__(
            self,
            channels: int,
            rd_ratio: float = 1 / 16,
            rd_channels: int | None = None,
            rd_divisor: int = 1,
            act_layer: str | Callable[[], nn.Module] = "relu",
            gate_layer: str | Callable[[], nn.Module] = "sigmoid",
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        check_width(type(self).__name__, channels, None if rd_channels is not None else rd_ratio)
        if rd_channels is None:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor)
        self.channels = channels
        self.rd_channels = rd_channels
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=True, **dd)
        self.act = get_act_layer(act_layer)()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=True, **dd)
        self.gate = get_act_layer(gate_layer)()

    def reset_attention_parameters(self) -> None:
        """Default PyTorch init of both FCs (as timm and torchvision)."""
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()

    def attention(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"channel": self.gate_values(x)}

    def gate_values(self, x: torch.Tensor) -> torch.Tensor:
        """Channel gate of shape (N, C, 1, 1), values in (0, 1) for the sigmoid gate."""
        check_input(x, self.channels, type(self).__name__)
        s = x.mean((2, 3), keepdim=True)  # (N, C, 1, 1)
        return self.gate(self.fc2(self.act(self.fc1(s))))  # (N, C, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate_values(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}"

"""Coordinate Attention (coord).

Paper: "Coordinate Attention for Efficient Mobile Network Design", Hou, Zhou, Feng, CVPR 2021 (arXiv 2103.02907).
Official code: https://github.com/houqb/CoordAttention (``coordatt.py``, ``CoordAtt``).

Matches the official definition: the map is averaged along the width (giving one column, (N, C, H, 1)) and along
the height (one row, (N, C, 1, W)); the two are concatenated along the spatial axis, share one 1x1 conv (C -> mip,
bias) + BatchNorm + hard-swish, are split again, and each gets its own 1x1 conv (mip -> C, bias) + sigmoid. The
output is ``x * a_h * a_w``. Hidden width ``mip = max(8, C // reduction)``, reduction 32. Parameters:
``3 * C * mip + 3 * mip + 2 * C`` (two convs of C*mip+C, one of C*mip+mip, and the BN's affine 2*mip).
Initialisation: PyTorch's defaults, as the official code (it sets none of its own).
"""
from __future__ import annotations

import torch
from torch import nn

from .contract import AttentionModule
from .helpers import check_input

__all__ = ["CoordAttention"]


class CoordAttention(AttentionModule):
    """Coordinate attention: ``Y = X * sigmoid(F_h(z_h)) * sigmoid(F_w(z_w))`` from direction-wise pooled codes.

    Args:
        channels: Number of input (and output) channels.
        reduction: Hidden width ``max(min_hidden, channels // reduction)``.
        min_hidden: Lower bound of the hidden width (8 in the official code).
    """

    def __init__(self, channels: int, reduction: int = 32, min_hidden: int = 8,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if channels < 1:
            raise ValueError(f"CoordAttention needs channels >= 1, got {channels}")
        if reduction < 1 or min_hidden < 1:
            raise ValueError(f"CoordAttention needs reduction >= 1 and min_hidden >= 1, got {reduction}, {min_hidden}")
        self.channels = channels
        self.hidden = max(min_hidden, channels // reduction)
        self.conv1 = nn.Conv2d(channels, self.hidden, 1, bias=True, **dd)
        self.bn1 = nn.BatchNorm2d(self.hidden, **dd)
        self.act = nn.Hardswish()  # x * relu6(x + 3) / 6, the official h_swish
        self.conv_h = nn.Conv2d(self.hidden, channels, 1, bias=True, **dd)
        self.conv_w = nn.Conv2d(self.hidden, channels, 1, bias=True, **dd)

    def reset_attention_parameters(self) -> None:
        """PyTorch's default init of every layer (the official code sets none)."""
        for m in (self.conv1, self.bn1, self.conv_h, self.conv_w):
            m.reset_parameters()

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(height gate (N, C, H, 1), width gate (N, C, 1, W)), values in (0, 1)."""
        check_input(x, self.channels, type(self).__name__)
        h = x.shape[2]
        z_h = x.mean(3, keepdim=True)  # (N, C, H, 1)
        z_w = x.mean(2, keepdim=True).transpose(2, 3)  # (N, C, W, 1)
        y = self.act(self.bn1(self.conv1(torch.cat([z_h, z_w], dim=2))))  # (N, mip, H + W, 1)
        y_h, y_w = y[:, :, :h], y[:, :, h:]  # (N, mip, H, 1), (N, mip, W, 1)
        a_h = torch.sigmoid(self.conv_h(y_h))  # (N, C, H, 1)
        a_w = torch.sigmoid(self.conv_w(y_w)).transpose(2, 3)  # (N, C, 1, W)
        return a_h, a_w

    def attention(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        a_h, a_w = self.gates(x)
        return {"height": a_h, "width": a_w}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_h, a_w = self.gates(x)
        return x * a_w * a_h

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}"

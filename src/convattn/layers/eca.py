"""ECA: Efficient Channel Attention.

Paper: "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks", Wang, Wu, Zhu, Li,
Zuo, Hu, CVPR 2020 (arXiv 1910.03151). Official code: https://github.com/BangguWu/ECANet, MIT.

Matches the official definition: GAP -> Conv1d over the channel axis (1 -> 1, kernel k, zero padding
(k - 1) // 2, no bias) -> sigmoid -> channel scale. The paper's adaptive kernel
``k = |log2(C) / gamma + b / gamma|_odd`` (gamma 2, b 1, at least 3 as in timm) is used when
``kernel_size`` is None; the official code instead takes k per stage (released ResNet-50: 3, 5, 5, 7),
which the ResNet builders reproduce with a per-stage list. ``padding="circular"`` is timm's ``ceca``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .contract import AttentionModule
from .helpers import check_input, check_width

__all__ = ["ECA", "eca_kernel_size"]


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1, min_kernel: int = 3) -> int:
    """Adaptive ECA kernel size: nearest odd integer at or above ``int((log2(C) + b) / gamma)``."""
    t = int(abs((math.log2(channels) + beta) / gamma))
    k = t if t % 2 else t + 1
    return max(k, min_kernel)


class ECA(AttentionModule):
    """Efficient channel attention: ``Y = X * sigmoid(conv1d_k(GAP(X)))``.

    Args:
        channels: Number of input channels (used for the adaptive kernel size and input checks).
        kernel_size: Odd 1-D kernel size; None selects the adaptive size from ``channels``.
        gamma, beta: Constants of the adaptive kernel formula.
        padding: ``"zero"`` (official) or ``"circular"`` (timm ``ceca``, roll-equivariant).
    """

    def __init__(
            self,
            channels: int,
            kernel_size: int | None = None,
            gamma: float = 2,
            beta: float = 1,
            padding: str = "zero",
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_width(type(self).__name__, channels)
        if kernel_size is None:
            kernel_size = eca_kernel_size(channels, gamma, beta)
        if kernel_size < 1 or kernel_size % 2 != 1:
            raise ValueError(f"ECA kernel_size must be a positive odd integer, got {kernel_size}")
        if padding not in ("zero", "circular"):
            raise ValueError(f"ECA padding must be 'zero' or 'circular', got {padding!r}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.padding = padding
        pad = (kernel_size - 1) // 2
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=pad if padding == "zero" else 0, bias=False,
                              device=device, dtype=dtype)

    def reset_attention_parameters(self) -> None:
        self.conv.reset_parameters()

    def attention(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"channel": self.gate_values(x)}

    def gate_values(self, x: torch.Tensor) -> torch.Tensor:
        """Channel gate of shape (N, C, 1, 1) in (0, 1)."""
        check_input(x, self.channels, type(self).__name__)
        y = x.mean((2, 3)).unsqueeze(1)  # (N, 1, C)
        if self.padding == "circular":
            pad = (self.kernel_size - 1) // 2
            y = F.pad(y, (pad, pad), mode="circular")  # (N, 1, C + 2 pad)
        y = self.conv(y)  # (N, 1, C)
        return torch.sigmoid(y).transpose(1, 2).unsqueeze(-1)  # (N, C, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate_values(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, padding={self.padding!r}"

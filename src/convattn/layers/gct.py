"""GCT: Gated Channel Transformation.

Paper: "Gated Channel Transformation for Visual Recognition", Yang, Zhu, Wu, Yang, CVPR 2020
(arXiv 1909.11519). Official code: https://github.com/z-x-yang/GCT (PyTorch/GCT.py).
Not the Gaussian Context Transformer (Ruan et al., CVPR 2021), which shares the acronym.

Matches the official definition: l2 (default) or l1 global context embedding scaled by alpha, channel
normalisation scaled by gamma, gate ``1 + tanh(s * norm + beta)``. Init alpha = 1, gamma = beta = 0, so a
fresh unit is an exact identity. The official code turns weight decay off for beta by matching "beta" in
parameter names; here the module declares it in ``no_weight_decay()``. The embedding is computed in fp32
(a half-precision sum of squares can overflow).
"""
from __future__ import annotations

import torch
from torch import nn

from .contract import AttentionModule
from .helpers import check_input, check_width, upcast

torch.fx.wrap("upcast")  # dtype-dependent: a leaf call in torch.fx graphs

__all__ = ["GCT"]


class GCT(AttentionModule):
    """Gated channel transformation, applied in front of a convolution.

    Args:
        channels: Number of input channels.
        mode: ``"l2"`` (official default) or ``"l1"`` embedding.
        eps: Numerical constant (official 1e-5).
        after_relu: In l1 mode, skip the absolute value (inputs known non-negative).
        no_decay: Parameter names reported by ``no_weight_decay()`` (official: beta only).
    """

    def __init__(
            self,
            channels: int,
            mode: str = "l2",
            eps: float = 1e-5,
            after_relu: bool = False,
            no_decay: tuple[str, ...] = ("beta",),
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_width(type(self).__name__, channels)
        dd = {"device": device, "dtype": dtype}
        if mode not in ("l1", "l2"):
            raise ValueError(f"GCT mode must be 'l1' or 'l2', got {mode!r}")
        bad = set(no_decay) - {"alpha", "gamma", "beta"}
        if bad:
            raise ValueError(f"GCT no_decay may name alpha, gamma, beta; got {sorted(bad)}")
        self.channels = channels
        self.mode = mode
        self.eps = eps
        self.after_relu = after_relu
        self._no_decay = tuple(no_decay)
        self.alpha = nn.Parameter(torch.empty(1, channels, 1, 1, **dd))
        self.gamma = nn.Parameter(torch.empty(1, channels, 1, 1, **dd))
        self.beta = nn.Parameter(torch.empty(1, channels, 1, 1, **dd))
        self.reset_attention_parameters()

    def reset_attention_parameters(self) -> None:
        """Official init: alpha = 1, gamma = beta = 0 (identity)."""
        nn.init.ones_(self.alpha)
        nn.init.zeros_(self.gamma)
        nn.init.zeros_(self.beta)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters to exclude from weight decay."""
        return set(self._no_decay)

    def attention(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"channel": self.gate_values(x)}

    def gate_values(self, x: torch.Tensor) -> torch.Tensor:
        """Gate ``1 + tanh(...)`` of shape (N, C, 1, 1), values in (0, 2)."""
        check_input(x, self.channels, type(self).__name__)
        xf = upcast(x)
        alpha, gamma, beta = (p.to(xf.dtype) for p in (self.alpha, self.gamma, self.beta))
        if self.mode == "l2":
            s = (xf.pow(2).sum((2, 3), keepdim=True) + self.eps).sqrt() * alpha  # (N, C, 1, 1)
            norm = gamma / (s.pow(2).mean(1, keepdim=True) + self.eps).sqrt()  # (N, C, 1, 1)
        else:
            ax = xf if self.after_relu else xf.abs()
            s = ax.sum((2, 3), keepdim=True) * alpha  # (N, C, 1, 1)
            norm = gamma / (s.abs().mean(1, keepdim=True) + self.eps)  # (N, C, 1, 1)
        return (1.0 + torch.tanh(s * norm + beta)).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate_values(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, mode={self.mode!r}"

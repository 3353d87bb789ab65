"""CBAM: Convolutional Block Attention Module.

Paper: "CBAM: Convolutional Block Attention Module", Woo, Park, Lee, Kweon, ECCV 2018 (arXiv 1807.06521).
Official code: https://github.com/Jongchan/attention-module (MODELS/cbam.py), MIT.

Matches the official definition: a channel gate whose shared MLP (biases on) sums the avg- and max-pooled
descriptors, then a spatial gate: concat(max_c, mean_c) (max first) -> 7x7 conv (no bias) -> BN
(eps 1e-5, momentum 0.01) -> sigmoid. No residual around the module. timm's ``CbamModule`` drops the MLP
biases by default; here they are on, as in the official code. In detection with frozen BN the spatial
gate's BN is frozen with the backbone unless the builder keeps attention norms trainable.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .contract import AttentionModule
from .helpers import check_input, check_width, get_act_layer, make_divisible

__all__ = ["CBAM", "ChannelGate", "SpatialGate"]

_POOL_TYPES = ("avg", "max", "lp", "lse")
_INITS = ("official", "pytorch")


def _pool(x: torch.Tensor, pool_type: str) -> torch.Tensor:
    """Global pooling of (N, C, H, W) to (N, C, 1, 1)."""
    if pool_type == "avg":
        return x.mean((2, 3), keepdim=True)
    if pool_type == "max":
        return x.amax((2, 3), keepdim=True)
    if pool_type == "lp":  # official: F.lp_pool2d(x, 2, (H, W)) = sqrt(sum x^2)
        return x.pow(2).sum((2, 3), keepdim=True).sqrt()
    # "lse": official logsumexp_2d, stabilised by the per-channel max
    return torch.logsumexp(x.flatten(2), dim=2)[:, :, None, None]


class ChannelGate(nn.Module):
    """CBAM channel gate: ``sigmoid(sum_p MLP(pool_p(X)))`` with one MLP shared over the pool types."""

    def __init__(
            self,
            channels: int,
            rd_ratio: float = 1 / 16,
            rd_channels: int | None = None,
            rd_divisor: int = 1,
            pool_types: Sequence[str] = ("avg", "max"),
            mlp_bias: bool = True,
            act_layer: str | Callable[[], nn.Module] = "relu",
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_width(type(self).__name__, channels, None if rd_channels is not None else rd_ratio)
        dd = {"device": device, "dtype": dtype}
        bad = [p for p in pool_types if p not in _POOL_TYPES]
        if bad or not pool_types:
            raise ValueError(f"CBAM pool_types must be a non-empty subset of {_POOL_TYPES}, got {tuple(pool_types)}")
        if rd_channels is None:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor)
        self.pool_types = tuple(pool_types)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=mlp_bias, **dd)
        self.act = get_act_layer(act_layer)()
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=mlp_bias, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the channel gate (N, C, 1, 1)."""
        logits = None
        for p in self.pool_types:
            m = self.fc2(self.act(self.fc1(_pool(x, p))))  # (N, C, 1, 1)
            logits = m if logits is None else logits + m
        return torch.sigmoid(logits)


class SpatialGate(nn.Module):
    """CBAM spatial gate: ``sigmoid(BN(conv7x7([max_c X, mean_c X])))``."""

    def __init__(
            self,
            kernel_size: int = 7,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if kernel_size % 2 != 1:
            raise ValueError(f"CBAM spatial kernel_size must be odd, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False, **dd)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, affine=True, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the spatial gate (N, 1, H, W)."""
        p = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)  # (N, 2, H, W), max first
        return torch.sigmoid(self.bn(self.conv(p)))  # (N, 1, H, W)


class CBAM(AttentionModule):
    """Channel gate followed by spatial gate: ``Xc = X * Mc(X)``, ``Y = Xc * Ms(Xc)``.

    Args:
        channels: Number of input channels.
        rd_ratio, rd_channels, rd_divisor: Hidden width of the shared MLP (official: ``C // 16``).
        pool_types: Global pools summed in the channel gate: ``"avg"``, ``"max"``, ``"lp"``, ``"lse"``.
        kernel_size: Spatial gate kernel (official 7).
        no_spatial: Channel gate only.
        mlp_bias: Biases in the MLP (official True; timm's default is False).
        init: ``"official"`` (default; the official ResNet's initialisation, see ``reset_attention_parameters``)
            or ``"pytorch"`` (PyTorch's default init of each layer, convattn's earlier default).
    """

    def __init__(
            self,
            channels: int,
            rd_ratio: float = 1 / 16,
            rd_channels: int | None = None,
            rd_divisor: int = 1,
            pool_types: Sequence[str] = ("avg", "max"),
            kernel_size: int = 7,
            no_spatial: bool = False,
            mlp_bias: bool = True,
            act_layer: str | Callable[[], nn.Module] = "relu",
            init: str = "official",
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_width(type(self).__name__, channels, None if rd_channels is not None else rd_ratio)
        if init not in _INITS:
            raise ValueError(f"CBAM init must be one of {_INITS}, got {init!r}")
        dd = {"device": device, "dtype": dtype}
        self.init = init
        self.channels = channels
        self.channel_gate = ChannelGate(
            channels, rd_ratio, rd_channels, rd_divisor, pool_types, mlp_bias, act_layer, **dd)
        self.spatial_gate = None if no_spatial else SpatialGate(kernel_size, **dd)
        self.reset_attention_parameters()

    def reset_attention_parameters(self) -> None:
        """``init="official"``: the official ResNet's rule (Jongchan/attention-module, ``model_resnet.py``): MLP
        weights at PyTorch's default, every bias 0, the spatial conv Kaiming-normal (fan_out, gain sqrt(2)) and the
        spatial BN weight 0, so a fresh spatial gate is the constant 0.5. ``init="pytorch"``: PyTorch's default
        init of every layer (BN weight 1)."""
        gate = self.channel_gate
        gate.fc1.reset_parameters()
        gate.fc2.reset_parameters()
        if self.spatial_gate is not None:
            self.spatial_gate.conv.reset_parameters()
            self.spatial_gate.bn.reset_parameters()
        if self.init != "official":
            return
        for fc in (gate.fc1, gate.fc2):
            if fc.bias is not None:
                nn.init.zeros_(fc.bias)
        if self.spatial_gate is not None:
            nn.init.kaiming_normal_(self.spatial_gate.conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(self.spatial_gate.bn.weight)
            nn.init.zeros_(self.spatial_gate.bn.bias)

    def attention(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mc, ms = self.gates(x)
        return {"channel": mc} if ms is None else {"channel": mc, "spatial": ms}

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(channel_gate (N, C, 1, 1), spatial_gate (N, 1, H, W) or None)``."""
        check_input(x, self.channels, type(self).__name__)
        mc = self.channel_gate(x)
        ms = None if self.spatial_gate is None else self.spatial_gate(x * mc)
        return mc, ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.channels, type(self).__name__)
        x = x * self.channel_gate(x)
        if self.spatial_gate is not None:
            x = x * self.spatial_gate(x)
        return x

    def extra_repr(self) -> str:
        return f"channels={self.channels}, spatial={self.spatial_gate is not None}, init={self.init}"

"""STEAM: Squeeze and Transform Enhanced Attention Module.

Paper: "STEAM: Squeeze and Transform Enhanced Attention Module", Sabharwal, Ram Samarth B B, Rathore,
Rathore (arXiv 2412.09023, v1 2024, v2 2026). The authors' code is not public.

Reconstruction from the abstract and secondary summaries; every ambiguous choice is a named option and
the defaults and their reasons are in docs/reconstruction.md. Two sigmoid gates in sequence: Channel Interaction
Attention (CIA: channels are graph nodes on a ring, one multi-head graph-attention step over their GAP
values) then Spatial Interaction Attention (SIA: the channel mean pooled to a fixed grid by Output
Guided Pooling, one graph-attention step over each cell's 3x3 neighbourhood, logits upsampled). Each
branch owns four d-vectors (query, key, value, output), so a unit has exactly 8 * d parameters for any
channel count or input size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .contract import AttentionModule
from .eca import eca_kernel_size
from .helpers import (adaptive_avg_pool2d, autocast_off, check_input, check_width, is_exporting, refuse_torchscript,
                      register_notrace_module, to_2tuple, upcast)

__all__ = ["STEAM", "ScalarGraphAttention", "channel_spatial_gate"]



class ScalarGraphAttention(nn.Module):
    """One multi-head graph-attention step over scalar nodes, 4 * d parameters.

    With node values z, ``q_i = z_i w_q``, ``k_j = z_j w_k``, ``v_j = z_j w_v`` (split into ``heads``), a
    softmax over each node's neighbours per head, and ``u_i = <w_o, concat_m sum_j a_ij v_j> (+ z_i)``.
    Because nodes are scalars this collapses exactly to
    ``u_i = sum_m e_m sum_j softmax_j(c_m z_i z_j) z_j`` with ``c_m = <w_q^m, w_k^m> / sqrt(d_h)`` and
    ``e_m = <w_o^m, w_v^m>``, which is what ``forward`` evaluates (no d-sized intermediates).
    """

    def __init__(self, d: int = 8, heads: int = 4, residual: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if d < 1 or heads < 1 or d % heads:
            raise ValueError(f"STEAM needs d divisible by heads (d={d}, heads={heads})")
        dd = {"device": device, "dtype": dtype}
        self.d, self.heads, self.residual = d, heads, residual
        self.w_q = nn.Parameter(torch.empty(d, **dd))
        self.w_k = nn.Parameter(torch.empty(d, **dd))
        self.w_v = nn.Parameter(torch.empty(d, **dd))
        self.w_o = nn.Parameter(torch.empty(d, **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 1.0 / math.sqrt(self.d)  # N(0, 1/d)
        for w in (self.w_q, self.w_k, self.w_v, self.w_o):
            nn.init.normal_(w, std=std)

    def forward(self, z: torch.Tensor, nb: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Node logits (N, M) from node values z (N, M), neighbour values nb (N, M, K), mask valid (M, K)."""
        dh = self.d // self.heads
        c = (self.w_q * self.w_k).to(z.dtype).reshape(self.heads, dh).sum(-1) / math.sqrt(dh)  # (h,)
        e = (self.w_o * self.w_v).to(z.dtype).reshape(self.heads, dh).sum(-1)  # (h,)
        pair = z.unsqueeze(-1) * nb  # (N, M, K)
        scores = pair.unsqueeze(-1) * c  # (N, M, K, h)
        if valid is not None:
            scores = scores.masked_fill(~valid[None, :, :, None], float("-inf"))
        attn = scores.softmax(dim=2)  # (N, M, K, h)
        agg = (attn * nb.unsqueeze(-1)).sum(2)  # (N, M, h)
        u = (agg * e).sum(-1)  # (N, M); elementwise, so autocast keeps fp32
        return u + z if self.residual else u

    def extra_repr(self) -> str:
        return f"d={self.d}, heads={self.heads}, residual={self.residual}"


def _grid_offsets(window: int, neighbourhood: str) -> list[tuple[int, int]]:
    r = window // 2
    offs = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    if neighbourhood == "cross":
        offs = [(dy, dx) for dy, dx in offs if dy == 0 or dx == 0]
    return offs


# STEAM's graph construction depends on the map size (neighbourhoods, OGP grid): timm's fx feature extraction
# keeps the module as one leaf call (plain torch.fx, torch.export, ONNX and jit tracing trace through it).
@register_notrace_module
class STEAM(AttentionModule):
    """Channel (CIA) then spatial (SIA) graph attention with Output Guided Pooling; 8 * d parameters.

    Args:
        channels: Accepted for the ``create_attn`` contract and input checks; the count does not depend on it.
        d: Width of the query/key/value/output vectors of each branch.
        heads: Attention heads (d must be divisible by heads).
        order: ``"channel_first"`` (SIA sees the channel-gated input) or ``"parallel"`` (both from X).
        branches: ``"both"``, ``"channel"`` (CIA only) or ``"spatial"`` (SIA only), for ablations.
        channel_graph: ``"ring"`` (neighbours i - r .. i + r mod C), ``"adaptive"`` (ring with ECA's
            k(C)), or ``"knn"`` (top-k correlated channels; costly ablation).
        ring_radius: r of the ring (K_c = 2r + 1 neighbours including self).
        spatial_window: Odd window of the grid neighbourhood (3 = 8 neighbours + self).
        spatial_border: ``"mask"`` (out-of-grid neighbours excluded) or ``"wrap"`` (torus).
        spatial_neighbourhood: ``"square"`` or ``"cross"`` (4-neighbourhood for window 3).
        spatial_squeeze: ``"mean"`` or ``"max"`` over channels before pooling.
        ogp_size: OGP grid (clipped to the input size), or ``"input/32"`` (one cell per 32 input pixels,
            needs ``feature_stride``).
        ogp_pool: ``"avg"``, ``"max"`` or ``"avgmax"`` (mean of both).
        upsample: ``"bilinear"`` or ``"nearest"`` for the spatial logits.
        residual: Add the node's own value to its logit.
        node_norm: Standardise the node values over the nodes before the graph step (parameter-free).
        feature_stride: Stride of the feature map w.r.t. the input image (for ``ogp_size="input/32"``).
        inplace: In inference (no autograd) multiply the gates into ``x`` itself instead of a new tensor
            (as ``nn.ReLU(inplace=True)``; for blocks that own their intermediate, e.g. after a norm layer).
        weight_decay: Whether the optimizer decays the module's 8 * d vectors (True, default); False declares
            them in ``no_weight_decay`` (kept out of decay under ``--wd-exclude declared``, the default).
    """

    def __init__(
            self,
            channels: int | None = None,
            d: int = 8,
            heads: int = 4,
            order: str = "channel_first",
            branches: str = "both",
            channel_graph: str = "ring",
            ring_radius: int = 1,
            spatial_window: int = 3,
            spatial_border: str = "mask",
            spatial_neighbourhood: str = "square",
            spatial_squeeze: str = "mean",
            ogp_size: int | tuple[int, int] | str = (7, 7),
            ogp_pool: str = "avg",
            upsample: str = "bilinear",
            residual: bool = True,
            node_norm: bool = False,
            feature_stride: int | None = None,
            inplace: bool = False,
            weight_decay: bool = True,
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.weight_decay = bool(weight_decay)
        if channels is not None:  # optional: the parameter count does not depend on it
            check_width(type(self).__name__, channels)
        choices = {
            "order": (order, ("channel_first", "parallel")),
            "branches": (branches, ("both", "channel", "spatial")),
            "channel_graph": (channel_graph, ("ring", "adaptive", "knn")),
            "spatial_border": (spatial_border, ("mask", "wrap")),
            "spatial_neighbourhood": (spatial_neighbourhood, ("square", "cross")),
            "spatial_squeeze": (spatial_squeeze, ("mean", "max")),
            "ogp_pool": (ogp_pool, ("avg", "max", "avgmax")),
            "upsample": (upsample, ("bilinear", "nearest")),
        }
        for name, (value, valid) in choices.items():
            if value not in valid:
                raise ValueError(f"STEAM {name} must be one of {valid}, got {value!r}")
        if ring_radius < 0:
            raise ValueError(f"STEAM ring_radius must be >= 0, got {ring_radius}")
        if spatial_window < 1 or spatial_window % 2 != 1:
            raise ValueError(f"STEAM spatial_window must be a positive odd integer, got {spatial_window}")
        if isinstance(ogp_size, str):
            if ogp_size != "input/32":
                raise ValueError(f"STEAM ogp_size must be an int, a pair or 'input/32', got {ogp_size!r}")
            if feature_stride is None:
                raise ValueError("STEAM ogp_size='input/32' needs feature_stride (the map's stride w.r.t. the image)")
        else:
            ogp_size = to_2tuple(ogp_size)
        if channel_graph == "adaptive" and channels is None:
            raise ValueError("STEAM channel_graph='adaptive' needs channels")
        dd = {"device": device, "dtype": dtype}
        self.channels = channels
        self.order, self.branches = order, branches
        self.channel_graph = channel_graph
        self.ring_radius = (eca_kernel_size(channels) - 1) // 2 if channel_graph == "adaptive" else ring_radius
        self.spatial_border, self.spatial_squeeze = spatial_border, spatial_squeeze
        self.ogp_size, self.ogp_pool, self.upsample = ogp_size, ogp_pool, upsample
        self.node_norm, self.feature_stride = node_norm, feature_stride
        self.inplace = inplace
        self.spatial_window = spatial_window
        offs = _grid_offsets(spatial_window, spatial_neighbourhood)
        self.grid_offsets = offs
        full = _grid_offsets(spatial_window, "square")
        self.register_buffer("_nb_index", torch.tensor([full.index(o) for o in offs]), persistent=False)
        self.cia = ScalarGraphAttention(d, heads, residual, **dd) if branches != "spatial" else None
        self.sia = ScalarGraphAttention(d, heads, residual, **dd) if branches != "channel" else None

    def no_weight_decay(self) -> set[str]:
        """With ``weight_decay=False`` every parameter of the module; else none."""
        return set() if self.weight_decay else {n for n, _ in self.named_parameters()}

    def reset_attention_parameters(self) -> None:
        for m in (self.cia, self.sia):
            if m is not None:
                m.reset_parameters()

    def _norm(self, z: torch.Tensor) -> torch.Tensor:
        if not self.node_norm:
            return z
        return (z - z.mean(1, keepdim=True)) / (z.std(1, keepdim=True, unbiased=False) + 1e-5)

    def channel_logits(self, x: torch.Tensor) -> torch.Tensor:
        """CIA logits (N, C)."""
        z = self._norm(upcast(x).mean((2, 3)))  # (N, C)
        if self.channel_graph == "knn":
            k = min(2 * self.ring_radius + 1, z.shape[1])
            f = F.normalize(upcast(x).flatten(2), dim=2)  # (N, C, HW)
            idx = (f @ f.transpose(1, 2)).topk(k, dim=2).indices  # (N, C, K) most correlated channels
            nb = z.gather(1, idx.flatten(1)).reshape(idx.shape)  # (N, C, K)
        else:
            r = self.ring_radius
            nb = torch.stack([z.roll(-o, 1) for o in range(-r, r + 1)], dim=-1)  # (N, C, 2r+1)
        return self.cia(z, nb)

    def _grid_size(self, h: int, w: int) -> tuple[int, int]:
        if isinstance(self.ogp_size, str):  # "input/32": one cell per 32 input pixels
            s = self.feature_stride
            return min(h, max(1, math.ceil(h * s / 32))), min(w, max(1, math.ceil(w * s / 32)))
        return min(self.ogp_size[0], h), min(self.ogp_size[1], w)

    def _ogp(self, p: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.ogp_pool == "avg":
            return adaptive_avg_pool2d(p, size)
        if self.ogp_pool == "max":
            return F.adaptive_max_pool2d(p, size)
        return 0.5 * (F.adaptive_avg_pool2d(p, size) + F.adaptive_max_pool2d(p, size))

    def _squeeze(self, x: torch.Tensor, cg: torch.Tensor | None = None) -> torch.Tensor:
        """Channel squeeze of ``x * cg`` (or of x), (N, 1, H, W); the gated mean never builds ``x * cg``."""
        n, c, h, w = x.shape
        xf = upcast(x)
        if self.spatial_squeeze == "max":
            return (xf if cg is None else xf * cg.to(xf.dtype)).amax(1, keepdim=True)
        if cg is None:
            return xf.mean(1, keepdim=True)
        with autocast_off(x):  # a mean, kept at the input's (upcast) precision
            return _channel_weighted_sum(xf, cg.to(xf.dtype) / c)  # sum_c cg_c x_c / C

    def spatial_logits(self, x: torch.Tensor, cg: torch.Tensor | None = None) -> torch.Tensor:
        """SIA logits on the OGP grid, (N, 1, Ho, Wo), of ``x`` (or of ``x * cg`` with a channel gate)."""
        n, _, h, w = x.shape
        p = self._squeeze(x, cg)  # (N, 1, H, W)
        ho, wo = self._grid_size(h, w)
        grid = self._ogp(p, (ho, wo))  # (N, 1, Ho, Wo)
        z = self._norm(grid.flatten(1))  # (N, M), M = Ho*Wo
        zg = z.reshape(n, 1, ho, wo)
        r = self.spatial_window // 2
        if self.spatial_border == "mask":
            nb = F.unfold(zg, self.spatial_window, padding=r)  # (N, w*w, M), zero outside the grid
            valid = F.unfold(torch.ones_like(zg[:1]), self.spatial_window, padding=r)[0] > 0.5  # (w*w, M)
            nb = nb.index_select(1, self._nb_index).transpose(1, 2)  # (N, M, K)
            valid = valid.index_select(0, self._nb_index).t()  # (M, K)
        else:  # torus: neighbours by rolling the grid
            nb = torch.stack([zg.roll((-dy, -dx), (2, 3)).flatten(1) for dy, dx in self.grid_offsets], -1)  # (N, M, K)
            valid = None
        u = self.sia(z, nb, valid)  # (N, M)
        return u.reshape(n, 1, ho, wo)

    def attention(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        cg, sg = self.gates(x)
        return {k: v for k, v in (("channel", cg), ("spatial", sg)) if v is not None}

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Return ``(channel_gate (N, C, 1, 1) or None, spatial_gate (N, 1, H, W) or None)``."""
        check_input(x, self.channels, type(self).__name__)
        cg = None
        if self.cia is not None:
            cg = torch.sigmoid(self.channel_logits(x)).to(x.dtype)[:, :, None, None]  # (N, C, 1, 1)
        sg = None
        if self.sia is not None:
            sg = self._spatial_gate(x, cg if self.order == "channel_first" else None)
        return cg, sg

    def _spatial_gate(self, x: torch.Tensor, cg: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = self.spatial_logits(x, cg)  # (N, 1, Ho, Wo)
        if s.shape[-2:] != (h, w):
            if self.upsample == "bilinear":
                s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False)  # (N, 1, H, W)
            else:
                s = F.interpolate(s, size=(h, w), mode="nearest")
        return torch.sigmoid(s).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.channels, type(self).__name__)
        if not is_exporting() and x.shape[0] == 0:  # an empty batch: nothing to attend to
            return x.clone()
        if self.cia is not None:
            cg = torch.sigmoid(self.channel_logits(x)).to(x.dtype)[:, :, None, None]  # (N, C, 1, 1)
            if self.sia is None:
                return x * cg
            sg = self._spatial_gate(x, cg if self.order == "channel_first" else None)  # (N, 1, H, W)
            return channel_spatial_gate(x, cg, sg, inplace=self.inplace)
        return x * self._spatial_gate(x)

    def __prepare_scriptable__(self) -> "STEAM":
        """Called by ``torch.jit.script`` (also on a traced fx graph holding this module): refused with the reason."""
        refuse_torchscript("STEAM modules")

    def extra_repr(self) -> str:
        return (f"order={self.order!r}, branches={self.branches!r}, channel_graph={self.channel_graph!r}, "
                f"ring_radius={self.ring_radius}, ogp_size={self.ogp_size!r}, ogp_pool={self.ogp_pool!r}, "
                f"inplace={self.inplace}")


class _ChannelSpatialGate(torch.autograd.Function):
    """``x * cg * sg`` with one output allocation and two in backward (autograd's chain needs 2 and 4)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cg: torch.Tensor, sg: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, cg, sg)
        return x.mul(cg).mul_(sg)  # (N, C, H, W)

    @staticmethod
    def backward(ctx, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, cg, sg = ctx.saved_tensors
        n, c, h, w = x.shape
        gx = gy.mul(cg).mul_(sg) if ctx.needs_input_grad[0] else None  # (N, C, H, W)
        gcg = gsg = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            gyx = gy * x  # (N, C, H, W)
            if ctx.needs_input_grad[1]:  # sum over positions of gy x sg
                gcg = _position_weighted_sum(gyx, sg.to(gyx.dtype)).to(cg.dtype)
            if ctx.needs_input_grad[2]:  # sum over channels of gy x cg
                gsg = _channel_weighted_sum(gyx, cg.to(gyx.dtype)).to(sg.dtype)
        return gx, gcg, gsg


def _is_nhwc(t: torch.Tensor) -> bool:
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _channel_weighted_sum(t: torch.Tensor, wc: torch.Tensor) -> torch.Tensor:
    """``sum_c wc[n, c] t[n, c]``: (N, C, H, W), (N, C, 1, 1) -> (N, 1, H, W), one read of t in either layout."""
    n, c, h, w = t.shape
    if _is_nhwc(t):  # (N, HW, C) view @ (N, C, 1)
        return torch.bmm(t.permute(0, 2, 3, 1).reshape(n, h * w, c), wc.reshape(n, c, 1)).reshape(n, 1, h, w)
    return torch.bmm(wc.reshape(n, 1, c), t.reshape(n, c, h * w)).reshape(n, 1, h, w)  # (N, 1, C) @ (N, C, HW)


def _position_weighted_sum(t: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
    """``sum_hw ws[n, hw] t[n, :, hw]``: (N, C, H, W), (N, 1, H, W) -> (N, C, 1, 1), one read of t."""
    n, c, h, w = t.shape
    if _is_nhwc(t):  # (N, 1, HW) @ (N, HW, C)
        return torch.bmm(ws.reshape(n, 1, h * w), t.permute(0, 2, 3, 1).reshape(n, h * w, c)).reshape(n, c, 1, 1)
    return torch.bmm(t.reshape(n, c, h * w), ws.reshape(n, h * w, 1)).reshape(n, c, 1, 1)  # (N, C, HW) @ (N, HW, 1)


def channel_spatial_gate(x: torch.Tensor, cg: torch.Tensor, sg: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``x * cg * sg`` for a channel gate (N, C, 1, 1) and a spatial gate (N, 1, H, W), in as few passes as
    eager PyTorch allows: fused autograd in training; otherwise one allocation (none with ``inplace``) and
    in-place products."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return x * cg * sg
    if torch.is_grad_enabled() and (x.requires_grad or cg.requires_grad or sg.requires_grad):
        with autocast_off(x):
            return _ChannelSpatialGate.apply(x, cg, sg)
    return (x.mul_(cg) if inplace else x.mul(cg)).mul_(sg)

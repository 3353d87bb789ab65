"""AW-convolution: attention applied to the convolution weights (AW-module).

Paper: "An Attention Module for Convolutional Neural Networks", Zhu, Hofstee, Lee, Al-Ars, ICANN 2021,
LNCS 12891 (arXiv 2108.08205). The authors' code is not public.

Reconstruction from the abstract and secondary summaries (choices and reasons: docs/reconstruction.md); every ambiguous
choice is a named option. Per sample n the layer computes ``Y_n = X_n (*) (K * (1 + A_n))`` with
``A_n = PW2(ReLU(PW1(AvgPool_k(X_n))))`` from the layer's own input. PW2 is zero-initialised, so a fresh
layer computes exactly the plain convolution with the same weight.

Modes (how the generator output reaches the kernel shape C_out x C_in/g x k x k):
    ``"full"``   one value per kernel element (PW2 width C_out * C_in/g), paper-literal, heavy on wide layers;
    ``"full_g"`` the same shape with a grouped PW2 (groups = hidden width), 1x1-conv sized;
    ``"out"``    one value per output channel and tap, shared over input channels (SE-like cost);
    ``"outer"``  product of an output-channel head and an input-channel head per tap.

Implementations (``impl``): ``"fold"`` folds the batch into conv groups (one grouped conv2d, as timm's
CondConv2d); ``"unfold"`` uses unfold + batched matmul (no batch-dependent group count); ``"loop"`` runs one
conv per sample; ``"taps"`` (modes ``"out"``/``"outer"`` with the identity activation) never builds per-sample
kernels: each tap is a 1x1 convolution with the static kernel on a shifted view of the input, and the
channel factors act on its input and output (``X (*) (K * a_o b_i) = a_o * ((b_i * X) (*) K)`` per tap).
``"taps"`` also serves ``"full_g"`` when C_out is divisible by the hidden width: each PW2 group then covers
whole output channels, so ``X (*) K'_n = X (*) K(1 + b) + sum_t h_n[group, t] * (X_t (*) (K w)_t)``: two
static convolutions' worth of MACs and no per-sample kernels.
``"auto"`` follows the rule measured in benchmarks/results/cpu_modules_aw (CPU, batch 32): ``"taps"`` for mode
``"outer"`` on output maps of at most 64 positions (3-5x faster than folding at 7x7); on such small maps at
batch >= 8 with C_in/g * k^2 >= 2304, ``"taps"`` for ``"full_g"`` (about 3x a plain conv instead of 10x) and
``"unfold"`` for the other modes in inference; otherwise ``"fold"`` (fastest on every other shape). In inference (no grad) mode ``"full_g"`` caches its two parameter-only factors (two
kernel-sized tensors per layer) until a parameter changes.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .contract import AttentionModule
from .helpers import (adaptive_avg_pool2d, check_input, is_exporting, numeric_padding, refuse_torchscript,
                      register_notrace_module, to_2tuple)

__all__ = ["AWConv2d", "AW_MODES", "AW_IMPLS", "AW_DEFAULT_MODE_RULE", "default_aw_modes"]

AW_MODES = ("full", "full_g", "out", "outer")

#: The one rule for AW's generator when no ``mode`` is given (applied per convolution by ``attach``)
AW_DEFAULT_MODE_RULE = ("full (paper-literal) in networks whose first stage keeps the input resolution (CIFAR-size "
                        "networks, few channels), else full_g (grouped PW2, 1x1-conv sized) where its divisibility "
                        "holds, else full")


def default_aw_modes(finest_reduction: int) -> tuple[str, ...]:
    """The modes to try, in order, for a convolution of a network whose finest block reduction (output stride of
    its first stage) is ``finest_reduction`` (see :data:`AW_DEFAULT_MODE_RULE`)."""
    return ("full",) if finest_reduction == 1 else ("full_g", "full")
AW_IMPLS = ("auto", "fold", "unfold", "loop", "taps")
_MODE_ALIASES = {"full_grouped": "full_g", "fullg": "full_g"}
_ATTN_ACTS = ("identity", "sigmoid", "tanh")


# Eager AWConv2d picks its fastest exact implementation from the shapes; a symbolic trace cannot, and takes the
# export path (same maths, another summation order). timm's fx feature extraction keeps the module as one leaf
# call, so its graphs compute bit for bit what the eager model computes (plain torch.fx traces through it).
@register_notrace_module
class AWConv2d(nn.Conv2d, AttentionModule):
    """Drop-in ``nn.Conv2d`` whose kernel is modulated per sample: ``K'_n = K * (1 + A_n(X))``.

    The static kernel is ``self.weight`` (same key and shape as the replaced conv, so plain weights load
    as is); the generator lives in ``pw1``/``pw2``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: As ``nn.Conv2d``.
        mode: ``"full"``, ``"full_g"`` (alias ``"full_grouped"``), ``"out"`` or ``"outer"``.
        reduction: Generator hidden width is ``max(in_channels // reduction, min_hidden)``.
        min_hidden: Floor of the hidden width (4 for CIFAR-size nets, 8 suggested for ImageNet).
        pool: ``"kernel"`` pools the input to k x k cells (one per tap); ``"global"`` pools to 1 x 1 and
            produces the k x k taps through PW2's channels.
        attn_act: Activation on A: ``"identity"`` (signed modulation), ``"sigmoid"``, ``"tanh"``.
        residual: ``K * (1 + A)`` when True, ``K * A`` when False.
        init: ``"zero"`` (PW2 zero: identity at init) or ``"small"`` (PW2 weight ~ N(0, 1e-3)).
        impl: ``"auto"``, ``"fold"``, ``"unfold"``, ``"loop"`` or ``"taps"`` (see the module docstring).
    """

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            kernel_size: int | tuple[int, int],
            stride: int | tuple[int, int] = 1,
            padding: int | tuple[int, int] | str = 0,
            dilation: int | tuple[int, int] = 1,
            groups: int = 1,
            bias: bool = False,
            *,
            mode: str = "full",
            reduction: int = 16,
            min_hidden: int = 4,
            pool: str = "kernel",
            attn_act: str = "identity",
            residual: bool = True,
            init: str = "zero",
            impl: str = "auto",
            input_padding: tuple[int, int, int, int] | str | None = None,
            input_padding_mode: str = "constant",
            device: torch.device | str | None = None,
            dtype: torch.dtype | None = None,
    ) -> None:
        ks, st, dil = to_2tuple(kernel_size), to_2tuple(stride), to_2tuple(dilation)
        if input_padding is not None and input_padding != "same" and (
                not isinstance(input_padding, (tuple, list)) or len(input_padding) != 4
                or not all(isinstance(v, int) and v >= 0 for v in input_padding)):
            raise ValueError(f"AW input_padding must be None, 'same' (TF-style, from the input size) or four "
                             f"non-negative ints (left, right, top, bottom), got {input_padding!r}")
        if input_padding_mode not in ("constant", "reflect", "replicate", "circular"):
            raise ValueError(f"AW input_padding_mode must be constant, reflect, replicate or circular, got "
                             f"{input_padding_mode!r}")
        pad = numeric_padding(padding, ks, st, dil)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible "
                             f"by groups ({groups})")
        mode = _MODE_ALIASES.get(mode, mode)
        if mode not in AW_MODES:
            raise ValueError(f"Unknown AW mode {mode!r}. Valid modes: {', '.join(AW_MODES)} (or 'full_grouped')")
        if pool not in ("kernel", "global"):
            raise ValueError(f"AW pool must be 'kernel' or 'global', got {pool!r}")
        if attn_act not in _ATTN_ACTS:
            raise ValueError(f"AW attn_act must be one of {_ATTN_ACTS}, got {attn_act!r}")
        if init not in ("zero", "small"):
            raise ValueError(f"AW init must be 'zero' or 'small', got {init!r}")
        if impl not in AW_IMPLS:
            raise ValueError(f"Unknown AW impl {impl!r}. Valid: {', '.join(AW_IMPLS)}")
        if impl == "taps" and (mode not in ("out", "outer", "full_g") or attn_act != "identity"):
            raise ValueError("impl='taps' needs mode 'out', 'outer' or 'full_g' with attn_act='identity' (the "
                             "modulation must factor into output- and input-channel terms per tap)")
        dd = {"device": device, "dtype": dtype}
        super().__init__(in_channels, out_channels, ks, st, pad, dil, groups, bias, **dd)
        self.mode = mode
        self.pool = pool
        self.attn_act = attn_act
        self.residual = residual
        self.init = init
        self.impl = impl
        self.input_padding = tuple(input_padding) if isinstance(input_padding, list) else input_padding
        self.input_padding_mode = input_padding_mode
        self.hidden_channels = max(in_channels // reduction, min_hidden)
        cin_g = in_channels // groups
        # attention values per tap: P rows of k x k taps
        self.attn_rows = {"full": out_channels * cin_g, "full_g": out_channels * cin_g,
                          "out": out_channels, "outer": out_channels + cin_g}[mode]
        taps = ks[0] * ks[1]
        pw2_out = self.attn_rows * (taps if pool == "global" else 1)
        pw2_groups = self.hidden_channels if mode == "full_g" else 1
        if pw2_out % pw2_groups:
            raise ValueError(f"mode='full_g' needs the PW2 width ({pw2_out}) divisible by the hidden width "
                             f"({self.hidden_channels}); change reduction/min_hidden or use mode='full'")
        self.pw1 = nn.Conv2d(in_channels, self.hidden_channels, 1, bias=True, **dd)
        self.act = nn.ReLU(inplace=True)
        if impl == "taps" and mode == "full_g" and not self._full_g_taps_ok:
            raise ValueError(f"impl='taps' with mode='full_g' needs out_channels ({out_channels}) divisible by the "
                             f"hidden width ({self.hidden_channels}), so that each PW2 group covers whole output "
                             "channels; use impl='fold'")
        self.pw2 = nn.Conv2d(self.hidden_channels, pw2_out, 1, groups=pw2_groups, bias=True, **dd)
        self.reset_attention_parameters()

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **kwargs: Any) -> "AWConv2d":
        """Build an AWConv2d with the geometry and (copied) weights of ``conv``; a ``padding_mode`` other than
        zeros becomes the same padding of the input (``input_padding``), so the result computes what ``conv``
        computes. ``input_padding`` in ``kwargs`` (e.g. ``"same"`` for TF-style convolutions) replaces the
        convolution's own padding."""
        padding: Any = conv.padding
        if conv.padding_mode != "zeros" and "input_padding" not in kwargs:
            (ph, pw) = numeric_padding(conv.padding, conv.kernel_size, conv.stride, conv.dilation)
            kwargs = {**kwargs, "input_padding": (pw, pw, ph, ph), "input_padding_mode": conv.padding_mode}
            padding = 0
        elif kwargs.get("input_padding") is not None:
            padding = 0
        aw = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding, conv.dilation,
                 conv.groups, conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype, **kwargs)
        with torch.no_grad():
            aw.weight.copy_(conv.weight)
            if conv.bias is not None:
                aw.bias.copy_(conv.bias)
        return aw

    # On CPU, inductor's layout optimisation put channels_last conversions around the per-sample grouped
    # convolutions: the compiled AW ResNet-20 trained at 0.87x eager speed with it, 1.09x without
    # (benchmarks/results/cpu_compile_r20_aw)
    cpu_compile_options = {"layout_optimization": False}

    def for_export(self) -> Callable[[], None] | None:
        """ONNX stores a Conv's group count as a constant, so the default folded implementation would fix the
        batch size: export uses ``impl="unfold"`` (unfold + batched matmul), which has none."""
        if self.impl in ("unfold", "taps"):
            return None
        saved, self.impl = self.impl, "unfold"

        def undo() -> None:
            self.impl = saved
        return undo

    def reset_attention_parameters(self) -> None:
        """Generator init: PW1 default; PW2 zero (or small), the input head of ``outer`` default."""
        self.pw1.reset_parameters()
        with torch.no_grad():
            if self.init == "zero":
                rows = self.out_channels if self.mode == "outer" else self.pw2.out_channels
                if self.mode == "outer" and self.pool == "global":
                    rows *= self.kernel_size[0] * self.kernel_size[1]
                self.pw2.reset_parameters()  # the outer input head keeps a default init (else no gradient)
                self.pw2.weight[:rows].zero_()
                self.pw2.bias[:rows].zero_()
            else:
                nn.init.normal_(self.pw2.weight, std=1e-3)
                nn.init.zeros_(self.pw2.bias)

    def attention(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"kernel": self.kernel_attention(x)}

    def attention_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The generator (PW1, PW2) only: the kernel ``K`` and the bias are the convolution's own."""
        return ((n, p) for n, p in self.named_parameters() if n not in ("weight", "bias"))

    def kernel_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Kernel attention A, broadcastable to (N, C_out, C_in/g, kh, kw).

        Shapes: (N, C_out, C_in/g, kh, kw) for full modes and outer, (N, C_out, 1, kh, kw) for ``"out"``.
        """
        check_input(x, self.in_channels, type(self).__name__)
        n = x.shape[0]
        kh, kw = self.kernel_size
        cin_g = self.in_channels // self.groups
        z = self._generator(x)  # (N, P, kh, kw): pooled input -> PW1 -> ReLU -> PW2
        if self.mode in ("full", "full_g"):
            a = z.reshape(n, self.out_channels, cin_g, kh, kw)
        elif self.mode == "out":
            a = z.reshape(n, self.out_channels, 1, kh, kw)
        else:  # outer: output head x input head, per tap
            z_out, z_in = self._outer_heads(z)
            a = z_out * z_in  # (N, C_out, C_in/g, kh, kw)
        if self.attn_act == "sigmoid":
            a = torch.sigmoid(a)
        elif self.attn_act == "tanh":
            a = torch.tanh(a)
        return a

    def _outer_heads(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, (kh, kw) = z.shape[0], self.kernel_size
        z_out = z[:, :self.out_channels].reshape(n, self.out_channels, 1, kh, kw)  # (N, C_out, 1, kh, kw)
        z_in = z[:, self.out_channels:].reshape(n, 1, self.in_channels // self.groups, kh, kw)  # (N, 1, C_in/g, kh, kw)
        return z_out, z_in

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Generator hidden state ReLU(PW1(AvgPool(X))), (N, C_h, kh, kw) or (N, C_h, 1, 1)."""
        return self.act(self.pw1(adaptive_avg_pool2d(x, self.kernel_size if self.pool == "kernel" else (1, 1))))

    def _generator(self, x: torch.Tensor) -> torch.Tensor:
        """Raw generator output Z, (N, P, kh, kw)."""
        return self.pw2(self._hidden(x)).reshape(x.shape[0], self.attn_rows, *self.kernel_size)

    def modulated_weight(self, attn: torch.Tensor) -> torch.Tensor:
        """Per-sample kernels (N, C_out, C_in/g, kh, kw) from an attention map."""
        w = self.weight.unsqueeze(0)  # (1, C_out, C_in/g, kh, kw)
        return torch.addcmul(w, w, attn) if self.residual else w * attn  # K + K*A in one pass

    def _full_g_weight(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample kernels of mode ``full_g`` (identity activation) without materialising A.

        PW2 is grouped with one hidden channel per group, so ``Z = w * h[group] + b`` element-wise and
        ``K * (1 + Z) = K (1 + b) + (K w) * h``: two parameter-sized tensors and one per-sample pass.
        """
        n, (kh, kw), ch = x.shape[0], self.kernel_size, self.hidden_channels
        t = kh * kw if self.pool == "kernel" else 1
        h = self._hidden(x).reshape(n, ch, 1, t)  # (N, C_h, 1, T)
        k0, kw_ = self._full_g_factors(t)  # (C_h, R, T) each
        wk = torch.addcmul(k0, kw_, h)  # (N, C_h, R, T)
        return wk.reshape(n, self.out_channels, self.in_channels // self.groups, kh, kw)

    def _full_g_factors(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameter-only factors ``K (1 + b)`` (or ``K b``) and ``K w``; cached in inference until a parameter changes."""
        cacheable = not torch.is_grad_enabled() and not is_exporting() and not torch.jit.is_scripting() \
            and not torch.compiler.is_compiling()
        key = None
        if cacheable:  # parameters' storage and version: a changed parameter misses the cache
            key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in (self.weight, self.pw2.weight, self.pw2.bias))
            cached = getattr(self, "_factor_cache", None)
            if cached is not None and cached[0] == key:
                return cached[1], cached[2]
        ch = self.hidden_channels
        kv = self.weight.reshape(ch, -1, t)  # (C_h, R, T): kernel entries grouped like PW2's output channels
        wv = self.pw2.weight.reshape(ch, -1, 1)  # (C_h, R, 1)
        bv = self.pw2.bias.reshape(ch, -1, 1)
        k0 = torch.addcmul(kv, kv, bv) if self.residual else kv * bv  # (C_h, R, T)
        kw_ = kv * wv
        self._factor_cache = (key, k0, kw_) if cacheable else None
        return k0, kw_

    def forward(self, x: torch.Tensor, attn: torch.Tensor | None = None) -> torch.Tensor:
        """Convolve each sample with its modulated kernel; ``attn`` overrides the generator (for tests)."""
        check_input(x, self.in_channels, type(self).__name__)
        if self.input_padding is not None:
            return self._forward_padded(x, attn)
        if not is_exporting() and x.shape[0] == 0:  # an empty batch (grouped convs refuse zero groups)
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        impl = self._auto_impl(x) if self.impl == "auto" else self.impl
        if attn is None and impl == "taps":
            y = self._conv_taps(x)
        else:
            if attn is None and self.mode == "full_g" and self.attn_act == "identity":
                weight = self._full_g_weight(x)
            else:
                weight = self.modulated_weight(self.kernel_attention(x) if attn is None else attn)
            if impl == "unfold":
                y = self._conv_unfold(x, weight)
            elif impl == "loop":
                y = self._conv_loop(x, weight)
            else:
                y = self._conv_fold(x, weight)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        return y

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input padded as ``input_padding`` says (before a convolution with no padding of its own)."""
        if self.input_padding == "same":
            from timm.layers.padding import pad_same
            return pad_same(x, list(self.kernel_size), list(self.stride), list(self.dilation))
        return F.pad(x, self.input_padding, mode=self.input_padding_mode)

    def _forward_padded(self, x: torch.Tensor, attn: torch.Tensor | None) -> torch.Tensor:
        """With ``input_padding``: the attention from the layer's input, the convolution on the padded input."""
        if attn is None and self.mode == "full_g" and self.attn_act == "identity":
            weight = self._full_g_weight(x)
        else:
            weight = self.modulated_weight(self.kernel_attention(x) if attn is None else attn)
        xp = self.pad_input(x)
        if is_exporting() or not torch.is_grad_enabled() and x.shape[0] >= 8:
            y = self._conv_unfold(xp, weight)
        elif not is_exporting() and x.shape[0] == 0:
            y = F.conv2d(xp, self.weight, None, self.stride, 0, self.dilation, self.groups)
        else:
            y = self._conv_fold(xp, weight)
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)

    def _out_size(self, h: int, w: int) -> tuple[int, int]:
        """Output map size of this convolution for an (h, w) input."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def _auto_impl(self, x: torch.Tensor) -> str:
        """The implementation ``impl="auto"`` uses for this input (see the module docstring)."""
        if is_exporting():  # no batch-dependent group count in the graph, no shape-dependent choice
            return "taps" if self.mode == "outer" and self.attn_act == "identity" else "unfold"
        kh, kw = self.kernel_size
        ho, wo = self._out_size(x.shape[-2], x.shape[-1])
        if ho * wo <= 64:
            if self.mode == "outer" and self.attn_act == "identity":
                return "taps"
            if x.shape[0] >= 8 and (self.in_channels // self.groups) * kh * kw >= 2304:  # wide layer, real batch
                if self.mode == "full_g" and self.attn_act == "identity" and self._full_g_taps_ok:
                    return "taps"  # 2.9-3.3x a plain conv vs 10-11x folded (7x7, 512 channels, batch 8-32)
                if not torch.is_grad_enabled():
                    return "unfold"
        return "fold"

    def _conv_fold(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        xf = x.reshape(1, n * c, h, w)  # (1, N*C_in, H, W)
        wf = weight.reshape(n * self.out_channels, c // self.groups, *self.kernel_size)  # (N*C_out, C_in/g, kh, kw)
        y = F.conv2d(xf, wf, None, self.stride, self.padding, self.dilation, n * self.groups)  # (1, N*C_out, H', W')
        return y.reshape(n, self.out_channels, y.shape[-2], y.shape[-1])  # (N, C_out, H', W')

    def _conv_unfold(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        kh, kw = self.kernel_size
        ho, wo = self._out_size(h, w)
        g = self.groups
        u = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (N, C_in*kh*kw, L)
        u = u.reshape(n, g, (c // g) * kh * kw, ho * wo)  # (N, g, C_in/g*kh*kw, L)
        wm = weight.reshape(n, g, self.out_channels // g, (c // g) * kh * kw)  # (N, g, C_out/g, C_in/g*kh*kw)
        y = torch.matmul(wm, u)  # (N, g, C_out/g, L)
        return y.reshape(n, self.out_channels, ho, wo)  # (N, C_out, H', W')

    def _conv_taps(self, x: torch.Tensor) -> torch.Tensor:
        """Modes out/outer/full_g without per-sample kernels: a 1x1 conv per tap on a shifted view of the input."""
        if self.mode == "full_g":
            return self._conv_taps_full_g(x)
        n = x.shape[0]
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        z = self._generator(x)  # (N, P, kh, kw)
        if self.mode == "out":
            s_out, s_in = z.reshape(n, self.out_channels, kh, kw), None  # (N, C_out, kh, kw)
        else:
            z_out, z_in = self._outer_heads(z)
            s_out = z_out[:, :, 0]  # (N, C_out, kh, kw)
            s_in = z_in[:, 0].repeat(1, self.groups, 1, 1)  # (N, C_in, kh, kw): per-group factor for each input
        ho, wo = self._out_size(x.shape[-2], x.shape[-1])
        xp = F.pad(x, (pw, pw, ph, ph))  # (N, C_in, H + 2ph, W + 2pw)
        # residual "out": sum_d (1 + z_d) y_d; residual "outer": conv(x, K) + sum_d a_d * ((b_d * x_d) (*) K_d)
        y = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups) \
            if (self.residual and s_in is not None) else None
        for i in range(kh):
            for j in range(kw):
                xs = self._tap_view(xp, i, j, ho, wo)  # (N, C_in, H', W')
                if s_in is not None:
                    xs = xs * s_in[:, :, i, j, None, None]
                yd = F.conv2d(xs, self.weight[:, :, i:i + 1, j:j + 1], None, 1, 0, 1, self.groups)  # (N, C_out, H', W')
                scale = s_out[:, :, i, j, None, None]  # (N, C_out, 1, 1)
                if self.residual and s_in is None:
                    scale = 1.0 + scale
                yd = yd * scale
                y = yd if y is None else y + yd
        return y

    def _tap_view(self, xp: torch.Tensor, i: int, j: int, ho: int, wo: int) -> torch.Tensor:
        """The input positions that kernel tap (i, j) meets, from the zero-padded input: (N, C_in, H', W')."""
        (sh, sw), (dh, dw) = self.stride, self.dilation
        return xp[:, :, i * dh:i * dh + (ho - 1) * sh + 1:sh, j * dw:j * dw + (wo - 1) * sw + 1:sw]

    @property
    def _full_g_taps_ok(self) -> bool:
        """Each grouped-PW2 group covers whole output channels (C_out divisible by the hidden width)."""
        return self.out_channels % self.hidden_channels == 0

    def _conv_taps_full_g(self, x: torch.Tensor) -> torch.Tensor:
        """Mode ``full_g`` as static convolutions: ``X (*) K0 + sum_t h_t * (X_t (*) (K w)_t)``.

        With C_out divisible by C_h each PW2 group covers whole output channels, so the per-sample factor
        ``h`` depends only on (output channel, tap) and moves onto the conv outputs: two static-kernel
        convolutions' worth of MACs, no N x C_out x C_in x k x k tensor (the win on small late-stage maps).
        """
        n, co, ch = x.shape[0], self.out_channels, self.hidden_channels
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        t = kh * kw if self.pool == "kernel" else 1
        h = self._hidden(x).reshape(n, ch, 1, t)  # (N, C_h, 1, T)
        hs = h.expand(n, ch, co // ch, t).reshape(n, co, t)  # (N, C_out, T): each output channel's group value
        k0, kwf = (f.reshape_as(self.weight) for f in self._full_g_factors(t))  # (C_out, C_in/g, kh, kw) each
        conv = (self.stride, self.padding, self.dilation, self.groups)
        if t == 1:  # global pooling: one factor per output channel for every tap -> one conv with 2 C_out outputs
            both = F.conv2d(x, torch.cat([k0, kwf]).reshape(2, self.groups, co // self.groups, *k0.shape[1:])
                            .transpose(0, 1).reshape(2 * co, *k0.shape[1:]), None, *conv)  # (N, g*2*C_out/g, H', W')
            ho, wo = both.shape[-2:]
            both = both.reshape(n, self.groups, 2, co // self.groups, ho, wo)
            y0, y1 = both[:, :, 0].reshape(n, co, ho, wo), both[:, :, 1].reshape(n, co, ho, wo)
            return torch.addcmul(y0, y1, hs.reshape(n, co, 1, 1))
        y = F.conv2d(x, k0, None, *conv)  # (N, C_out, H', W'): the static part K (1 + b)
        ho, wo = y.shape[-2:]
        xp = F.pad(x, (pw, pw, ph, ph))  # (N, C_in, H + 2ph, W + 2pw)
        for i in range(kh):
            for j in range(kw):
                xs = self._tap_view(xp, i, j, ho, wo)  # (N, C_in, H', W')
                yd = F.conv2d(xs, kwf[:, :, i:i + 1, j:j + 1], None, 1, 0, 1, self.groups)  # (N, C_out, H', W')
                y = torch.addcmul(y, yd, hs[:, :, i * kw + j, None, None])
        return y

    def _conv_loop(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ys = [F.conv2d(x[i:i + 1], weight[i], None, self.stride, self.padding, self.dilation, self.groups)
              for i in range(x.shape[0])]
        return torch.cat(ys, 0)  # (N, C_out, H', W')

    def __prepare_scriptable__(self) -> "AWConv2d":
        """Called by ``torch.jit.script`` (also on a traced fx graph holding this module): refused with the reason."""
        refuse_torchscript("AWConv2d modules")

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", mode={self.mode!r}, hidden={self.hidden_channels}, pool={self.pool!r}, "
                f"attn_act={self.attn_act!r}, residual={self.residual}, impl={self.impl!r}"
                + (f", input_padding={self.input_padding!r}" if self.input_padding is not None else ""))

"""The attention contract: what every convattn module declares, so that models, ``attach``, the optimizer, the
maps and detection backbones treat any module the same way without knowing its name.

Two halves:

* :class:`AttentionModule`, the base class of every module (an ``nn.Module`` with no state of its own):
  ``attention(x)`` returns a ``dict`` of named tensors (see :data:`ATTENTION_KEYS`), ``reset_attention_parameters()``
  restores the module's own initialisation after a network-wide init, ``no_weight_decay()`` names parameters the
  module keeps out of weight decay, ``attention_parameters()`` the parameters that ``--attn-lr-mult`` scales, and
  ``attention_norms()`` the normalisation layers inside it (frozen with a frozen-BN detection backbone).
* :class:`AttnSpec`, the registry entry next to the constructor: the module's ``kind`` (where it sits in a
  network) and its default ``placement`` (which residual blocks get one when the user does not say).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch
from torch import nn

__all__ = ["AttentionModule", "AttnSpec", "Site", "ATTENTION_KEYS", "KINDS", "placement_all", "placement_stage_ends",
           "resolve_placement", "declared_no_weight_decay"]

#: What ``attention(x)`` may return, each a tensor broadcastable against the module's input ``x`` (N, C, H, W):
#: ``channel`` (N, C, 1, 1), ``spatial`` (N, 1, H, W), ``height`` (N, C, H, 1), ``width`` (N, C, 1, W); and for a
#: convolution replacement ``kernel``, broadcastable against the per-sample kernel (N, C_out, C_in/g, kh, kw).
ATTENTION_KEYS = ("channel", "spatial", "height", "width", "kernel")

#: ``output``: applied to a residual branch's output, before the addition (SE, CBAM, ECA, STEAM, coord);
#: ``pre_conv``: applied to the input of convolutions (GCT); ``conv``: replaces k x k convolutions (AW).
KINDS = ("output", "pre_conv", "conv")

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


class AttentionModule(nn.Module):
    """Base class of convattn's attention modules (the contract; holds no parameters of its own)."""

    def attention(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The attention this module applies to ``x``, keyed as in :data:`ATTENTION_KEYS`."""
        raise NotImplementedError

    def reset_attention_parameters(self) -> None:
        """Restore the module's own initialisation (called after a network's global init)."""
        raise NotImplementedError

    def no_weight_decay(self) -> set[str]:
        """Names (relative to this module) of parameters its official recipe trains without weight decay."""
        return set()

    def attention_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs that belong to attention (scaled by ``--attn-lr-mult``); default: all."""
        return self.named_parameters()

    def attention_norms(self) -> Iterator[tuple[str, nn.Module]]:
        """(name, module) pairs of the normalisation layers inside the module."""
        return ((n, m) for n, m in self.named_modules() if n and isinstance(m, _NORMS))

    #: ``torch.compile`` options a network holding this module compiles with on CPU (merged over its modules)
    cpu_compile_options: ClassVar[dict[str, Any]] = {}

    def for_export(self) -> Callable[[], None] | None:
        """Switch to a computation that ONNX/TorchScript export can record for any batch size; returns the
        function that switches back (None: the module needs no switch)."""
        return None


def declared_no_weight_decay(model: nn.Module) -> set[str]:
    """Full names of the parameters that the attention modules inside ``model`` keep out of weight decay."""
    names: set[str] = set()
    for prefix, m in model.named_modules():
        if m is not model and isinstance(m, AttentionModule):
            names |= {f"{prefix}.{n}" if prefix else n for n in m.no_weight_decay()}
    return names


Placement = Callable[[Sequence[int]], set[tuple[int, int]]]


def placement_all(blocks_per_stage: Sequence[int]) -> set[tuple[int, int]]:
    """Every block of every stage."""
    return {(s, b) for s, n in enumerate(blocks_per_stage) for b in range(n)}


def placement_stage_ends(blocks_per_stage: Sequence[int]) -> set[tuple[int, int]]:
    """The last block of every stage, plus the second-to-last block of the deepest stage (ties: the stage
    nearest the middle, then the later one). In a 4-stage ResNet-50 that is 5 units (stage 3 has 6 blocks); in
    the 3-stage CIFAR ResNets, 4 units (the middle stage gets two)."""
    out = {(s, n - 1) for s, n in enumerate(blocks_per_stage) if n > 0}
    if not out:
        return out
    mid = (len(blocks_per_stage) - 1) / 2
    deepest = max(range(len(blocks_per_stage)), key=lambda s: (blocks_per_stage[s], -abs(s - mid), s))
    if blocks_per_stage[deepest] > 1:
        out.add((deepest, blocks_per_stage[deepest] - 2))
    return out


_PLACEMENTS: dict[str, Placement] = {"all": placement_all, "stage_ends": placement_stage_ends}


def resolve_placement(rule: str | Placement) -> Placement:
    """A placement rule by name (``"all"``, ``"stage_ends"``) or the callable itself."""
    if callable(rule):
        return rule
    try:
        return _PLACEMENTS[rule]
    except KeyError:
        raise ValueError(f"Unknown placement rule {rule!r}. Valid: {', '.join(_PLACEMENTS)} or a callable "
                         "(blocks per stage -> set of (stage, block) pairs, both 0-based)") from None


@dataclass(frozen=True)
class Site:
    """Where one module instance goes, as ``attach`` read it off the network's dry pass (all 0-based).

    Attributes:
        kind: ``output``, ``pre_conv`` or ``conv``.
        channels: Channels of the map the module sees.
        reduction: Output stride of that map w.r.t. the input image.
        stage / index: The block's stage and position in it (-1 for convolutions outside blocks).
        blocks_per_stage: Blocks per stage of the whole network.
        finest_reduction: Output stride of the network's first stage (1 for CIFAR-style networks).
    """

    kind: str
    channels: int
    reduction: int
    stage: int = -1
    index: int = -1
    blocks_per_stage: tuple[int, ...] = ()
    finest_reduction: int = 1


@dataclass(frozen=True)
class AttnSpec:
    """A registry entry: the constructor and what the module is.

    Attributes:
        name: Registry name (``"se"``).
        ctor: ``ctor(channels, **kwargs)`` builds the module (for ``kind="conv"``: ``ctor.from_conv(conv)``).
        kind: One of :data:`KINDS`.
        placement: Default placement over residual blocks for ``output`` modules (rule name or callable).
        inplace_ok: The module takes ``inplace=True`` (gates its input in place in inference) where the input
            is a temporary.
        paper: Short citation, shown by ``list_attn(details=True)``.
        defaults: Constructor keyword defaults of this entry (e.g. ECA's circular padding for ``ceca``).
        configure: ``configure(site, kwargs) -> kwargs``: the options of one instance from where it sits
            (:class:`Site`), e.g. STEAM's OGP grid from the map's stride; applied by ``attach`` after the
            user's options (which it must not override).
    """

    name: str
    ctor: Callable[..., nn.Module]
    kind: str = "output"
    placement: str | Placement = "all"
    inplace_ok: bool = False
    paper: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    configure: Callable[["Site", dict[str, Any]], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"AttnSpec {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        resolve_placement(self.placement)

    def build(self, channels: int, **kwargs: Any) -> nn.Module:
        return self.ctor(channels, **{**self.defaults, **kwargs})

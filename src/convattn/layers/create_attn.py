"""One factory for every activation-attention module: ``create_attn(name, channels, **kwargs)``.

Names: ``"se"``, ``"cbam"``, ``"eca"``, ``"ceca"`` (circular ECA), ``"gct"``, ``"steam"``; ``None``, ``""``,
``"none"`` or ``False`` give no module. Combinations are joined with ``+`` (``"se+eca"``) and build an
``AttnSequence`` applied left to right. ``"aw"`` is a convolution, not an activation module: models take
it through ``conv="aw"`` (see ``convattn.models``).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

from torch import nn

from .cbam import CBAM
from .eca import ECA
from .gct import GCT
from .se import SEModule
from .steam import STEAM

__all__ = ["create_attn", "get_attn", "list_attn", "AttnSequence"]

_ATTN_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "se": SEModule,
    "cbam": CBAM,
    "eca": ECA,
    "ceca": functools.partial(ECA, padding="circular"),
    "gct": GCT,
    "steam": STEAM,
}
_NONE_NAMES = ("", "none")


class AttnSequence(nn.Sequential):
    """Several attention modules applied one after the other (a ``"a+b"`` name)."""

    def reset_attention_parameters(self) -> None:
        for m in self:
            m.reset_attention_parameters()


def list_attn() -> list[str]:
    """Registered attention names."""
    return sorted(_ATTN_REGISTRY)


def split_attn_name(name: str) -> list[str]:
    """``"se+eca"`` -> ``["se", "eca"]``; validates each part."""
    parts = [p.strip().lower() for p in name.split("+")]
    for p in parts:
        if p == "aw":
            raise ValueError("'aw' is a convolution, not an activation attention: build models with conv='aw' "
                             "(or a variant string such as 'se+aw' in create_model/compare)")
        if p not in _ATTN_REGISTRY:
            raise ValueError(f"Unknown attention '{p}'. Valid names: {', '.join(list_attn())} "
                             "(join several with '+', or None for no attention)")
    return parts


def get_attn(attn_type: str | type[nn.Module] | Callable[..., nn.Module] | bool | None) -> Callable[..., nn.Module] | None:
    """Resolve a name, class or partial to a module constructor (None for no attention)."""
    if attn_type is None or attn_type is False:
        return None
    if isinstance(attn_type, str):
        if attn_type.strip().lower() in _NONE_NAMES:
            return None
        parts = split_attn_name(attn_type)
        if len(parts) == 1:
            return _ATTN_REGISTRY[parts[0]]
        ctors = [_ATTN_REGISTRY[p] for p in parts]
        return lambda channels, **kw: AttnSequence(*[c(channels, **kw) for c in ctors])
    if attn_type is True:
        return SEModule
    if callable(attn_type):
        return attn_type
    raise ValueError(f"Cannot build an attention module from {attn_type!r}")


def create_attn(
        attn_type: str | type[nn.Module] | Callable[..., nn.Module] | bool | None,
        channels: int,
        **kwargs: Any,
) -> nn.Module | None:
    """Build an attention module by name.

    Args:
        attn_type: Registered name (``"+"`` joins several), module class or partial; None disables attention.
        channels: Number of input channels.
        **kwargs: Passed to the module constructor.
    """
    ctor = get_attn(attn_type)
    if ctor is None:
        return None
    return ctor(channels, **kwargs)

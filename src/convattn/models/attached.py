"""The classes ``attach`` gives the modules it changes: a layer that runs an attached child after itself
(:class:`ThenAttn`) or before itself (:class:`AttnThen`), made once per base class and picklable, and
:class:`ResidualScale`, the identity form of a gated module (``y = x + s * (m(x) - x)``, ``s`` = 0 at insertion).

State-dict keys of the original layer do not change: it keeps its class's behaviour and parameters and gains a
child ``attn``.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch import nn

from ..layers import AttentionModule
from ..layers.helpers import refuse_torchscript

__all__ = ["ResidualScale", "ThenAttn", "AttnThen", "attached_class", "has_attn", "attach_child"]

class ResidualScale(AttentionModule):
    """``y = x + scale * (module(x) - x)`` with ``scale`` initialised to 0: the identity at insertion."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.scale = nn.Parameter(torch.zeros(()))

    def reset_attention_parameters(self) -> None:
        nn.init.zeros_(self.scale)

    def no_weight_decay(self) -> set[str]:
        return {"scale"}  # weight decay would pull the module back towards the identity

    def attention(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.module.attention(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale.to(x.dtype) * (self.module(x) - x)


# --- modules that run an attached child after / before themselves (classes made once per base class) ---

class ThenAttn:
    """Mixin: ``forward`` returns ``self.attn(<the base class's forward>)``."""

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.attn(super().forward(*args, **kwargs))

    def __reduce_ex__(self, protocol: int) -> tuple[Any, ...]:
        return _reduce_attached(self, ThenAttn, protocol)

    def __prepare_scriptable__(self) -> nn.Module:
        refuse_torchscript("models with attach()ed modules")


class AttnThen:
    """Mixin: ``forward`` runs ``self.attn`` on the input, then the base class's forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.attn(x))

    def __reduce_ex__(self, protocol: int) -> tuple[Any, ...]:
        return _reduce_attached(self, AttnThen, protocol)

    def __prepare_scriptable__(self) -> nn.Module:
        refuse_torchscript("models with attach()ed modules")


# Alternate forwards a library switches a module to by ``module.forward = module.forward_<x>`` (ultralytics: fuse()
# -> forward_fuse, ONNX export -> forward_split): an attached module runs its attention after them too.
_ALTERNATE_FORWARDS = ("forward_fuse", "forward_split")


def _then_attn_alternate(name: str) -> Callable[..., torch.Tensor]:
    def alternate(self: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.attn(getattr(super(ThenAttn, self), name)(*args, **kwargs))
    alternate.__name__ = name
    return alternate


@functools.lru_cache(maxsize=None)
def attached_class(base: type, mixin: type) -> type:
    suffix = "WithOutputAttn" if mixin is ThenAttn else "WithInputAttn"
    # a torch.nn layer stays a leaf for torch.fx (its Tracer treats torch.nn's classes as leaves): the graph then
    # calls the attached layer as one module, whose forward runs the attention
    module = base.__module__ if base.__module__.startswith("torch.nn") else __name__
    body: dict[str, Any] = {"__module__": module, "_convattn_base": base}
    if mixin is ThenAttn:
        body.update({n: _then_attn_alternate(n) for n in _ALTERNATE_FORWARDS if callable(getattr(base, n, None))})
    return type(f"{base.__name__}{suffix}", (mixin, base), body)


def _new_attached(base: type, mixin: str) -> nn.Module:
    """Unpickling (pickle, torch.save, deepcopy): an empty instance of the attached class of ``base``. The class is
    made at run time, so a pickle names this function and ``base`` (both importable) instead of it."""
    cls = attached_class(base, {"ThenAttn": ThenAttn, "AttnThen": AttnThen}[mixin])
    return cls.__new__(cls)


def _reduce_attached(obj: nn.Module, mixin: type, protocol: int) -> tuple[Any, ...]:
    rv = object.__reduce_ex__(obj, max(protocol, 2))  # (copyreg.__newobj__, (cls,), state, ...)
    return (_new_attached, (type(obj)._convattn_base, mixin.__name__)) + tuple(rv[2:])


def has_attn(module: nn.Module) -> bool:
    return isinstance(getattr(module, "attn", None), nn.Module)


def attach_child(module: nn.Module, attn: nn.Module, mixin: type) -> None:
    module.__class__ = attached_class(type(module), mixin)
    module.add_module("attn", attn)

"""The attention registry and its factory: ``create_attn(name, channels, **kwargs)``.

Each name maps to an :class:`~convattn.layers.contract.AttnSpec`: the constructor and what the module is (its
kind and default placement). Names: ``"se"``, ``"cbam"``, ``"eca"``, ``"ceca"`` (circular ECA), ``"gct"``,
``"steam"``, ``"coord"``; ``None``, ``""``, ``"none"`` or ``False`` give no module. Combinations are joined with
``+`` (``"se+eca"``) and build an ``AttnSequence`` applied left to right. ``"aw"`` is registered too, as a
convolution replacement (kind ``conv``): models take it through ``conv="aw"``, and ``create_attn`` refuses it.

Adding a module: write its file (a subclass of ``AttentionModule``) and add one ``AttnSpec`` line to
``_SPECS`` below; models, ``attach``, the optimizer's groups, maps, export and detection then handle it.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .aw_conv import AWConv2d
from .cbam import CBAM
from .contract import AttnSpec, Site
from .coord import CoordAttention
from .eca import ECA
from .gct import GCT
from .se import SEModule
from .steam import STEAM

__all__ = ["create_attn", "get_attn", "get_attn_spec", "list_attn", "register_attn", "AttnSequence", "module_options"]

def _steam_site(site: Site, kwargs: dict[str, Any]) -> dict[str, Any]:
    """STEAM's ``ogp_size="input/32"`` grid needs the map's stride w.r.t. the image."""
    if kwargs.get("ogp_size") == "input/32" and kwargs.get("feature_stride") is None:
        kwargs = {**kwargs, "feature_stride": site.reduction}
    return kwargs


_SPECS: tuple[AttnSpec, ...] = (
    AttnSpec("se", SEModule, paper="Hu, Shen, Sun, CVPR 2018"),
    AttnSpec("cbam", CBAM, paper="Woo, Park, Lee, Kweon, ECCV 2018"),
    AttnSpec("eca", ECA, paper="Wang et al., CVPR 2020"),
    AttnSpec("ceca", ECA, paper="Wang et al., CVPR 2020 (circular padding)", defaults={"padding": "circular"}),
    AttnSpec("gct", GCT, kind="pre_conv", paper="Yang, Zhu, Wu, Yang, CVPR 2020"),
    AttnSpec("steam", STEAM, placement="stage_ends", inplace_ok=True, paper="Sabharwal et al., 2024",
             configure=_steam_site),
    AttnSpec("coord", CoordAttention, paper="Hou, Zhou, Feng, CVPR 2021"),
    AttnSpec("aw", AWConv2d, kind="conv", paper="Zhu, Hofstee, Lee, Al-Ars, ICANN 2021"),  # mode: default_aw_modes
)
_REGISTRY: dict[str, AttnSpec] = {s.name: s for s in _SPECS}
_NONE_NAMES = ("", "none")


def register_attn(spec: AttnSpec) -> AttnSpec:
    """Add a module to the registry (an error if the name is taken)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"attention {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


# constructor arguments that are the host layer's geometry or placement, not options of the attention itself
_NOT_OPTIONS = {"self", "channels", "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                "groups", "bias", "device", "dtype", "inplace", "input_padding", "input_padding_mode"}


def module_options(name: str, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every option of module ``name`` with the value a model built with ``kwargs`` uses: the constructor's
    defaults, then the registry entry's, then ``kwargs`` (for reports: what was run, not fixed text).

    Model-level defaults (e.g. a ResNet's AW ``mode``) are applied by the model builders and not seen here."""
    import inspect
    spec = get_attn_spec(name)
    params = inspect.signature(spec.ctor.__init__ if isinstance(spec.ctor, type) else spec.ctor).parameters
    opts = {k: p.default for k, p in params.items()
            if k not in _NOT_OPTIONS and p.default is not inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    opts.update(spec.defaults)
    unknown = sorted(set(kwargs or {}) - set(opts))
    if unknown:
        raise ValueError(f"{name} has no option(s) {', '.join(unknown)}; valid: {', '.join(sorted(opts))}")
    opts.update(kwargs or {})
    return opts


def get_attn_spec(name: str) -> AttnSpec:
    """The registry entry of one name; a clear error listing the valid names."""
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise ValueError(f"Unknown attention '{name}'. Valid names: {', '.join(list_attn())} "
                         "(join several with '+', or None for no attention)")
    return _REGISTRY[key]


class AttnSequence(nn.Sequential):
    """Several attention modules applied one after the other (a ``"a+b"`` name)."""

    def reset_attention_parameters(self) -> None:
        for m in self:
            m.reset_attention_parameters()


def list_attn(kind: str | None = None) -> list[str]:
    """Registered names, optionally of one kind (``output``, ``pre_conv``, ``conv``)."""
    return sorted(n for n, s in _REGISTRY.items() if kind is None or s.kind == kind)


def split_attn_name(name: str) -> list[str]:
    """``"se+eca"`` -> ``["se", "eca"]``; validates each part (activation attention only)."""
    parts = [p.strip().lower() for p in name.split("+")]
    for p in parts:
        if get_attn_spec(p).kind == "conv":
            raise ValueError(f"'{p}' is a convolution, not an activation attention: build models with conv='{p}' "
                             f"(or a variant string such as 'se+{p}' in create_model/compare)")
    return parts


def get_attn(attn_type: str | type[nn.Module] | Callable[..., nn.Module] | bool | None) -> Callable[..., nn.Module] | None:
    """Resolve a name, class or partial to a module constructor (None for no attention)."""
    if attn_type is None or attn_type is False:
        return None
    if isinstance(attn_type, str):
        if attn_type.strip().lower() in _NONE_NAMES:
            return None
        specs = [_REGISTRY[p] for p in split_attn_name(attn_type)]
        if len(specs) == 1:
            return specs[0].ctor if not specs[0].defaults else specs[0].build
        return lambda channels, **kw: AttnSequence(*[s.build(channels, **kw) for s in specs])
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

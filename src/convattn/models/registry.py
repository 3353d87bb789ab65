"""Model registry: ``create_model(name, attn=..., conv=...)``, ``list_models()``, variant strings, timm hookup."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .backbones import VERIFIED_BACKBONES, is_backbone_name
from .build import build_model, split_plan_options
from .networks import CIFAR_MODELS, CONVATTN_NETWORKS, IMAGENET_MODELS, IMAGENET_RESNETS
from .plan import AttachPlan

__all__ = ["create_model", "default_data_cfg", "list_models", "register_model", "model_entrypoint", "parse_variant",
           "Variant", "DEFAULT_VARIANTS", "COMPARE_VARIANTS", "CIFAR_MODELS", "IMAGENET_MODELS", "IMAGENET_RESNETS"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}

# The variants the papers compare (the profile default; the evidence study trains all of them).
DEFAULT_VARIANTS = ("none", "se", "cbam", "eca", "gct", "steam", "aw", "se+aw", "cbam+aw")
# The compare default: the two reconstructions (STEAM, AW) and the baselines both papers report (SE, CBAM) plus
# ECA, the cheapest. GCT and the stacked arms cost 41 % of the nine arms' training time per image; without them the
# 15-minute default study trains each arm on about twice the images (reports/default_study).
COMPARE_VARIANTS = ("none", "se", "cbam", "eca", "steam", "aw")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn
    return deco


def list_models(backbones: bool = False) -> list[str]:
    """Registered model names; with ``backbones=True`` also the verified timm/torchvision backbones (any other
    ``"timm:<name>"`` / ``"torchvision:<name>"`` CNN works too: attach reads its blocks off its computation)."""
    own = sorted(_MODELS, key=lambda n: (n.rstrip("0123456789"), int("0" + n[len(n.rstrip("0123456789")):])))
    return own + list(VERIFIED_BACKBONES) if backbones else own


# A parsed variant: the older name of :class:`AttachPlan` (kept working)
Variant = AttachPlan


def parse_variant(variant: "str | AttachPlan | None") -> dict[str, Any]:
    """Variant string -> model kwargs: ``"se+aw"`` -> ``{"attn": "se", "conv": "aw"}`` (see :class:`AttachPlan`)."""
    return AttachPlan.parse(variant).kwargs()


def create_model(name: str, variant: str | None = None, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: Model name from ``list_models()`` (e.g. ``"resnet50"``, ``"resnet20"``), or a timm/torchvision CNN
            as ``"timm:<name>"`` / ``"torchvision:<name>"`` with the modules attached by ``convattn.attach``.
        variant: Optional variant string (``"se+aw"``, ``"steam@all"``), merged into kwargs.
        pretrained: Must be False: convattn never downloads weights. Load a local state dict with
            ``convattn.models.load_pretrained`` instead.
        **kwargs: Model options (``attn``, ``conv``, ``num_classes``, ``in_chans``, ``attn_kwargs``,
            ``conv_kwargs``, ``pretrained_path`` (a local state dict of the plain network, which must hold all of
            it: ``pretrained_allow_partial=True`` loads just what matches), ...).
    """
    if pretrained:
        raise ValueError("convattn does not download weights; build with pretrained=False and pass a local state "
                         "dict: create_model(..., pretrained_path='weights.pth') (or convattn.models.load_pretrained)")
    if not is_backbone_name(name) and name not in _MODELS:
        raise ValueError(f"Unknown model '{name}'. Valid names: {', '.join(list_models())}, or a timm/torchvision "
                         f"CNN as 'timm:<name>' / 'torchvision:<name>' (verified: {', '.join(VERIFIED_BACKBONES)})")
    weights = dict(weights=kwargs.pop("pretrained_path", None),
                   allow_partial=kwargs.pop("pretrained_allow_partial", False))
    if name in _MODELS and name not in CONVATTN_NETWORKS:  # a user's registered builder takes the variant's kwargs
        if variant is not None:
            kwargs.update({k: v for k, v in AttachPlan.parse(variant).kwargs().items() if v is not None})
        return build_model(_MODELS[name](**kwargs), **weights)
    plan, rest = split_plan_options(kwargs, variant)
    return build_model(name, plan, **weights, **rest)


def _builder(name: str) -> Callable[..., nn.Module]:
    def build(**kwargs: Any) -> nn.Module:
        plan, rest = split_plan_options(kwargs)
        return build_model(name, plan, **rest)
    build.__name__ = name
    return build


for _name in CONVATTN_NETWORKS:
    register_model(_name)(_builder(_name))


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name`` (a KeyError naming the registered models otherwise)."""
    if name not in _MODELS:
        raise KeyError(f"no convattn model {name!r}; registered: {', '.join(list_models())}")
    return _MODELS[name]


def default_data_cfg(name: str) -> dict[str, Any]:
    """The data cfg a model was designed for (timm ``pretrained_cfg`` keys ``input_size``, ``crop_pct``,
    ``interpolation``, ``mean``, ``std``): convattn's own cfgs, timm's for ``timm:`` names, ImageNet's
    (224, 0.875, bilinear) for ``torchvision:`` names."""
    from timm.models import get_pretrained_cfg

    from ..data import IMAGENET_DATA_CFG
    keys = tuple(IMAGENET_DATA_CFG)
    lib, _, arch = name.partition(":") if is_backbone_name(name) else ("convattn", "", name)
    if lib == "torchvision":
        return dict(IMAGENET_DATA_CFG)
    if lib == "convattn":
        if name not in _MODELS:
            raise ValueError(f"Unknown model '{name}'. Valid names: {', '.join(list_models())}")
        arch = f"convattn_{name}"  # registered with timm when convattn.models is imported
    cfg = get_pretrained_cfg(arch)
    if cfg is None:
        return dict(IMAGENET_DATA_CFG)
    d = cfg.to_dict()
    return {k: (d.get(k) if d.get(k) is not None else IMAGENET_DATA_CFG[k]) for k in keys}

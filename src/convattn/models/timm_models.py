"""convattn's ResNets as first-class timm models: ``timm.create_model("convattn_resnet50", attn="cbam")``.

Each model is built through timm's ``build_model_with_cfg`` with a ``pretrained_cfg`` of its own (input size,
interpolation, crop, mean/std, first conv, classifier), so timm's machinery applies as to timm's own models:
``timm.data.resolve_data_config`` (32 x 32 for the CIFAR ResNets), ``features_only=True`` / ``out_indices``,
``reset_classifier``, ``drop_path_rate``, ``set_grad_checkpointing``, ``group_matcher`` (layer decay), and local
weights through ``pretrained`` set with ``pretrained_cfg_overlay=dict(file="weights.pth")``. Nothing is
downloaded: these configs name no URL or hub id, and ``pretrained`` without a file is refused.
"""
from __future__ import annotations

import sys
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models import register_model as timm_register_model
from torch import nn

__all__ = ["default_cfgs", "register_all", "CIFAR_MEAN", "CIFAR_STD"]

# CIFAR-10 training-set channel statistics (the usual values for the CIFAR ResNets)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

_IMAGENET = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
_CIFAR = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")


def _cfg(cifar: bool) -> dict[str, Any]:
    if cifar:
        return dict(url="", num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
                    interpolation="bilinear", mean=CIFAR_MEAN, std=CIFAR_STD, first_conv="conv1", classifier="fc",
                    license="apache-2.0")
    return dict(url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
                interpolation="bilinear", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="conv1",
                classifier="fc", license="apache-2.0")


default_cfgs = generate_default_cfgs({f"convattn_{n}": _cfg(n in _CIFAR) for n in _IMAGENET + _CIFAR})


def _build(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    from .registry import _MODELS
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if pretrained and not overlay.get("file"):
        raise ValueError(f"convattn_{name} has no downloadable weights (convattn never downloads): pass "
                         "pretrained_cfg_overlay=dict(file='weights.pth') together with pretrained, or leave pretrained off")
    kwargs.pop("cache_dir", None)
    variant = kwargs.pop("variant", None)
    if variant is not None:
        from .registry import parse_variant
        kwargs.update(parse_variant(variant))
    n_stages = 3 if name in _CIFAR else 4
    plain = not (kwargs.get("attn") or kwargs.get("conv"))  # a plain file into an attention variant: new keys
    return build_model_with_cfg(_MODELS[name], f"convattn_{name}", pretrained, pretrained_strict=plain,
                                feature_cfg=dict(out_indices=tuple(range(n_stages + 1))), **kwargs)


def register_all() -> list[str]:
    """Register ``convattn_<name>`` for every convattn ResNet (idempotent)."""
    mod = sys.modules[__name__]
    names = []
    for name in _IMAGENET + _CIFAR:
        entry = f"convattn_{name}"
        if not hasattr(mod, entry):
            def fn(pretrained: bool = False, _name: str = name, **kwargs: Any) -> nn.Module:
                return _build(_name, pretrained, **kwargs)

            fn.__name__ = fn.__qualname__ = entry
            fn.__module__ = __name__
            fn.__doc__ = f"convattn {name} (any attention variant: attn=..., conv=..., variant=...)."
            setattr(mod, entry, timm_register_model(fn))
        names.append(entry)
    return names

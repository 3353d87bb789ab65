"""convattn's ResNets as first-class timm models: ``timm.create_model("convattn_resnet50", attn="cbam")``.

Each model is built through timm's ``build_model_with_cfg`` with a ``pretrained_cfg`` of its own (input size,
interpolation, crop, mean/std, first conv, classifier), so timm's machinery applies as to timm's own models:
``timm.data.resolve_data_config`` (32 x 32 for the CIFAR ResNets), ``features_only=True`` / ``out_indices``,
``reset_classifier``, ``drop_path_rate``, ``set_grad_checkpointing``, ``group_matcher`` (layer decay), and local
weights through ``pretrained`` set with ``pretrained_cfg_overlay=dict(file="weights.pth")``. Nothing is
downloaded: these configs name no URL or hub id, and ``pretrained`` without a file is refused.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any

import torch

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models import register_model as timm_register_model
from torch import nn

from .registry import CIFAR_MODELS as _CIFAR, IMAGENET_MODELS as _IMAGENET, model_entrypoint, parse_variant

__all__ = ["default_cfgs", "register_all", "timm_name", "NAMED_VARIANTS", "CIFAR_MEAN", "CIFAR_STD"]

# CIFAR-10 training-set channel statistics (the usual values for the CIFAR ResNets)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)



def _cfg(cifar: bool) -> dict[str, Any]:
    if cifar:
        return dict(url="", num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
                    interpolation="bilinear", mean=CIFAR_MEAN, std=CIFAR_STD, first_conv="conv1", classifier="fc",
                    license="apache-2.0")
    return dict(url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
                interpolation="bilinear", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="conv1",
                classifier="fc", license="apache-2.0")


# Named variants registered as models of their own (``convattn_resnet50_cbam_aw``), as timm names
# ``seresnet50`` / ``ecaresnet50d``: the variants the papers compare, plus Coordinate Attention.
NAMED_VARIANTS = ("se", "cbam", "eca", "gct", "steam", "coord", "aw", "se+aw", "cbam+aw")


def timm_name(name: str, variant: str | None = None) -> str:
    """timm model name of a convattn ResNet and variant: ``("resnet50", "se+aw")`` -> ``"convattn_resnet50_se_aw"``."""
    suffix = "" if variant in (None, "none") else "_" + variant.replace("+", "_").replace("@", "_")
    return f"convattn_{name}{suffix}"


def _entries() -> list[tuple[str, str, str | None]]:
    """(timm name, convattn model name, variant) of every registered entry."""
    return [(timm_name(n, v), n, v) for n in _IMAGENET + _CIFAR for v in (None, *NAMED_VARIANTS)]


default_cfgs = generate_default_cfgs({entry: _cfg(n in _CIFAR) for entry, n, _ in _entries()})


def _build(name: str, pretrained: bool, fixed: str | None = None, **kwargs: Any) -> nn.Module:
    entry = timm_name(name, fixed)
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if pretrained and not overlay.get("file"):
        raise ValueError(f"{entry} has no downloadable weights (convattn never downloads): pass "
                         "pretrained_cfg_overlay=dict(file='weights.pth') together with pretrained, or leave pretrained off")
    kwargs.pop("cache_dir", None)
    variant = kwargs.pop("variant", None)
    if fixed is not None:
        given = {k: kwargs[k] for k in ("attn", "conv") if kwargs.get(k) is not None}
        if given or variant is not None:
            raise ValueError(f"{entry} is the {fixed!r} variant; to choose attention yourself, build "
                             f"convattn_{name} with attn=/conv=/variant= instead")
        variant = fixed
    if variant is not None:
        kwargs.update(parse_variant(variant))
    n_stages = 3 if name in _CIFAR else 4
    plain = not (kwargs.get("attn") or kwargs.get("conv"))  # a plain file into an attention variant: new keys
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)  # timm's factory arguments
    # the caller's feature_cfg (timm's tests pass feature_cls="fx") over ours: the stem and every stage by default
    feature_cfg = {"out_indices": tuple(range(n_stages + 1)), **(kwargs.pop("feature_cfg", None) or {})}
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = build_model_with_cfg(model_entrypoint(name), entry, pretrained, pretrained_strict=plain,
                                     feature_cfg=feature_cfg, **kwargs)
    return model.to(dtype=dtype) if dtype is not None else model


def register_all() -> list[str]:
    """Register ``convattn_<name>`` for every convattn ResNet, and ``convattn_<name>_<variant>`` for each of
    ``NAMED_VARIANTS`` (idempotent)."""
    mod = sys.modules[__name__]
    names = []
    for entry, name, variant in _entries():
        if not hasattr(mod, entry):
            def fn(pretrained: bool = False, _name: str = name, _variant: str | None = variant,
                   **kwargs: Any) -> nn.Module:
                return _build(_name, pretrained, _variant, **kwargs)

            fn.__name__ = fn.__qualname__ = entry
            fn.__module__ = __name__
            fn.__doc__ = (f"convattn {name} with {variant!r}." if variant else
                          f"convattn {name} (any attention variant: attn=..., conv=..., variant=...).")
            setattr(mod, entry, timm_register_model(fn))
        names.append(entry)
    return names

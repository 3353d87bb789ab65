"""timm and torchvision backbones by name, with convattn modules attached: ``"timm:<name>"``, ``"torchvision:<name>"``.

The network is built by its own library (random init; nothing is downloaded), optionally loaded from a local
state dict of the plain network (``pretrained_path``), then given attention by :func:`convattn.models.attach`.
``VERIFIED_BACKBONES`` are the ones the test suite checks (identity at insertion, parameter counts, a training
step, state-dict round trip); other CNNs built from the same block types work by the same rules, and a model
whose blocks ``attach`` does not know gets an error naming its block types.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .attach import attach
from .helpers import LoadReport, load_pretrained

__all__ = ["VERIFIED_BACKBONES", "BACKBONE_LIBRARIES", "is_backbone_name", "create_backbone", "load_state_file"]

BACKBONE_LIBRARIES = ("timm", "torchvision")

VERIFIED_BACKBONES = (
    "torchvision:resnet18", "torchvision:resnet50", "torchvision:resnext50_32x4d", "torchvision:mobilenet_v2",
    "torchvision:mobilenet_v3_large", "torchvision:efficientnet_b0", "torchvision:convnext_tiny",
    "timm:resnet50", "timm:mobilenetv3_large_100", "timm:efficientnet_b0", "timm:regnety_002", "timm:convnext_atto",
)


def is_backbone_name(name: str) -> bool:
    """True for ``"timm:<name>"`` and ``"torchvision:<name>"``."""
    lib, sep, _ = name.partition(":")
    return bool(sep) and lib in BACKBONE_LIBRARIES


def load_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file (loaded with ``weights_only=True``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pretrained weights file {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(p))
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line message
        raise ValueError(f"cannot read weights from {p}: {type(e).__name__}: {e}") from None
    for key in ("state_dict", "model", "module"):  # common wrappers of training scripts
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{p} does not hold a state dict (a mapping of names to tensors)")
    return sd


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    raise ValueError(f"{type(model).__name__} has no nn.Conv2d")


def _set_input_channels(model: nn.Module, in_chans: int) -> None:
    """Replace the first convolution by one with ``in_chans`` inputs (timm's ``adapt_input_conv`` for its weights)."""
    from timm.models import adapt_input_conv
    name, c = _first_conv(model)
    if c.in_channels == in_chans:
        return
    new = nn.Conv2d(in_chans, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups,
                    c.bias is not None, c.padding_mode)
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(in_chans, c.weight.detach()))
        if c.bias is not None:
            new.bias.copy_(c.bias)
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _build_plain(lib: str, arch: str, num_classes: int, in_chans: int, **kwargs: Any) -> nn.Module:
    if lib == "timm":
        import timm
        if arch not in timm.list_models():
            near = timm.list_models(f"*{arch.split('_')[0]}*")[:10]
            raise ValueError(f"Unknown timm model '{arch}'" + (f"; similar: {', '.join(near)}" if near else ""))
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    import torchvision
    names = torchvision.models.list_models(module=torchvision.models)
    if arch not in names:
        near = [n for n in names if arch.split("_")[0] in n][:10]
        raise ValueError(f"Unknown torchvision classification model '{arch}'"
                         + (f"; similar: {', '.join(near)}" if near else ""))
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    _set_input_channels(model, in_chans)
    return model


def _load_plain(model: nn.Module, path: str | os.PathLike, in_chans: int) -> LoadReport:
    sd = load_state_file(path)
    name, c = _first_conv(model)
    key = f"{name}.weight"
    if key in sd and sd[key].ndim == 4 and sd[key].shape[1] != in_chans:  # e.g. RGB weights, grey images
        from timm.models import adapt_input_conv
        sd = {**sd, key: adapt_input_conv(in_chans, sd[key].float()).to(sd[key].dtype)}
    report = load_pretrained(model, sd)
    if not report.loaded:
        raise ValueError(f"no tensor of {path} matches the model's names; is it a state dict of this network?\n"
                         + report.summary())
    return report


def create_backbone(name: str, attn: str | None = None, conv: str | None = None, *, num_classes: int = 1000,
                    in_chans: int = 3, attn_kwargs: dict[str, Any] | None = None,
                    conv_kwargs: dict[str, Any] | None = None, attn_blocks: Any = None, identity: bool = False,
                    pretrained_path: str | os.PathLike | None = None, **kwargs: Any) -> nn.Module:
    """Build ``"timm:<arch>"`` / ``"torchvision:<arch>"`` and attach convattn modules (see :func:`attach`).

    ``attn_blocks`` is ``attach``'s ``where``; ``pretrained_path`` is a local state dict of the plain network,
    loaded before attaching (the classifier is skipped when its class count differs; an RGB stem is adapted to
    ``in_chans`` as timm does). Extra keyword arguments go to the library's constructor (e.g. ``drop_rate``).
    """
    if not is_backbone_name(name):
        raise ValueError(f"backbone names are 'timm:<name>' or 'torchvision:<name>', got {name!r}")
    lib, _, arch = name.partition(":")
    for key, value, low in (("num_classes", num_classes, 0), ("in_chans", in_chans, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{key} must be an int >= {low}, got {value!r}")
    if kwargs.pop("zero_init_last", False):
        raise ValueError("zero_init_last is an option of convattn's own ResNets, not of timm/torchvision backbones")
    model = _build_plain(lib, arch, num_classes, in_chans, **kwargs)
    report = _load_plain(model, pretrained_path, in_chans) if pretrained_path else None
    if attn or conv:
        attach(model, attn, conv, where=attn_blocks, identity=identity, attn_kwargs=attn_kwargs,
               conv_kwargs=conv_kwargs)
    elif attn_kwargs or conv_kwargs:
        raise ValueError("attn_kwargs/conv_kwargs given without attn/conv")
    model.in_chans = in_chans
    model.convattn_name = name
    model.pretrained_report = report
    if not hasattr(model, "num_classes"):
        model.num_classes = num_classes
    return model

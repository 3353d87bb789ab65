"""timm and torchvision networks by name (``"timm:<name>"``, ``"torchvision:<name>"``), and weights files.

The plain network is built by its own library (random init; nothing is downloaded); attention and weights are the
builder's (:func:`convattn.models.build.build_model`).
``VERIFIED_BACKBONES`` are the ones the default test suite checks (identity at insertion, parameter counts, a
training step, state-dict round trip); ``attach`` reads any CNN's blocks off its computation, and
benchmarks/results/attach_coverage/ lists 59 architectures checked the same way.
"""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..layers.helpers import first_conv
from .weights import LoadReport, load_pretrained
from .hub import folder_state_dict, is_shared_folder

__all__ = ["VERIFIED_BACKBONES", "BACKBONE_LIBRARIES", "is_backbone_name", "build_plain_backbone", "load_state_file",
           "load_weights_file"]

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
    """A state dict from ``.safetensors`` or a ``torch.save`` file (loaded with ``weights_only=True``), or from a
    shared model folder (``config.json`` + ``model.safetensors``); a file that cannot be read as its suffix says
    is a one-line ValueError naming it."""
    p = Path(path)
    if is_shared_folder(p):  # a shared model folder (convattn.save_pretrained, timm's save_for_hf): its weights
        return folder_state_dict(p)
    if p.is_dir():
        raise ValueError(f"pretrained weights path {p} is a directory; a weights file is expected (a .pth/.pt state "
                         "dict or .safetensors, e.g. <run>/checkpoints/epoch_N/model.safetensors) or a shared model "
                         "folder with config.json")
    if not p.is_file():
        raise FileNotFoundError(f"pretrained weights file {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(p))
        except Exception as e:  # noqa: BLE001 - SafetensorError (a pickle, a truncated file) and the like
            text = " ".join(str(e).split()) or type(e).__name__
            raise ValueError(f"cannot read weights from {p} as safetensors ({type(e).__name__}: {text}); is it "
                             "a complete .safetensors file (a torch.save file must not be named .safetensors)?") from None
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol of files not written by torch.save
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused an object: never unpickled, so no code ran
        why = str(e).partition("WeightsUnpickler error:")[2].strip().splitlines()
        raise ValueError(f"cannot read weights from {p}: it holds Python objects besides tensors, which are never "
                         f"unpickled (torch.load with weights_only=True{': ' + why[0] if why else ''}); give a "
                         "plain state dict (torch.save(model.state_dict(), path)) or a .safetensors file") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line message
        raise ValueError(f"cannot read weights from {p}: {type(e).__name__}: {e}") from None
    for key in ("state_dict", "model", "module"):  # common wrappers of training scripts
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{p} does not hold a state dict (a mapping of names to tensors)")
    return sd


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    found = first_conv(model)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d")
    return found


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


# class count a torchvision network is built with for ``num_classes=0`` before its classifier is removed (prime: no
# hidden layer of a torchvision network has this width, so the classifier is found by its output count)
_FEATURES_BUILD_CLASSES = 1009


def _torchvision_heads(model: nn.Module, num_classes: int) -> list[tuple[str, nn.Module]]:
    """The classifier of a torchvision network built for ``num_classes``: the last ``nn.Linear`` (or 1 x 1
    ``nn.Conv2d``: SqueezeNet) with ``num_classes`` outputs, and the auxiliary classifiers (GoogLeNet, Inception)."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    found = found or [(n, m) for n, m in model.named_modules()
                      if isinstance(m, nn.Conv2d) and m.out_channels == num_classes and m.kernel_size == (1, 1)]
    if not found:
        return []
    return [(n, m) for n, m in found[:-1] if "aux" in n.lower()] + [found[-1]]


def _torchvision_without_classifier(model: nn.Module, arch: str) -> None:
    """``num_classes=0`` as timm means it: the classifier becomes ``nn.Identity``, so the network returns its
    pooled features (``num_features`` of them, the classifier's input width)."""
    heads = _torchvision_heads(model, _FEATURES_BUILD_CLASSES)
    if not heads:
        raise ValueError(f"torchvision:{arch}: cannot find its classifier to build it with num_classes=0 (pooled "
                         "features); build it with a class count and replace the classifier yourself")
    for name, m in heads:
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())
    last = heads[-1][1]
    model.num_features = last.in_features if isinstance(last, nn.Linear) else last.in_channels
    model.num_classes = 0


def build_plain_backbone(name: str, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """The plain ``"timm:<arch>"`` / ``"torchvision:<arch>"`` network (random init, nothing downloaded) with
    ``num_classes`` classes (0: pooled features, timm's convention, also for torchvision) and ``in_chans`` input
    channels; other keyword arguments go to the library's constructor (e.g. ``drop_rate``)."""
    if not is_backbone_name(name):
        raise ValueError(f"backbone names are 'timm:<name>' or 'torchvision:<name>', got {name!r}")
    lib, _, arch = name.partition(":")
    for key, value, low in (("num_classes", num_classes, 0), ("in_chans", in_chans, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{key} must be an int >= {low}, got {value!r}")
    if kwargs.pop("zero_init_last", False):
        raise ValueError("zero_init_last is an option of convattn's own ResNets, not of timm/torchvision backbones")
    model = _build_library_model(lib, arch, num_classes, in_chans, **kwargs)
    model.in_chans = in_chans
    model.convattn_name = name
    if not hasattr(model, "num_classes"):
        model.num_classes = num_classes
    return model


def _build_library_model(lib: str, arch: str, num_classes: int, in_chans: int, **kwargs: Any) -> nn.Module:
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
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes or _FEATURES_BUILD_CLASSES,
                                         **kwargs)
    model.convattn_classifier = [n for n, _ in _torchvision_heads(model, num_classes or _FEATURES_BUILD_CLASSES)]
    if num_classes == 0:
        _torchvision_without_classifier(model, arch)
    _set_input_channels(model, in_chans)
    return model


PARTIAL_OPTION = "pretrained_allow_partial=True (command line: --pretrained-partial)"


def load_weights_file(model: nn.Module, path: str | os.PathLike, *, allow_partial: bool = False) -> LoadReport:
    """Load the state dict in ``path`` into ``model`` (``create_model(..., pretrained_path=...)``): an RGB stem is
    adapted to the model's input channels as timm does, and the load must be complete for the plain network
    (see :func:`convattn.models.load_pretrained`) unless ``allow_partial``."""
    sd = load_state_file(path)
    name, c = first_conv(model) or ("", None)
    key = f"{name}.weight"
    if c is not None and key in sd and sd[key].ndim == 4 and sd[key].shape[1] != c.in_channels:  # RGB file, grey
        from timm.models import adapt_input_conv
        sd = {**sd, key: adapt_input_conv(c.in_channels, sd[key].float()).to(sd[key].dtype)}
    return load_pretrained(model, sd, allow_partial=allow_partial, source=f"weights file {path}",
                           partial_option=PARTIAL_OPTION)

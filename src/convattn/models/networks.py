"""convattn's own networks, the one list of them: the plain ResNets (no attention code; attention is attached by
:func:`convattn.models.build.build_model`).

* ImageNet ResNet-18/34/50/101/152: torchvision's layout and state-dict keys. The released ECA-Net50/101 used
  per-stage ECA kernels 3, 5, 5, 7 (BangguWu/ECANet, ``k_size=[3, 5, 5, 7]``): their ``eca_kernels`` rule is
  ``"released"``, the others' ``"adaptive"`` (each module's formula from its channels).
* CIFAR ResNet-20/32/44/56/110 (He et al. 2016, section 4.2): 3 x 3 stem, three stages of 16/32/64 channels with
  (depth - 2) / 6 basic blocks each, shortcut A, 10 classes.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .resnet import BasicBlock, Bottleneck, ResNet

__all__ = ["IMAGENET_RESNETS", "CIFAR_MODELS", "IMAGENET_MODELS", "CONVATTN_NETWORKS", "ECA_RELEASED_KERNELS",
           "plain_network"]

# ECA kernel sizes per stage of the released ECA-Net50 / ECA-Net101
ECA_RELEASED_KERNELS = (3, 5, 5, 7)

IMAGENET_RESNETS: dict[str, tuple[type[nn.Module], tuple[int, ...], str]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), "adaptive"), "resnet34": (BasicBlock, (3, 4, 6, 3), "adaptive"),
    "resnet50": (Bottleneck, (3, 4, 6, 3), "released"), "resnet101": (Bottleneck, (3, 4, 23, 3), "released"),
    "resnet152": (Bottleneck, (3, 8, 36, 3), "adaptive")}
CIFAR_MODELS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")
IMAGENET_MODELS = tuple(IMAGENET_RESNETS)
CONVATTN_NETWORKS = IMAGENET_MODELS + CIFAR_MODELS

_CIFAR_DEFAULTS = dict(num_classes=10, stem="cifar", widths=(16, 32, 64), shortcut="A")


def plain_network(name: str, **kwargs: Any) -> tuple[ResNet, str]:
    """(the plain network ``name`` built with ``kwargs``, its ECA kernel rule)."""
    if name in IMAGENET_RESNETS:
        block, layers, eca = IMAGENET_RESNETS[name]
        return ResNet(block, layers, **kwargs), eca
    if name in CIFAR_MODELS:
        depth = int(name[len("resnet"):])
        return ResNet(BasicBlock, ((depth - 2) // 6,) * 3, **{**_CIFAR_DEFAULTS, **kwargs}), "adaptive"
    raise ValueError(f"Unknown convattn network {name!r}; valid: {', '.join(CONVATTN_NETWORKS)}")

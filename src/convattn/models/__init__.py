"""Attention ResNets built by name; timm/torchvision CNNs with attention attached."""
from .attach import AttachReport, attach, register_block
from .backbones import VERIFIED_BACKBONES
from .build import build_model, create_backbone
from .weights import LoadReport, load_pretrained
from .registry import (CIFAR_MODELS, COMPARE_VARIANTS, DEFAULT_VARIANTS, IMAGENET_MODELS, Variant, create_model, default_data_cfg,
                       list_models, model_entrypoint, parse_variant, register_model)
from .plan import AttachPlan, canonical_variants
from .resnet import BasicBlock, Bottleneck, ResNet

from .timm_models import register_all as _register_with_timm  # noqa: E402  (after the registry is filled)

_register_with_timm()  # every model as timm's convattn_<name>

__all__ = [
    "AttachPlan", "canonical_variants", "build_model", "Variant", "AttachReport", "attach", "register_block", "VERIFIED_BACKBONES", "create_backbone",
    "LoadReport", "load_pretrained", "DEFAULT_VARIANTS", "COMPARE_VARIANTS", "create_model", "default_data_cfg", "list_models", "parse_variant",
    "register_model", "model_entrypoint", "CIFAR_MODELS", "IMAGENET_MODELS", "BasicBlock", "Bottleneck", "ResNet",
]

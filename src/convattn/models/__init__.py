"""Attention ResNets built by name."""
from .helpers import LoadReport, load_pretrained
from .registry import DEFAULT_VARIANTS, create_model, list_models, parse_variant, register_model, register_timm, variant_name
from .resnet import BasicBlock, Bottleneck, ResNet

register_timm()

__all__ = [
    "LoadReport", "load_pretrained", "DEFAULT_VARIANTS", "create_model", "list_models", "parse_variant",
    "register_model", "variant_name", "BasicBlock", "Bottleneck", "ResNet",
]

"""Attention ResNets built by name; timm/torchvision CNNs with attention attached."""
from .attach import AttachReport, attach, register_block
from .backbones import VERIFIED_BACKBONES, create_backbone
from .helpers import LoadReport, load_pretrained
from .registry import DEFAULT_VARIANTS, Variant, create_model, default_data_cfg, list_models, parse_variant, register_model, register_timm, variant_name
from .resnet import BasicBlock, Bottleneck, ResNet

register_timm()

__all__ = [
    "Variant", "AttachReport", "attach", "register_block", "VERIFIED_BACKBONES", "create_backbone",
    "LoadReport", "load_pretrained", "DEFAULT_VARIANTS", "create_model", "default_data_cfg", "list_models", "parse_variant",
    "register_model", "variant_name", "BasicBlock", "Bottleneck", "ResNet",
]

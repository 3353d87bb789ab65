"""Attention layers for convolutional networks."""
from .aw_conv import AW_IMPLS, AW_MODES, AWConv2d
from .cbam import CBAM, ChannelGate, SpatialGate
from .contract import ATTENTION_KEYS, KINDS, AttentionModule, AttnSpec
from .create_attn import AttnSequence, create_attn, get_attn, get_attn_spec, list_attn, module_options, register_attn
from .eca import ECA, eca_kernel_size
from .gct import GCT
from .helpers import make_divisible
from .se import SEModule
from .steam import STEAM, ScalarGraphAttention

__all__ = [
    "ATTENTION_KEYS", "KINDS", "AttentionModule", "AttnSpec", "get_attn_spec", "register_attn", "AWConv2d", "AW_MODES", "AW_IMPLS", "CBAM", "ChannelGate", "SpatialGate", "AttnSequence", "create_attn",
    "get_attn", "list_attn", "ECA", "eca_kernel_size", "GCT", "make_divisible", "SEModule", "STEAM",
    "ScalarGraphAttention", "module_options",
]

"""convattn: attention modules for convolutional networks (AW-convolution, STEAM, SE, CBAM, ECA, GCT)."""
from .layers import AWConv2d, CBAM, ECA, GCT, SEModule, STEAM, create_attn, list_attn
from .models import VERIFIED_BACKBONES, attach, create_model, list_models, load_pretrained

__version__ = "0.1.0"
__all__ = [
    "AWConv2d", "CBAM", "ECA", "GCT", "SEModule", "STEAM", "create_attn", "list_attn", "create_model",
    "list_models", "load_pretrained", "attach", "VERIFIED_BACKBONES", "__version__",
]

"""convattn: attention modules for convolutional networks (AW-convolution, STEAM, SE, CBAM, ECA, GCT)."""
from .layers import AWConv2d, CBAM, ECA, GCT, SEModule, STEAM, create_attn, list_attn
from .models import VERIFIED_BACKBONES, AttachPlan, attach, build_model, create_model, list_models, load_pretrained
from .sharing import load_folder, save_pretrained

__version__ = "0.1.0"
__all__ = [
    "AWConv2d", "CBAM", "ECA", "GCT", "SEModule", "STEAM", "create_attn", "list_attn", "create_model",
    "list_models", "load_pretrained", "attach", "AttachPlan", "build_model", "VERIFIED_BACKBONES", "save_pretrained",
    "load_folder", "__version__",
]

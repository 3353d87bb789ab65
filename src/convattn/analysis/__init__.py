"""What the attention modules attend to: gates, spatial maps, AW modulation statistics, Grad-CAM."""
from .maps import attention_maps, grad_cam, save_maps

__all__ = ["attention_maps", "grad_cam", "save_maps"]

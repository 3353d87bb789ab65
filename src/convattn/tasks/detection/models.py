"""``create_detector``: torchvision's Faster R-CNN, Mask R-CNN and RetinaNet on a convattn FPN backbone."""
from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from .backbone import fpn_backbone

__all__ = ["create_detector", "DETECTORS"]

DETECTORS = ("fasterrcnn", "maskrcnn", "retinanet")


def create_detector(kind: str, backbone: str = "resnet50", variant: str | None = None, num_classes: int = 91,
                    trainable_layers: int = 3, frozen_bn: bool = True, attn_norm_trainable: bool = False,
                    min_size: int = 800, max_size: int = 1333, backbone_kwargs: dict[str, Any] | None = None,
                    **detector_kwargs: Any) -> nn.Module:
    """Build a torchvision detector whose backbone is a convattn ResNet with attention.

    Args:
        kind: ``"fasterrcnn"``, ``"maskrcnn"`` or ``"retinanet"``.
        backbone: ResNet name, or ``"timm:<name>"`` / ``"torchvision:<name>"``; ``variant`` selects attention/AW (``"steam"``, ``"aw"``, ``"cbam+aw"``...).
        num_classes: Including the background class for the R-CNNs (torchvision convention).
        min_size, max_size: The detector transform's resize (COCO: 800/1333).
    """
    if kind not in DETECTORS:
        raise ValueError(f"Unknown detector '{kind}'. Valid: {', '.join(DETECTORS)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must count the background too (>= 2), got {num_classes}")
    bkw = dict(backbone_kwargs or {})
    common = dict(min_size=min_size, max_size=max_size, **detector_kwargs)
    if kind == "retinanet":
        body = fpn_backbone(backbone, variant, trainable_layers, [2, 3, 4], LastLevelP6P7(256, 256),
                                   frozen_bn, attn_norm_trainable, **bkw)
        anchors = AnchorGenerator(tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in (32, 64, 128, 256, 512)),
                                  ((0.5, 1.0, 2.0),) * 5)
        return RetinaNet(body, num_classes, anchor_generator=anchors, **common)
    body = fpn_backbone(backbone, variant, trainable_layers, None, None, frozen_bn, attn_norm_trainable, **bkw)
    return (FasterRCNN if kind == "fasterrcnn" else MaskRCNN)(body, num_classes, **common)

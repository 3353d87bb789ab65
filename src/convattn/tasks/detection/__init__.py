"""Detection and instance segmentation with attention backbones (torchvision detectors, pycocotools evaluation)."""
from .backbone import DETECTION_BACKBONES, load_backbone_weights, resnet_fpn_backbone
from .data import AnnotationError, CocoDetection, VocDetection, make_synthetic_coco
from .models import DETECTORS, create_detector

__all__ = ["DETECTION_BACKBONES", "load_backbone_weights", "resnet_fpn_backbone", "AnnotationError", "CocoDetection",
           "VocDetection", "make_synthetic_coco", "DETECTORS", "create_detector"]

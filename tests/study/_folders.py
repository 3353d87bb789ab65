"""An ImageNet-layout folder of real images for study tests: ``root/train/<class>/*.png`` and
``root/val/<class>/*.png``, written from the embedded Fashion-MNIST images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from convattn.data.fashion_mnist import load_embedded

CLASSES = ("tshirt", "trouser", "pullover")


def imagenet_folder(root: Path, n_train: int = 8, n_val: int = 4) -> Path:
    """``n_train`` / ``n_val`` images per class of the first three Fashion-MNIST classes, as PNG files."""
    d = load_embedded()
    x, y = d["x_train"], d["y_train"]
    for split, n, offset in (("train", n_train, 0), ("val", n_val, n_train)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in np.flatnonzero(y == label)[offset:offset + n]:
                Image.fromarray(x[i]).save(folder / f"{i}.png")
    return root

"""Fashion-MNIST (Xiao, Rasul, Vollgraf 2017; Zalando Research, MIT licence): the embedded subset and the full set.

The full 60k/10k set is read from its idx files: Debian/Ubuntu install them with
``apt-get install dataset-fashion-mnist`` (under /usr/share/datasets/fashion-mnist), and any folder with the
four files works too (also torchvision's ``FashionMNIST/raw`` layout). Nothing is downloaded.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np

from .idx import read_idx

__all__ = ["CLASSES", "FILES", "find_fashion_mnist", "load_fashion_mnist_split", "load_embedded", "DEBIAN_DIR"]

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": {"images": ["train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"],
              "labels": ["train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte"]},
    "test": {"images": ["t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"],
             "labels": ["t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte"]},
}
HOWTO = ("install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files go to "
         "/usr/share/datasets/fashion-mnist) or pass --data-dir pointing to a folder with the four idx files "
         "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)")


def _has_files(d: Path) -> bool:
    return all(any((d / n).exists() for n in FILES[s][k]) for s in FILES for k in FILES[s])


def find_fashion_mnist(data_dir: str | os.PathLike | None = None) -> Path:
    """Folder with the Fashion-MNIST idx files: ``data_dir`` (or its FashionMNIST/raw), else the Debian path."""
    candidates = []
    if data_dir is not None:
        d = Path(data_dir)
        candidates += [d, d / "FashionMNIST" / "raw", d / "raw"]
    else:
        candidates.append(DEBIAN_DIR)
    for c in candidates:
        if c.is_dir() and _has_files(c):
            return c
    where = f"in {data_dir}" if data_dir is not None else f"at {DEBIAN_DIR}"
    raise FileNotFoundError(f"Fashion-MNIST idx files not found {where}; {HOWTO}")


def load_fashion_mnist_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of ``split`` ("train" or "test")."""
    def pick(kind: str) -> Path:
        for n in FILES[split][kind]:
            if (root / n).exists():
                return root / n
        raise FileNotFoundError(f"missing Fashion-MNIST {split} {kind} file in {root}; {HOWTO}")
    x, y = read_idx(pick("images")), read_idx(pick("labels"))
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"Fashion-MNIST {split} files in {root} disagree: images {x.shape}, labels {y.shape}")
    if y.size and (y.min() < 0 or y.max() > 9):
        raise ValueError(f"Fashion-MNIST {split} labels in {root} outside 0..9")
    return x, y.astype(np.int64)


def load_embedded() -> dict[str, np.ndarray]:
    """The stratified subset shipped inside the package (10k train / 2k test, see embedded/PROVENANCE.md)."""
    ref = resources.files("convattn.data") / "embedded" / "fashion_mnist_subset.npz"
    with resources.as_file(ref) as p:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

"""CIFAR-10/100 in their standard "python version" format from a local folder (never downloaded).

The batches are pickles; they are read with a restricted unpickler that only rebuilds plain containers
and numpy arrays, so a tampered file cannot execute code.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

__all__ = ["load_cifar"]

_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels",
                "batches.meta", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", "meta", "fine_label_names"),
}
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def _load_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise ValueError(f"cannot read CIFAR batch {path}: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path} is not a CIFAR batch (expected a dict, got {type(d).__name__})")
    return d


def load_cifar(name: str, data_dir: str | os.PathLike | None, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 (N, 32, 32, 3), labels int64, class names) of CIFAR-10/100 ``split`` ("train"/"test")."""
    if name not in _LAYOUT:
        raise ValueError(f"unknown CIFAR variant {name!r}; valid: {', '.join(_LAYOUT)}")
    sub, train_files, test_files, label_key, meta_file, names_key = _LAYOUT[name]
    if data_dir is None:
        raise FileNotFoundError(f"--data {name} needs --data-dir: a folder containing {sub}/ (the 'CIFAR python "
                                "version' archive, extracted). convattn never downloads data.")
    root = Path(data_dir)
    root = root / sub if (root / sub).is_dir() else root
    files = train_files if split == "train" else test_files
    missing = [f for f in files + [meta_file] if not (root / f).exists()]
    if missing:
        raise FileNotFoundError(f"{name}: {root} lacks {', '.join(missing)}; expected the extracted {sub}/ folder")
    xs, ys = [], []
    for f in files:
        d = _load_batch(root / f)
        if "data" not in d or label_key not in d:
            raise ValueError(f"{root / f}: missing 'data' or '{label_key}' entry")
        x = np.asarray(d["data"], dtype=np.uint8)
        if x.ndim != 2 or x.shape[1] != 3072:
            raise ValueError(f"{root / f}: data has shape {x.shape}, expected (N, 3072)")
        xs.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(d[label_key], dtype=np.int64))
    meta = _load_batch(root / meta_file)
    classes = [str(c) for c in meta.get(names_key, [])]
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(x) != len(y):
        raise ValueError(f"{name} {split}: {len(x)} images but {len(y)} labels")
    return x, y, classes

#!/usr/bin/env python3
"""Build the embedded Fashion-MNIST subset shipped in convattn/data/embedded/.

A stratified subset of the official Fashion-MNIST (Zalando Research, MIT licence): per class 1,000 training
images from the 60k training set and 200 test images from the 10k test set, drawn with a fixed seed.
Source: the idx files of Debian's ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``,
files under /usr/share/datasets/fashion-mnist) or any folder holding the four idx files.

    python scripts/make_embedded_fashion_mnist.py [--src DIR] [--train-per-class 1000] [--test-per-class 200]
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from convattn.data.fashion_mnist import FILES, find_fashion_mnist, load_fashion_mnist_split

OUT = Path(__file__).resolve().parents[1] / "src" / "convattn" / "data" / "embedded"


def stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    idx = [np.sort(rng.permutation(np.flatnonzero(labels == c))[:per_class]) for c in range(10)]
    return np.sort(np.concatenate(idx))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=None)
    ap.add_argument("--train-per-class", type=int, default=1000)
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    src = find_fashion_mnist(args.src)
    rng = np.random.default_rng(args.seed)
    xtr, ytr = load_fashion_mnist_split(src, "train")
    xte, yte = load_fashion_mnist_split(src, "test")
    itr, ite = stratified(ytr, args.train_per_class, rng), stratified(yte, args.test_per_class, rng)
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / "fashion_mnist_subset.npz", x_train=xtr[itr], y_train=ytr[itr], x_test=xte[ite],
                        y_test=yte[ite], train_index=itr.astype(np.int32), test_index=ite.astype(np.int32))
    sums = {}
    for split in ("train", "test"):
        for kind in ("images", "labels"):
            for name in FILES[split][kind]:
                p = src / name
                if p.exists():
                    sums[name] = hashlib.sha256(p.read_bytes()).hexdigest()
    print(f"wrote {OUT / 'fashion_mnist_subset.npz'}: {len(itr)} train / {len(ite)} test images")
    for k, v in sums.items():
        print(f"sha256 {k} {v}")


if __name__ == "__main__":
    main()

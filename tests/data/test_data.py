"""Data readers on small real-format files written by the tests, and the embedded subset."""
import gzip
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from convattn.data import build_data, stratified_subset
from convattn.data.cifar import load_cifar
from convattn.data.fashion_mnist import DEBIAN_DIR, find_fashion_mnist, load_embedded, load_fashion_mnist_split
from convattn.data.idx import read_idx
from convattn.data.loaders import TensorLoader


def write_idx(path, arr, compress=True):
    code = {np.uint8: 0x08}[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


def make_fmnist_dir(root, n_train=40, n_test=20, compress=True):
    rng = np.random.default_rng(0)
    sfx = ".gz" if compress else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{split}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), compress)
        write_idx(root / f"{split}-labels-idx1-ubyte{sfx}", (np.arange(n) % 10).astype(np.uint8), compress)
    return root


@pytest.mark.parametrize("compress", [True, False])
def test_idx_roundtrip(tmp_path, compress):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / ("a.idx.gz" if compress else "a.idx")
    write_idx(p, a, compress)
    np.testing.assert_array_equal(read_idx(p), a)


def test_idx_malformed(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9]) + b"abc")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_folder_and_torchvision_layout(tmp_path):
    make_fmnist_dir(tmp_path)
    x, y = load_fashion_mnist_split(find_fashion_mnist(tmp_path), "train")
    assert x.shape == (40, 28, 28) and y.dtype == np.int64
    tv = tmp_path / "tv" / "FashionMNIST" / "raw"
    tv.mkdir(parents=True)
    make_fmnist_dir(tv, compress=False)
    assert find_fashion_mnist(tmp_path / "tv") == tv
    d = build_data("fashion-mnist", tmp_path, batch_size=8)
    assert d.num_classes == 10 and d.in_chans == 1 and len(d.train) == 5


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        find_fashion_mnist(tmp_path)


def test_embedded_subset_is_stratified():
    z = load_embedded()
    assert z["x_train"].shape == (10000, 28, 28) and z["x_test"].shape == (2000, 28, 28)
    assert z["x_train"].dtype == np.uint8
    assert (np.bincount(z["y_train"]) == 1000).all() and (np.bincount(z["y_test"]) == 200).all()


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist (Debian package) not installed")
def test_embedded_subset_matches_official_files():
    z = load_embedded()
    x, y = load_fashion_mnist_split(DEBIAN_DIR, "train")
    np.testing.assert_array_equal(x[z["train_index"]], z["x_train"])
    np.testing.assert_array_equal(y[z["train_index"]], z["y_train"])
    xt, yt = load_fashion_mnist_split(DEBIAN_DIR, "test")
    np.testing.assert_array_equal(xt[z["test_index"]], z["x_test"])


def _cifar_dir(tmp_path, obj_for_meta=None):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8), "labels": list(range(6))}
        pickle.dump(d, open(root / name, "wb"))
    pickle.dump(obj_for_meta or {"label_names": [f"c{i}" for i in range(10)]}, open(root / "batches.meta", "wb"))
    return tmp_path


def test_cifar_reader(tmp_path):
    x, y, classes = load_cifar("cifar10", _cifar_dir(tmp_path), "train")
    assert x.shape == (30, 32, 32, 3) and len(y) == 30 and classes[0] == "c0"
    d = build_data("cifar10", tmp_path, batch_size=10)
    assert d.in_chans == 3 and d.image_size == 32


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned",))


def test_cifar_reader_refuses_code(tmp_path):
    with pytest.raises(ValueError, match="refusing"):
        load_cifar("cifar10", _cifar_dir(tmp_path, obj_for_meta=_Evil()), "train")


def test_cifar_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="lacks"):
        load_cifar("cifar100", tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="data-dir"):
        build_data("cifar10", None)


def _folder(tmp_path, n=4):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return tmp_path


def test_image_folder(tmp_path):
    d = build_data("folder", _folder(tmp_path), batch_size=4, workers=0, image_size=32)
    x, y = next(iter(d.train.epoch(1)))
    assert x.shape == (4, 3, 32, 32) and d.classes == ["cat", "dog"]
    xv, _ = next(iter(d.val.epoch(0)))
    assert xv.shape == (4, 3, 32, 32)


def test_image_folder_bad_image_named(tmp_path):
    root = _folder(tmp_path)
    bad = root / "val" / "cat" / "1.png"
    bad.write_bytes(bad.read_bytes()[:30])  # truncated
    d = build_data("folder", root, batch_size=8, workers=0, image_size=32)
    with pytest.raises(ValueError, match="1.png"):
        list(d.val.epoch(0))
    with pytest.raises(FileNotFoundError, match="train"):
        build_data("folder", tmp_path / "nowhere", workers=0)


def test_tensor_loader_determinism_sharding_and_errors():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (64, 8, 8), dtype=np.uint8), np.arange(64) % 4
    mk = lambda **kw: TensorLoader(x, y, 16, True, (0.5,), (0.25,), pad=2, flip=True, seed=3, **kw)  # noqa: E731
    a = [b for b in mk().epoch(2)]
    b = [b for b in mk().epoch(2)]
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    c = [b for b in mk().epoch(3)]
    assert not torch.equal(a[0][0], c[0][0])
    r0 = list(mk(rank=0, world_size=2).epoch(2))
    r1 = list(mk(rank=1, world_size=2).epoch(2))
    for full, p, q in zip(a, r0, r1):  # two ranks together see exactly the single-process batch
        torch.testing.assert_close(torch.cat([p[0], q[0]]), full[0])
    with pytest.raises(ValueError, match="larger than the training set"):
        TensorLoader(x, y, 128, True, (0.5,), (0.25,))
    with pytest.raises(ValueError, match="Valid names"):
        build_data("mnist-ish")


def test_stratified_subset():
    y = np.repeat(np.arange(5), 20)
    idx = stratified_subset(y, 25)
    assert (np.bincount(y[idx]) == 5).all() and len(np.unique(idx)) == 25

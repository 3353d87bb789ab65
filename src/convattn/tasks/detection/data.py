"""Detection data: COCO-format and Pascal-VOC folders (validated), and the embedded synthetic set.

The embedded set is generated reproducibly from a seed out of real images: Fashion-MNIST items of the embedded
classification subset (train items for train/, test items for val/) pasted at random scales and positions,
without overlap, on 128x128 canvases, over crops of the photographs that ship with scikit-image (when it is
installed) or a dark canvas. Boxes and instance masks are exact: they come from each item's silhouette.
It is written in COCO format (``annotations/instances_{train,val}.json``, images as PNG) into a cache folder.
"""
from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ...data.fashion_mnist import CLASSES, load_embedded
from ...data.files import open_image
from ...optional import require
from ...report import atomic_write_text

__all__ = ["CocoDetection", "VocDetection", "make_synthetic_coco", "default_cache_dir", "collate",
           "AnnotationError", "embedded_detection_root"]

EMBEDDED_VERSION = 1


class AnnotationError(ValueError):
    """A malformed annotation file, naming the offending entry."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("CONVATTN_CACHE", Path.home() / ".cache" / "convattn"))


def _backgrounds() -> list[np.ndarray]:
    try:
        from skimage import data as skd
    except ImportError:
        return []
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel", "camera"):
        try:
            img = getattr(skd, name)()
        except Exception:  # noqa: BLE001 - a photo that is not shipped is skipped, never downloaded
            continue
        out.append(np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3])
    return out


def _paste_items(rng: np.random.Generator, items: np.ndarray, labels: np.ndarray, canvas: int, bgs: list[np.ndarray],
                 max_objects: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    if bgs and rng.random() < 0.8:
        bg = bgs[rng.integers(len(bgs))]
        s = int(rng.integers(canvas, min(bg.shape[0], bg.shape[1]) + 1))
        y0, x0 = rng.integers(0, bg.shape[0] - s + 1), rng.integers(0, bg.shape[1] - s + 1)
        crop = Image.fromarray(bg[y0:y0 + s, x0:x0 + s]).resize((canvas, canvas), Image.BILINEAR)
        img = np.asarray(crop, dtype=np.float32) * 0.45
    else:
        img = np.full((canvas, canvas, 3), 20.0, dtype=np.float32)
    objs: list[dict[str, Any]] = []
    taken = np.zeros((canvas, canvas), bool)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _try in range(20):
            k = int(rng.integers(len(items)))
            size = int(rng.integers(24, 64))
            item = np.asarray(Image.fromarray(items[k]).resize((size, size), Image.BILINEAR), dtype=np.float32)
            mask = item > 25.0  # the item's silhouette
            if mask.sum() < 20:
                continue
            ys, xs = np.nonzero(mask)
            y, x = int(rng.integers(0, canvas - size + 1)), int(rng.integers(0, canvas - size + 1))
            full = np.zeros((canvas, canvas), bool)
            full[y:y + size, x:x + size] = mask
            if (full & taken).any():
                continue
            taken |= full
            alpha = (item / 255.0)[..., None]
            color = np.array([rng.uniform(150, 255)] * 3, dtype=np.float32) * rng.uniform(0.7, 1.0, 3).astype(np.float32)
            region = img[y:y + size, x:x + size]
            img[y:y + size, x:x + size] = np.where(mask[..., None], region * (1 - alpha) + color * alpha, region)
            box = [x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1]
            objs.append(dict(mask=full, box=box, label=int(labels[k])))
            break
    return np.clip(img, 0, 255).astype(np.uint8), objs


def make_synthetic_coco(root: str | os.PathLike, n_train: int = 600, n_val: int = 150, canvas: int = 128,
                        max_objects: int = 4, seed: int = 0, backgrounds: bool = True) -> Path:
    """Write the embedded detection set (COCO format) under ``root``; idempotent for the same settings."""
    mask_utils = require("pycocotools.mask", "detection", "the embedded detection set")
    root = Path(root)
    spec = dict(version=EMBEDDED_VERSION, n_train=n_train, n_val=n_val, canvas=canvas, max_objects=max_objects,
                seed=seed, backgrounds=backgrounds)
    done = root / "DONE.json"
    if done.exists() and json.loads(done.read_text()) == spec:
        return root
    z = load_embedded()
    bgs = _backgrounds() if backgrounds else []
    rng = np.random.default_rng(seed)
    categories = [dict(id=i + 1, name=n) for i, n in enumerate(CLASSES)]
    for split, n, items, labels in (("train", n_train, z["x_train"], z["y_train"]),
                                    ("val", n_val, z["x_test"], z["y_test"])):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            img, objs = _paste_items(rng, items, labels, canvas, bgs, max_objects)
            name = f"{i:06d}.png"
            Image.fromarray(img).save(root / split / name)
            images.append(dict(id=i + 1, file_name=name, width=canvas, height=canvas))
            for o in objs:
                rle = mask_utils.encode(np.asfortranarray(o["mask"].astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                x1, y1, x2, y2 = o["box"]
                anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=o["label"] + 1,
                                 bbox=[x1, y1, x2 - x1, y2 - y1], area=int(o["mask"].sum()), iscrowd=0,
                                 segmentation=rle))
        atomic_write_text(root / "annotations" / f"instances_{split}.json",
                          json.dumps(dict(images=images, annotations=anns, categories=categories)))
    atomic_write_text(done, json.dumps(spec))
    return root


def embedded_detection_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The embedded set in the cache folder, generated on first use."""
    return make_synthetic_coco(Path(cache_dir or default_cache_dir()) / f"fashion-det-v{EMBEDDED_VERSION}")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _inside(root: Path, name: Any, ann_file: Path, allow_outside: bool, what: str = "file_name",
            suffix: str = "", folder: str = "the image folder") -> Path:
    """``root / (name + suffix)``, refused when ``name`` is not a relative path that stays inside ``root``.

    Every path built from what a data file says (COCO ``file_name``, VOC ``<filename>``, the ids listed in
    ``ImageSets/Main/<split>.txt``) goes through here; ``what`` names the field in the message."""
    if not isinstance(name, str) or not name:
        raise AnnotationError(f"{ann_file}: {what} must be a non-empty string, got {name!r}")
    path = root / (name + suffix)
    if not allow_outside and (Path(name).is_absolute() or not path.resolve().is_relative_to(root.resolve())):
        raise AnnotationError(f"{ann_file}: {what} {name!r} points outside {folder} {root} (pass allow_outside=True "
                              "to read files elsewhere)")
    return path


def _voc_size(path: Path, tree: ET.Element, field: str) -> int:
    """``<size>/<width|height>`` of a VOC file as a whole number (0 when absent); anything else names file and field."""
    text = tree.findtext(f"size/{field}")
    if text is None or not text.strip():
        return 0
    try:
        v = float(text)
    except ValueError:
        raise AnnotationError(f"{path}: <size><{field}> must be a whole number of pixels, got {text.strip()!r}") from None
    if not math.isfinite(v) or v < 0 or v != int(v):
        raise AnnotationError(f"{path}: <size><{field}> must be a whole number of pixels >= 0, got {text.strip()!r}")
    return int(v)


def _validate_coco(d: Any, ann_file: Path, img_dir: Path, allow_outside: bool = False) -> None:
    if not isinstance(d, dict):
        raise AnnotationError(f"{ann_file}: expected a JSON object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if key not in d or not isinstance(d[key], list):
            raise AnnotationError(f"{ann_file}: missing or malformed '{key}' list")
        bad = next((e for e in d[key] if not isinstance(e, dict)), None)
        if bad is not None:
            raise AnnotationError(f"{ann_file}: every entry of '{key}' must be an object, got {bad!r}")
    cats = set()
    for c in d["categories"]:
        if "id" not in c or "name" not in c:
            raise AnnotationError(f"{ann_file}: category {c} lacks 'id' or 'name'")
        cats.add(c["id"])
    sizes = {}
    for im in d["images"]:
        for k in ("id", "file_name", "width", "height"):
            if k not in im:
                raise AnnotationError(f"{ann_file}: image entry {im.get('id', im)} lacks '{k}'")
        if not (_number(im["width"]) and _number(im["height"]) and im["width"] > 0 and im["height"] > 0):
            raise AnnotationError(f"{ann_file}: image id {im['id']} needs positive numeric width/height, got "
                                  f"{im['width']!r} x {im['height']!r}")
        if not _inside(img_dir, im["file_name"], ann_file, allow_outside).is_file():
            raise AnnotationError(f"{ann_file}: image id {im['id']} refers to missing file {img_dir / im['file_name']}")
        sizes[im["id"]] = (im["width"], im["height"])
    for a in d["annotations"]:
        for k in ("id", "image_id", "category_id", "bbox"):
            if k not in a:
                raise AnnotationError(f"{ann_file}: annotation {a.get('id', a)} lacks '{k}'")
        if a["image_id"] not in sizes:
            raise AnnotationError(f"{ann_file}: annotation {a['id']} refers to unknown image_id {a['image_id']}")
        if a["category_id"] not in cats:
            raise AnnotationError(f"{ann_file}: annotation {a['id']} has unknown category_id {a['category_id']} "
                                  f"(known: {sorted(cats)})")
        if not (isinstance(a["bbox"], list) and len(a["bbox"]) == 4 and all(_number(v) for v in a["bbox"])):
            raise AnnotationError(f"{ann_file}: annotation {a['id']} bbox must be 4 finite numbers [x, y, w, h], "
                                  f"got {a['bbox']}")
        x, y, w, h = a["bbox"]
        if w <= 0 or h <= 0:
            raise AnnotationError(f"{ann_file}: annotation {a['id']} has a zero-area box {a['bbox']}")
        iw, ih = sizes[a["image_id"]]
        if x < 0 or y < 0 or x + w > iw + 1e-3 or y + h > ih + 1e-3:
            raise AnnotationError(f"{ann_file}: annotation {a['id']} box {a['bbox']} lies outside its "
                                  f"{iw}x{ih} image (id {a['image_id']})")


class CocoDetection(torch.utils.data.Dataset):
    """COCO-format detection/instance-segmentation data: images in ``img_dir``, annotations in ``ann_file``.

    Targets follow torchvision's detection contract: boxes (x1, y1, x2, y2), labels in 1..K (contiguous,
    sorted by category id), masks (N, H, W) uint8 when ``masks=True``, image_id.
    """

    def __init__(self, img_dir: str | os.PathLike, ann_file: str | os.PathLike, masks: bool = False,
                 allow_outside: bool = False) -> None:
        COCO = require("pycocotools.coco", "detection", "COCO-format detection data").COCO
        self.img_dir, self.ann_file = Path(img_dir), Path(ann_file)
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"annotation file {self.ann_file} not found")
        try:
            d = json.loads(self.ann_file.read_text())
        except json.JSONDecodeError as e:
            raise AnnotationError(f"{self.ann_file} is not valid JSON: {e}") from e
        _validate_coco(d, self.ann_file, self.img_dir, allow_outside)
        self.coco = COCO()
        self.coco.dataset = d
        self.coco.createIndex()
        self.ids = sorted(self.coco.imgs)
        self.cat_ids = sorted(self.coco.cats)
        self.cat_to_label = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.label_to_cat = {v: k for k, v in self.cat_to_label.items()}
        self.classes = [self.coco.cats[c]["name"] for c in self.cat_ids]
        self.masks = masks

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids) + 1  # + background

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        img_id = self.ids[i]
        info = self.coco.imgs[img_id]
        path = self.img_dir / info["file_name"]
        img = open_image(path, "RGB")
        if img.size != (info["width"], info["height"]):  # boxes were checked against the declared size
            raise AnnotationError(f"{self.ann_file}: image id {img_id} ({path.name}) is {img.size[0]}x{img.size[1]}, "
                                  f"but its entry declares {info['width']}x{info['height']}")
        anns = [a for a in self.coco.imgToAnns[img_id] if not a.get("iscrowd", 0)]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        target = dict(boxes=boxes, labels=torch.tensor([self.cat_to_label[a["category_id"]] for a in anns],
                                                       dtype=torch.int64), image_id=torch.tensor(img_id))
        if self.masks:
            target["masks"] = torch.from_numpy(np.stack([self.coco.annToMask(a) for a in anns])) if anns else \
                torch.zeros((0, info["height"], info["width"]), dtype=torch.uint8)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W) in [0, 1]
        return x, target


class VocDetection(torch.utils.data.Dataset):
    """Pascal-VOC folders: ``Annotations/*.xml`` and ``JPEGImages/``; class names from ``classes`` or the files."""

    def __init__(self, root: str | os.PathLike, classes: list[str] | None = None,
                 image_set: str | None = None, allow_outside: bool = False) -> None:
        self.root = Path(root)
        self.allow_outside = allow_outside
        ann_dir = self.root / "Annotations"
        if not ann_dir.is_dir():
            raise FileNotFoundError(f"{ann_dir} not found: expected a VOC folder with Annotations/ and JPEGImages/")
        if image_set:
            sets = self.root / "ImageSets" / "Main"
            list_file = _inside(sets, image_set, self.root, False, "image set", ".txt", "the image-set folder")
            if not list_file.is_file():
                raise FileNotFoundError(f"{list_file} not found: expected the ids of the {image_set!r} split there")
            names = list_file.read_text().split()
            # every id names a file inside Annotations/ (an id such as ../../x would read an XML file elsewhere)
            paths = [_inside(ann_dir, n, list_file, allow_outside, "id", ".xml", "the annotation folder")
                     for n in names]
        else:
            paths = sorted(ann_dir.glob("*.xml"))
        self.items = [self._parse(p) for p in paths]
        found = sorted({o[0] for it in self.items for o in it["objects"]})
        self.classes = list(classes) if classes else found
        unknown = sorted(set(found) - set(self.classes))
        if unknown:
            raise AnnotationError(f"{self.root}: objects of unknown classes {unknown} (known: {self.classes})")

    def _parse(self, path: Path) -> dict[str, Any]:
        try:
            tree = ET.parse(path).getroot()
        except ET.ParseError as e:
            raise AnnotationError(f"{path} is not valid XML: {e}") from e
        fname = tree.findtext("filename")
        if not fname:
            raise AnnotationError(f"{path}: missing <filename>")
        img = _inside(self.root / "JPEGImages", fname, path, self.allow_outside, "<filename>")
        if not img.is_file():
            raise AnnotationError(f"{path}: image {img} not found")
        w, h = _voc_size(path, tree, "width"), _voc_size(path, tree, "height")
        objs = []
        for k, o in enumerate(tree.findall("object")):
            name, bb = o.findtext("name"), o.find("bndbox")
            if not name or bb is None:
                raise AnnotationError(f"{path}: object {k} lacks <name> or <bndbox>")
            try:
                x1, y1, x2, y2 = (float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
            except (TypeError, ValueError) as e:
                raise AnnotationError(f"{path}: object {k} ({name}) has a malformed <bndbox>") from e
            if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
                raise AnnotationError(f"{path}: object {k} ({name}) has a non-finite box {[x1, y1, x2, y2]}")
            if x2 <= x1 or y2 <= y1:
                raise AnnotationError(f"{path}: object {k} ({name}) has a zero-area box {[x1, y1, x2, y2]}")
            if w and h and (x1 < 0 or y1 < 0 or x2 > w + 1 or y2 > h + 1):
                raise AnnotationError(f"{path}: object {k} ({name}) box {[x1, y1, x2, y2]} lies outside the {w}x{h} image")
            difficult = (o.findtext("difficult") or "0").strip()
            if difficult not in ("0", "1"):
                raise AnnotationError(f"{path}: object {k} ({name}) <difficult> must be 0 or 1, got {difficult!r}")
            objs.append((name, [x1, y1, x2, y2], int(difficult)))
        return dict(image=img, objects=objs, size=(w, h) if w and h else None)

    @property
    def num_classes(self) -> int:
        return len(self.classes) + 1

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        it = self.items[i]
        img = open_image(it["image"], "RGB")
        if it["size"] and img.size != it["size"]:  # boxes were checked against the declared size
            raise AnnotationError(f"{it['image']} is {img.size[0]}x{img.size[1]}, but its XML declares "
                                  f"{it['size'][0]}x{it['size'][1]}")
        objs = [o for o in it["objects"] if not o[2]]
        boxes = torch.tensor([o[1] for o in objs], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([self.classes.index(o[0]) + 1 for o in objs], dtype=torch.int64)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return x, dict(boxes=boxes, labels=labels, image_id=torch.tensor(i))


def collate(batch):
    return tuple(zip(*batch))

"""The embedded detection set (or any COCO-format set convattn reads) written in YOLO format, for ultralytics.

``export_yolo_data(out)`` writes ``out/images/{train,val}/*.png``, ``out/labels/{train,val}/*.txt`` (one line per
object: ``class cx cy w h``, normalised to the image size; ``task="segment"``: ``class x1 y1 x2 y2 ...``, the
object's outline from its instance mask) and ``out/data.yaml``; ``task="classify"`` writes
``out/{train,val}/<class>/*.png`` (each object cropped at its box), the folder ultralytics' classifier reads.
The images are the COCO set's files, copied unchanged, and the boxes are its boxes (class ids are the COCO
category ids in order, from 0). Needs no ultralytics; the embedded set needs the ``[detection]`` extra.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..optional import require
from ..report import atomic_write_text

__all__ = ["export_yolo_data", "embedded_yolo_data", "read_yolo_labels", "YOLO_TASKS"]

YOLO_TASKS = ("detect", "segment", "classify")


def _coco(root: Path, split: str) -> dict[str, Any]:
    path = root / "annotations" / f"instances_{split}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: a COCO-format folder has annotations/instances_{split}.json")
    return json.loads(path.read_text())


def _outline(mask: np.ndarray) -> np.ndarray | None:
    """The outline of a binary mask as one (n, 2) polygon of x, y points on pixel edges: its outer contours (holes
    left out), the largest first, joined, so that the polygon spans the mask's box exactly; None for an empty
    mask."""
    measure = require("skimage.measure", "detection", "YOLO segmentation labels")
    contours = measure.find_contours(np.pad(mask.astype(np.uint8), 1), 0.5)
    if not contours:
        return None

    def area(c: np.ndarray) -> float:  # signed (shoelace): outer contours and holes have opposite signs
        return 0.5 * float(np.dot(c[:, 0], np.roll(c[:, 1], 1)) - np.dot(c[:, 1], np.roll(c[:, 0], 1)))
    contours.sort(key=lambda c: -abs(area(c)))
    sign = np.sign(area(contours[0]))
    outer = [measure.approximate_polygon(c, tolerance=0.5) for c in contours if np.sign(area(c)) == sign]
    pts = np.concatenate([c for c in outer if len(c) >= 3] or outer)
    if len(pts) < 3:
        return None
    return np.stack([pts[:, 1] - 0.5, pts[:, 0] - 0.5], 1).clip(0, None)  # (padding 1, edges at 0.5)


def _yaml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a YAML string


def export_yolo_data(out: str | os.PathLike, task: str = "detect", root: str | os.PathLike | None = None,
                     limit: dict[str, int] | None = None) -> Path:
    """Write a COCO-format set (default: the embedded detection set) in YOLO format under ``out``.

    Args:
        out: Folder to write (created; files of an earlier export are replaced).
        task: ``"detect"`` (boxes), ``"segment"`` (outlines from the instance masks) or ``"classify"`` (each
            object cropped into a class folder).
        root: A COCO-format folder (``annotations/instances_{train,val}.json``, images in ``{train,val}/``);
            None: the embedded set (generated into the cache on first use).
        limit: At most this many images per split (``{"train": 64, "val": 16}``; the first ones), for tests.

    Returns:
        The ``data.yaml`` path (detect, segment) or the folder (classify): what ultralytics' ``data=`` takes.
    """
    if task not in YOLO_TASKS:
        raise ValueError(f"task must be one of {', '.join(YOLO_TASKS)}, got {task!r}")
    if root is None:
        from ..tasks.detection.data import embedded_detection_root
        root = embedded_detection_root()
    root, out = Path(root), Path(out)
    limit = dict(limit or {})
    for k, v in limit.items():
        if k not in ("train", "val") or isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"limit: {{'train': n, 'val': n}} with n >= 1, got {limit!r}")
    mask_utils = require("pycocotools.mask", "detection", "YOLO segmentation labels") if task == "segment" else None
    names: list[str] = []
    for split in ("train", "val"):
        coco = _coco(root, split)
        cats = sorted(coco["categories"], key=lambda c: c["id"])
        ids = {c["id"]: i for i, c in enumerate(cats)}
        names = [c["name"] for c in cats]
        images = coco["images"][: limit.get(split)]
        anns: dict[int, list[dict[str, Any]]] = {}
        for a in coco["annotations"]:
            anns.setdefault(a["image_id"], []).append(a)
        if task == "classify":
            split_dir = out / split
            if split_dir.exists():
                shutil.rmtree(split_dir)
            for n in names:
                (split_dir / n).mkdir(parents=True)
        else:
            for sub in ("images", "labels"):
                if (out / sub / split).exists():
                    shutil.rmtree(out / sub / split)
                (out / sub / split).mkdir(parents=True)
        for img in images:
            src = root / split / img["file_name"]
            w, h = img["width"], img["height"]
            stem = Path(img["file_name"]).stem
            if task == "classify":
                with Image.open(src) as im:
                    for a in anns.get(img["id"], []):
                        x, y, bw, bh = a["bbox"]
                        crop = im.crop((int(x), int(y), int(np.ceil(x + bw)), int(np.ceil(y + bh))))
                        crop.save(out / split / names[ids[a["category_id"]]] / f"{stem}_{a['id']}.png")
                continue
            shutil.copyfile(src, out / "images" / split / Path(img["file_name"]).name)
            lines = []
            for a in anns.get(img["id"], []):
                cls = ids[a["category_id"]]
                if task == "segment":
                    seg = a.get("segmentation")
                    rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg, list) else seg
                    if isinstance(rle, list):
                        rle = mask_utils.merge(rle)
                    if isinstance(rle.get("counts"), list):
                        rle = mask_utils.frPyObjects(rle, h, w)
                    poly = _outline(mask_utils.decode(rle) > 0)
                    if poly is None:
                        continue
                    pts = " ".join(f"{px / w:.6f} {py / h:.6f}" for px, py in poly)
                    lines.append(f"{cls} {pts}")
                else:
                    x, y, bw, bh = a["bbox"]
                    lines.append(f"{cls} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}")
            atomic_write_text(out / "labels" / split / f"{stem}.txt", "\n".join(lines) + ("\n" if lines else ""))
    if task == "classify":
        return out
    yaml = [f"path: {_yaml_str(str(out.resolve()))}", "train: images/train", "val: images/val", "names:"]
    yaml += [f"  {i}: {_yaml_str(n)}" for i, n in enumerate(names)]
    atomic_write_text(out / "data.yaml", "\n".join(yaml) + "\n")
    return out / "data.yaml"


def read_yolo_labels(path: str | os.PathLike, width: int, height: int) -> list[tuple[int, list[float]]]:
    """A YOLO detection label file as (class, [x, y, w, h] in pixels) per line (COCO's box convention)."""
    out = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        cls, cx, cy, bw, bh = line.split()
        cx, cy, bw, bh = float(cx) * width, float(cy) * height, float(bw) * width, float(bh) * height
        out.append((int(cls), [cx - bw / 2, cy - bh / 2, bw, bh]))
    return out


def embedded_yolo_data(task: str = "detect", cache_dir: str | os.PathLike | None = None) -> Path:
    """The embedded detection set in YOLO format in the cache folder (exported on first use); what ``data=``
    takes (see :func:`export_yolo_data`)."""
    from ..tasks.detection.data import EMBEDDED_VERSION, default_cache_dir, embedded_detection_root
    if task not in YOLO_TASKS:
        raise ValueError(f"task must be one of {', '.join(YOLO_TASKS)}, got {task!r}")
    cache = Path(cache_dir or default_cache_dir())
    root = embedded_detection_root(cache)
    out = cache / f"fashion-det-v{EMBEDDED_VERSION}-yolo-{task}"
    done, spec = out / "DONE.json", json.dumps(dict(version=EMBEDDED_VERSION, task=task, source=str(root)))
    result = out if task == "classify" else out / "data.yaml"
    if done.exists() and done.read_text() == spec:
        return result
    export_yolo_data(out, task, root)
    atomic_write_text(done, spec)
    return result

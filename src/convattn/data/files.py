"""Image files on disk: the class folders of an ImageFolder split, the image files of a class folder, and opening
one image safely (named errors, 16-bit grey scaled by its depth). Shared by the folder survey (``folder``) and the
folder loader (``loaders``)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["class_folders", "class_files", "no_images_error", "open_image"]


def class_folders(split: str | os.PathLike) -> list[str]:
    """The class folder names of an ImageFolder split, sorted: every sub-folder whose name does not start with ``.``
    (torchvision's ``find_classes`` would make ``.ipynb_checkpoints`` a class; we skip hidden folders)."""
    return sorted(d.name for d in Path(split).iterdir() if d.is_dir() and not d.name.startswith("."))


def no_images_error(folder: str | os.PathLike, exts: tuple[str, ...]) -> FileNotFoundError:
    """The refusal of a class folder without an image file, naming it and what it holds instead."""
    folder = Path(folder)
    others = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))[:3] if folder.is_dir() else []
    held = f"it holds only {', '.join(others)}" if others else "it is empty"
    return FileNotFoundError(f"class folder {folder} has no image file ({', '.join(exts)}); {held}: add its images or "
                             "remove the folder (folders named .* are skipped)")


_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def open_image(path: str | os.PathLike, mode: str = "RGB"):
    """A PIL image in ``mode`` (``"RGB"``, ``"L"``, or ``"keep"`` for the file's own); 16-bit and 32-bit grey images are scaled to 8 bits by their
    bit depth instead of being clipped (PIL's own convert clips them at 255, turning them white). Oversized images
    (PIL's decompression-bomb limit) and unreadable files raise a ValueError naming the file."""
    from PIL import Image, UnidentifiedImageError
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
    except Image.DecompressionBombError as e:
        raise ValueError(f"image {path} is too large to read safely ({e}); limit: Image.MAX_IMAGE_PIXELS = "
                         f"{Image.MAX_IMAGE_PIXELS} pixels") from None
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path}: {e} (remove or replace the file)") from e
    except ImportError as e:  # another package patched Image.open with a decoder it lacks (ultralytics tries pi_heif)
        raise ValueError(f"cannot read image {path}: not a format PIL reads, and a patched Image.open failed "
                         f"({type(e).__name__}: {e}) (remove or replace the file)") from e
    if img.mode in _WIDE_MODES:
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            top = 1.0 if arr.size and arr.max() <= 1.0 else 255.0
        else:
            top = 65535.0 if img.mode.startswith("I;16") or (arr.size and arr.max() > 255) else 255.0
        img = Image.fromarray(np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    return img if mode == "keep" else img.convert(mode)


def _walk_once(root: str) -> list[tuple[str, list[str]]]:
    """(folder, files) under ``root``, following folder links but visiting each real folder once (a link loop
    would otherwise list the same images again at every level); hidden sub-folders (``.*``) are skipped."""
    seen: set[str] = set()
    out = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # .ipynb_checkpoints etc. hold no class images
        out.append((folder, sorted(files)))
    return out


def class_files(folder: str, exts: tuple[str, ...]) -> list[str]:
    """Image files (by extension) under one class folder, each real sub-folder once, in sorted order."""
    return [os.path.join(sub, f) for sub, files in _walk_once(folder) for f in files if f.lower().endswith(exts)]

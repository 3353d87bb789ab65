"""Hostile or unusual files: 16-bit images, oversized images, symlink loops, COCO entries that point outside their
folder or hold non-numbers, declared sizes that lie, output names made of dots."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from convattn.data.files import open_image
from convattn.data.loaders import _CheckedImageFolder
from convattn.report import safe_name

pytest.importorskip("pycocotools")

from convattn.tasks.detection import AnnotationError, CocoDetection  # noqa: E402


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    arr = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024).astype(np.uint16)  # 0 .. 64512
    Image.fromarray(arr).save(tmp_path / "g16.png")
    img = open_image(tmp_path / "g16.png", "L")
    got = np.asarray(img, dtype=np.float64)
    np.testing.assert_allclose(got, np.round(arr / 65535 * 255), atol=1)
    assert (got < 255).mean() > 0.95  # PIL's own convert would make 99 % of it white
    rgb = np.asarray(open_image(tmp_path / "g16.png", "RGB"))
    assert rgb.shape == (8, 8, 3) and np.array_equal(rgb[..., 0], got.astype(np.uint8))


def test_oversized_image_is_refused_by_name(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 pixels is then over twice the limit
    with pytest.raises(ValueError, match="big.png is too large to read safely .*MAX_IMAGE_PIXELS = 100"):
        open_image(tmp_path / "big.png")


def test_symlink_loop_lists_each_image_once(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(tmp_path / c / f"{i}.png")
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")  # a/loop -> a
    ds = _CheckedImageFolder(tmp_path, None)
    assert len(ds) == 6 and sum(1 for _, y in ds.samples if y == 0) == 3


def _coco(tmp_path, image=None, bbox=(5, 5, 20, 10), size=(50, 40)):
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "outside.png")
    d = dict(images=[{**dict(id=1, file_name="a.png", width=size[0], height=size[1]), **(image or {})}],
             annotations=[dict(id=7, image_id=1, category_id=3, bbox=list(bbox), area=200, iscrowd=0)],
             categories=[dict(id=3, name="shoe")])
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(d))  # NaN and Infinity are written as JSON5-style literals, which json reads
    return tmp_path / "img", p


@pytest.mark.parametrize("image", [dict(file_name="../outside.png"), dict(file_name="/etc/hostname"),
                                   dict(file_name="sub/../../outside.png")])
def test_coco_file_name_stays_in_its_folder(tmp_path, image):
    img_dir, ann = _coco(tmp_path, image=image)
    with pytest.raises(AnnotationError, match="points outside the image folder"):
        CocoDetection(img_dir, ann)
    if image["file_name"] == "../outside.png":
        assert len(CocoDetection(img_dir, ann, allow_outside=True)) == 1  # an explicit opt-in


@pytest.mark.parametrize("bbox, match", [((float("nan"), 5, 20, 10), "bbox must be 4 finite numbers"),
                                         (("5", 5, 20, 10), "bbox must be 4 finite numbers"),
                                         ((5, 5, float("inf"), 10), "bbox must be 4 finite numbers")])
def test_coco_box_values(tmp_path, bbox, match):
    img_dir, ann = _coco(tmp_path, bbox=bbox)
    with pytest.raises(AnnotationError, match=match):
        CocoDetection(img_dir, ann)


def test_coco_entries_must_be_objects_and_sizes_numbers(tmp_path):
    img_dir, ann = _coco(tmp_path)
    d = json.loads(ann.read_text())
    d["categories"].append("shoe")
    ann.write_text(json.dumps(d))
    with pytest.raises(AnnotationError, match="every entry of 'categories' must be an object"):
        CocoDetection(img_dir, ann)
    img_dir, ann = _coco(tmp_path, size=("50", 40))
    with pytest.raises(AnnotationError, match="needs positive numeric width/height"):
        CocoDetection(img_dir, ann)


def test_declared_size_must_match_the_real_image(tmp_path):
    img_dir, ann = _coco(tmp_path, size=(100, 80), bbox=(60, 50, 20, 10))  # the box fits only the declared size
    ds = CocoDetection(img_dir, ann)
    with pytest.raises(AnnotationError, match="a.png\\) is 50x40, but its entry declares 100x80"):
        ds[0]


def test_safe_names():
    assert safe_name("..", "image") == "image" and safe_name("", "x") == "x" and safe_name(".", "x") == "x"
    assert safe_name("a/b") == "a_b" and safe_name("timm:resnet50_se+aw") == "timm_resnet50_se_aw"
    assert safe_name("photo.v2") == "photo.v2"

"""Detection: backbone builder for every variant, data validation errors, a train step, COCO eval, predict."""
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import FrozenBatchNorm2d

pytest.importorskip("pycocotools")

from convattn.cli import main  # noqa: E402
from convattn.tasks.detection import (AnnotationError, CocoDetection, VocDetection, create_detector,  # noqa: E402
                                load_backbone_weights, make_synthetic_coco, resnet_fpn_backbone)
from convattn.tasks.detection.run import DetectConfig, train_detector  # noqa: E402
from convattn.layers import CBAM  # noqa: E402
from convattn.models import create_model  # noqa: E402

VARIANTS = ["none", "se", "cbam", "eca", "gct", "steam", "aw", "se+aw", "cbam+aw"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_backbone_builder_every_variant(variant):
    bb = resnet_fpn_backbone("resnet18", variant, trainable_layers=3)
    feats = bb(torch.randn(2, 3, 96, 80))
    assert list(feats) == ["0", "1", "2", "3", "pool"] and all(f.shape[1] == 256 for f in feats.values())
    assert feats["0"].shape[-2:] == (24, 20)
    frozen = [n for n, p in bb.body.named_parameters() if not p.requires_grad]
    assert frozen and all(not n.startswith(("layer2", "layer3", "layer4")) for n in frozen)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bb.body.modules())  # all frozen by default


def test_attention_norms_option_and_errors():
    bb = resnet_fpn_backbone("resnet18", "cbam", attn_norm_trainable=True)
    cbams = [m for m in bb.body.modules() if isinstance(m, CBAM)]
    assert all(isinstance(c.spatial_gate.bn, torch.nn.BatchNorm2d) for c in cbams)
    bb = resnet_fpn_backbone("resnet18", "cbam")
    assert all(isinstance(c.spatial_gate.bn, FrozenBatchNorm2d) for c in bb.body.modules() if isinstance(c, CBAM))
    with pytest.raises(ValueError, match="ImageNet-layout"):
        resnet_fpn_backbone("resnet20")
    with pytest.raises(ValueError, match="trainable_layers"):
        resnet_fpn_backbone("resnet18", trainable_layers=7)
    with pytest.raises(ValueError, match="Unknown detector"):
        create_detector("yolo")


@pytest.mark.parametrize("kind", ["fasterrcnn", "maskrcnn", "retinanet"])
@pytest.mark.parametrize("variant", ["steam", "aw"])
def test_one_train_step_variable_sizes(kind, variant):
    m = create_detector(kind, "resnet18", variant, num_classes=4, min_size=96, max_size=128).train()
    imgs = [torch.rand(3, 96, 128), torch.rand(3, 80, 96), torch.rand(3, 100, 100)]
    tg = [dict(boxes=torch.tensor([[10., 10., 50., 60.]]), labels=torch.tensor([1]),
               masks=torch.zeros(1, *im.shape[-2:], dtype=torch.uint8)) for im in imgs]
    for t in tg:
        t["masks"][0, 10:60, 10:50] = 1
    losses = m(imgs, tg)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    m.eval()
    with torch.no_grad():
        out = m(imgs[:1])
    assert set(out[0]) >= {"boxes", "scores", "labels"}


def test_load_classification_checkpoint_into_backbone():
    cls = create_model("resnet18", attn="steam", num_classes=10)
    bb = resnet_fpn_backbone("resnet18", "steam")
    report = load_backbone_weights(bb, cls.state_dict())
    assert not report.missing and not report.shape_mismatch
    torch.testing.assert_close(bb.body.layer1[0].conv1.weight, cls.layer1[0].conv1.weight)


# ---- data ----------------------------------------------------------------------------------------------------------

def _coco(tmp_path, **overrides):
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    d = dict(images=[dict(id=1, file_name="a.png", width=50, height=40)],
             annotations=[dict(id=7, image_id=1, category_id=3, bbox=[5, 5, 20, 10], area=200, iscrowd=0,
                               segmentation=[[5, 5, 25, 5, 25, 15, 5, 15]])],
             categories=[dict(id=3, name="shoe")])
    for k, v in overrides.items():
        if k == "ann":
            d["annotations"][0].update(v)
        else:
            d[k] = v
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(d))
    return tmp_path / "img", p


def test_coco_reader(tmp_path):
    ds = CocoDetection(*_coco(tmp_path), masks=True)
    x, t = ds[0]
    assert x.shape == (3, 40, 50) and t["boxes"].tolist() == [[5, 5, 25, 15]] and t["labels"].tolist() == [1]
    assert t["masks"].shape == (1, 40, 50) and t["masks"].sum() > 0 and ds.num_classes == 2


@pytest.mark.parametrize("override,match", [
    (dict(ann=dict(bbox=[5, 5, 0, 10])), "annotation 7 has a zero-area box"),
    (dict(ann=dict(bbox=[40, 5, 20, 10])), "annotation 7 box .* lies outside"),
    (dict(ann=dict(category_id=9)), "annotation 7 has unknown category_id 9"),
    (dict(ann=dict(image_id=5)), "annotation 7 refers to unknown image_id 5"),
    (dict(images=[dict(id=1, file_name="missing.png", width=50, height=40)]), "missing file"),
    (dict(categories=None), "missing or malformed 'categories'"),
])
def test_coco_validation_names_the_entry(tmp_path, override, match):
    img_dir, ann = _coco(tmp_path, **override)
    with pytest.raises(AnnotationError, match=match):
        CocoDetection(img_dir, ann)
    d = json.loads(ann.read_text())
    if d["annotations"]:
        del d["annotations"][0]["bbox"]
        ann.write_text(json.dumps(d))
        with pytest.raises(AnnotationError):
            CocoDetection(img_dir, ann)


def _voc(tmp_path, box=(5, 5, 25, 15), name="shoe"):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "JPEGImages" / "a.jpg")
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = "a.jpg"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text, ET.SubElement(size, "height").text = "50", "40"
    obj = ET.SubElement(root, "object")
    ET.SubElement(obj, "name").text = name
    bb = ET.SubElement(obj, "bndbox")
    for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box):
        ET.SubElement(bb, k).text = str(v)
    ET.ElementTree(root).write(tmp_path / "Annotations" / "a.xml")
    return tmp_path


def test_voc_reader_and_errors(tmp_path):
    ds = VocDetection(_voc(tmp_path / "ok"))
    x, t = ds[0]
    assert t["boxes"].tolist() == [[5, 5, 25, 15]] and ds.classes == ["shoe"]
    with pytest.raises(AnnotationError, match="a.xml: object 0 .* zero-area"):
        VocDetection(_voc(tmp_path / "z", box=(5, 5, 5, 15)))
    with pytest.raises(AnnotationError, match="outside"):
        VocDetection(_voc(tmp_path / "o", box=(5, 5, 80, 15)))
    with pytest.raises(AnnotationError, match="unknown classes"):
        VocDetection(_voc(tmp_path / "u"), classes=["bag"])


def test_synthetic_set_is_reproducible_with_exact_boxes(tmp_path):
    a = make_synthetic_coco(tmp_path / "a", n_train=6, n_val=2, seed=3)
    b = make_synthetic_coco(tmp_path / "b", n_train=6, n_val=2, seed=3)
    ja = json.loads((a / "annotations/instances_train.json").read_text())
    jb = json.loads((b / "annotations/instances_train.json").read_text())
    assert ja == jb and ja["annotations"]
    ds = CocoDetection(a / "train", a / "annotations/instances_train.json", masks=True)
    for i in range(len(ds)):
        _, t = ds[i]
        for box, mask in zip(t["boxes"], t["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_train_eval_predict_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVATTN_CACHE", str(tmp_path / "cache"))
    import convattn.tasks.detection.data as dd
    monkeypatch.setattr(dd, "embedded_detection_root",
                        lambda cache_dir=None: make_synthetic_coco(tmp_path / "cache" / "det", n_train=8, n_val=4))
    import convattn.tasks.detection.run as eng
    monkeypatch.setattr(eng, "embedded_detection_root", dd.embedded_detection_root)
    res = train_detector(DetectConfig(detector="maskrcnn", variant="aw", epochs=1, batch_size=4, out=str(tmp_path / "r"),
                                      progress=False, threads=2))
    assert set(res["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"} and "segm" in res
    assert (tmp_path / "r" / "eval.md").exists() and (tmp_path / "r" / "final.json").exists()
    assert main(["detect", "predict", "--run", str(tmp_path / "r"), "--num", "2", "--score-thresh", "0.0",
                 "--out", str(tmp_path / "p")]) == 0
    assert len(list((tmp_path / "p").glob("*.png"))) == 2
    assert main(["detect", "eval", "--run", str(tmp_path / "r")]) == 0


def test_detection_compare_tiny(tmp_path, monkeypatch):
    import convattn.tasks.detection.run as eng
    monkeypatch.setattr(eng, "embedded_detection_root",
                        lambda cache_dir=None: make_synthetic_coco(tmp_path / "det", n_train=8, n_val=4))
    from convattn.tasks.detection.study import compare_detection
    cfg = DetectConfig(epochs=1, batch_size=4, progress=False, threads=2, train_size=4, val_size=2)
    rows = compare_detection(cfg, ["steam@all"], [0, 1], tmp_path / "study")
    assert [r["variant"] for r in rows] == ["none", "steam@all"] and "bbox_AP_mean" in rows[0]
    assert (tmp_path / "study/runs/steam-all/seed1/final.json").exists()  # the classification study's folder names
    report = (tmp_path / "study" / "report.md").read_text()
    assert report.count("| steam@all |") == 2 and "## Per seed: box AP" in report and "of 2 seeds" in report
    aps = [json.loads((tmp_path / f"study/runs/none/seed{s}/final.json").read_text())["bbox"]["AP"] for s in (0, 1)]
    assert rows[0]["bbox_AP_mean"] == pytest.approx(sum(aps) / 2)
    with pytest.raises(ValueError, match="another recipe or task.*epochs: 1 -> 2"):  # one folder, one recipe
        compare_detection(DetectConfig(**{**cfg.__dict__, "epochs": 2}), ["steam@all"], [0], tmp_path / "study")


def test_voc_file_names_stay_inside_and_sizes_must_match(tmp_path):
    root = _voc(tmp_path / "v")
    xml = (root / "Annotations" / "a.xml").read_text()
    (root / "Annotations" / "a.xml").write_text(xml.replace("<filename>a.jpg", "<filename>../../a.jpg"))
    with pytest.raises(AnnotationError, match="points outside the image folder"):
        VocDetection(root)
    (root / "Annotations" / "a.xml").write_text(xml.replace("<width>50", "<width>60"))  # the JPEG is 50 wide
    ds = VocDetection(root)
    with pytest.raises(AnnotationError, match="a.jpg is 50x40, but its XML declares 60x40"):
        ds[0]
    (root / "Annotations" / "a.xml").write_text(xml.replace("<xmin>5", "<xmin>nan"))
    with pytest.raises(AnnotationError, match="non-finite box"):
        VocDetection(root)


def test_one_fpn_builder_loads_checkpoints_of_both_earlier_builders():
    """convattn ResNets and timm/torchvision CNNs go through one builder (fpn_backbone); the keys of the earlier
    ResNet builder (torchvision's BackboneWithFPN over IntermediateLayerGetter) are the same, and those of the
    earlier timm/torchvision builder (the network one level deeper, body.body.*) are renamed on load."""
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from convattn.tasks.detection.backbone import CNNWithFPN, fpn_backbone
    torch.manual_seed(0)
    old = BackboneWithFPN(create_model("resnet18", num_classes=0, norm_layer=FrozenBatchNorm2d),
                          {f"layer{k}": str(k - 1) for k in range(1, 5)}, [64, 128, 256, 512], 256)
    new = fpn_backbone("resnet18")
    assert isinstance(new, CNNWithFPN) and isinstance(fpn_backbone("timm:resnet18", "se"), CNNWithFPN)
    new.load_state_dict(old.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for k, v in old.eval()(x).items():
            torch.testing.assert_close(new.eval()(x)[k], v)
    cnn = fpn_backbone("timm:resnet18", "se")
    deeper = {("body.body." + k[5:] if k.startswith("body.") else k): v for k, v in cnn.state_dict().items()}
    fresh = fpn_backbone("timm:resnet18", "se")
    fresh.load_state_dict(deeper, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), cnn.state_dict().values()))

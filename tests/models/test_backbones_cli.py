"""timm:/torchvision: names everywhere a model name is taken: train, eval, export, maps, profile, detection."""
import json

import pytest
import torch

from convattn.cli import main
from convattn.layers import AWConv2d, CBAM, ECA, GCT, SEModule, STEAM
from convattn.layers.coord import CoordAttention
from convattn.models import Variant, create_model, list_models


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bb") / "run"
    assert main(["train", "--model", "timm:regnety_002", "--variant", "coord+aw", "--epochs", "1", "--train-size", "64",
                 "--batch-size", "32", "--quiet", "--out", str(out)]) == 0
    return out


@pytest.mark.slow  # default-suite budget: covered in CI's slow run
def test_train_eval_export_maps(run_dir, tmp_path, capsys):
    final = json.loads((run_dir / "final.json").read_text())
    assert final["model"] == "timm:regnety_002" and final["variant"] == "coord+aw" and final["train_images"] == 64
    assert main(["eval", "--run", str(run_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 2000
    assert main(["export", "--run", str(run_dir), "--formats", "onnx", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "timm_regnety_002_coord_aw.onnx" in out and float(out.rsplit(" ", 1)[1].rstrip(")\n")) < 1e-3
    assert main(["maps", "--run", str(run_dir), "--index", "0", "--stats", "4", "--out", str(tmp_path / "maps")]) == 0
    stats = (tmp_path / "maps" / "attention_stats.csv").read_text()
    assert "height" in stats and "aw" in stats
    assert (tmp_path / "maps" / "val0" / "gradcam.png").exists()


def test_profile_backbones(capsys, tmp_path):
    assert main(["profile", "--models", "timm:regnety_002,torchvision:mobilenet_v2", "--variants", "se,coord",
                 "--no-latency", "--input-size", "64", "--out", str(tmp_path)]) == 0
    csv = (tmp_path / "profile.csv").read_text()
    assert csv.count("timm:regnety_002") == 3 and csv.count("torchvision:mobilenet_v2") == 3


def test_pretrained_path_in_train(tmp_path, capsys):
    plain = create_model("timm:regnety_002", num_classes=10, in_chans=1)
    path = tmp_path / "plain.pth"
    torch.save(plain.state_dict(), path)
    assert main(["train", "--model", "timm:regnety_002", "--attn", "se", "--pretrained-path", str(path), "--epochs",
                 "1", "--train-size", "32", "--batch-size", "32", "--quiet", "--out", str(tmp_path / "run")]) == 0
    assert "weights from" in capsys.readouterr().out
    assert main(["train", "--model", "timm:regnety_002", "--pretrained-path", str(tmp_path / "missing.pth"),
                 "--out", str(tmp_path / "run2")]) == 2
    assert "missing.pth does not exist" in capsys.readouterr().err


def test_unknown_backbone_is_one_line(tmp_path, capsys):
    assert main(["train", "--model", "timm:not_a_model", "--out", str(tmp_path)]) == 2
    assert "Unknown timm model 'not_a_model'" in capsys.readouterr().err


def test_detector_on_timm_and_torchvision_backbones():
    from convattn.tasks.detection import create_detector
    for backbone, variant in (("timm:regnety_002", "coord"), ("torchvision:mobilenet_v3_large", "steam+aw")):
        det = create_detector("fasterrcnn", backbone=backbone, variant=variant, num_classes=3, min_size=128,
                              max_size=128, trainable_layers=3)
        from convattn.tasks.detection.backbone import StageFeatures
        feats = StageFeatures.run(det.backbone.body, det.backbone.block_names, torch.randn(1, 3, 128, 128))
        assert [f.shape[-1] for f in feats.values()] == [32, 16, 8, 4]  # strides 4, 8, 16, 32
        frozen = [m for m in det.backbone.modules() if type(m).__name__ in ("FrozenBatchNorm2d", "FrozenBatchNormAct2d")]
        assert frozen and not any(isinstance(m, torch.nn.BatchNorm2d) for m in det.backbone.modules())
        det.train()
        images = [torch.rand(3, 128, 128), torch.rand(3, 120, 100)]
        targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
                   {"boxes": torch.tensor([[5.0, 20.0, 50.0, 90.0]]), "labels": torch.tensor([2])}]
        losses = det(images, targets)
        sum(losses.values()).backward()
        trained = [n for n, p in det.backbone.named_parameters() if p.requires_grad and p.grad is not None]
        assert any(".attn." in n or ".pw" in n for n in trained)
        det.eval()
        with torch.no_grad():
            assert len(det([torch.rand(3, 128, 128)])) == 1


def test_variant_object_and_listing():
    v = Variant.parse("steam@all+aw")
    assert (v.attn, v.conv, v.attn_blocks, v.name) == ("steam", "aw", "all", "steam@all+aw")
    assert Variant.parse(v.name) == v and Variant.parse(None).name == "none"
    assert "timm:regnety_002" in list_models(backbones=True) and "timm:regnety_002" not in list_models()


@pytest.mark.parametrize("module", [STEAM(16), AWConv2d(16, 8, 3, padding=1, mode="full_g"), AWConv2d(16, 8, 3, padding=1),
                                    CBAM(16), GCT(16), ECA(16), SEModule(16), CoordAttention(16)])
def test_empty_batch(module):
    y = module.eval()(torch.randn(0, 16, 8, 8))
    assert y.shape[0] == 0 and y.shape[2:] == (8, 8)


def test_empty_batch_whole_models():
    for name, variant in (("resnet20", "steam+aw"), ("timm:regnety_002", "cbam+aw")):
        m = create_model(name, variant=variant, num_classes=4, in_chans=3).eval()
        assert m(torch.randn(0, 3, 32, 32)).shape == (0, 4)


@pytest.mark.parametrize("ctor, message", [
    (lambda: CBAM(0), "CBAM needs channels >= 1"), (lambda: GCT(0), "GCT needs channels >= 1"),
    (lambda: STEAM(0), "STEAM needs channels >= 1"), (lambda: ECA(0), "ECA needs channels >= 1"),
    (lambda: SEModule(16, rd_ratio=-1), "SEModule needs rd_ratio > 0"),
    (lambda: create_model("resnet20", num_classes=-1), "num_classes must be an int >= 0"),
    (lambda: create_model("timm:regnety_002", num_classes=-1), "num_classes must be an int >= 0"),
    (lambda: create_model("torchvision:resnet18", in_chans=0), "in_chans must be an int >= 1"),
])
def test_bad_widths_are_clear_errors(ctor, message):
    with pytest.raises(ValueError, match=message):
        ctor()

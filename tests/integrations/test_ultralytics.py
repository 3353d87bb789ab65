"""attach_yolo with real ultralytics (CPU, tiny data, imgsz 64): the modules survive ultralytics' own train, best.pt,
resume, val, predict and ONNX export; plain checkpoints load completely; identity starts exactly; the YOLO-format
export of the embedded detection set matches its COCO form; the YOLO study task runs a 2-arm study."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported: no network, no AutoUpdate
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="convattn-yolo-cfg-"))
pytest.importorskip("ultralytics", reason="the [yolo] extra (ultralytics) is not installed")

from ultralytics import YOLO  # noqa: E402

from convattn.integrations.ultralytics import (AttachedYOLO, attach_yolo, attaching_trainer, load_yolo,  # noqa: E402
                                               yolo_plans)
from convattn.integrations.yolo_data import export_yolo_data, read_yolo_labels  # noqa: E402
from convattn.layers import AttentionModule  # noqa: E402

TRAIN = dict(epochs=1, imgsz=64, batch=8, workers=0, device="cpu", plots=False, amp=False, verbose=False,
             exist_ok=True, val=True)


def n_attn(net):
    return sum(isinstance(m, AttentionModule) for m in net.modules())


def outputs(net, x):
    """Every tensor of a YOLO network's output, flattened and joined."""
    def flat(o):
        if torch.is_tensor(o):
            return [o.flatten()]
        if isinstance(o, dict):
            o = list(o.values())
        return [t for v in o for t in flat(v)]
    with torch.no_grad():
        return torch.cat(flat(net(x)))


@pytest.fixture(scope="module")
def coco_root():
    from convattn.tasks.detection.data import embedded_detection_root
    return embedded_detection_root()


@pytest.fixture(scope="module")
def data(tmp_path_factory, coco_root):
    out = tmp_path_factory.mktemp("yolo_data")
    return {"detect": str(export_yolo_data(out / "det", "detect", coco_root, {"train": 16, "val": 8})),
            "segment": str(export_yolo_data(out / "seg", "segment", coco_root, {"train": 16, "val": 8})),
            "classify": str(export_yolo_data(out / "cls", "classify", coco_root, {"train": 48, "val": 24}))}


# --- data ---

def test_yolo_export_has_the_coco_images_and_boxes(tmp_path, coco_root):
    yaml_path = export_yolo_data(tmp_path / "y", "detect", coco_root, {"train": 20, "val": 10})
    text = yaml_path.read_text()
    assert "train: images/train" in text and '0: "T-shirt/top"' in text
    for split, n in (("train", 20), ("val", 10)):
        coco = json.loads((coco_root / "annotations" / f"instances_{split}.json").read_text())
        cat_index = {c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
        for img in coco["images"][:n]:
            name = img["file_name"]
            assert (tmp_path / "y" / "images" / split / name).read_bytes() == (coco_root / split / name).read_bytes()
            got = read_yolo_labels(tmp_path / "y" / "labels" / split / (Path(name).stem + ".txt"),
                                   img["width"], img["height"])
            want = [(cat_index[a["category_id"]], a["bbox"]) for a in coco["annotations"] if a["image_id"] == img["id"]]
            assert [c for c, _ in got] == [c for c, _ in want]
            for (_, g), (_, w) in zip(got, want):
                assert g == pytest.approx(w, abs=1e-3)
        assert len(list((tmp_path / "y" / "images" / split).iterdir())) == n


def test_yolo_segment_outlines_fit_the_boxes(data, coco_root):
    root = Path(data["segment"]).parent
    coco = json.loads((coco_root / "annotations" / "instances_val.json").read_text())
    for img in coco["images"][:8]:
        lines = (root / "labels" / "val" / (Path(img["file_name"]).stem + ".txt")).read_text().splitlines()
        boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == img["id"]]
        assert len(lines) == len(boxes)
        for line, (x, y, w, h) in zip(lines, boxes):
            pts = torch.tensor([float(v) for v in line.split()[1:]]).view(-1, 2) * 128
            assert pts[:, 0].min() == pytest.approx(x, abs=1.0) and pts[:, 0].max() == pytest.approx(x + w, abs=1.0)
            assert pts[:, 1].min() == pytest.approx(y, abs=1.0) and pts[:, 1].max() == pytest.approx(y + h, abs=1.0)


def test_yolo_data_cli(tmp_path, coco_root):
    from convattn.cli import main
    assert main(["yolo-data", "--out", str(tmp_path / "d"), "--coco", str(coco_root), "--train-images", "3",
                 "--val-images", "2"]) == 0
    assert len(list((tmp_path / "d" / "labels" / "train").iterdir())) == 3
    assert (tmp_path / "d" / "data.yaml").exists()


# --- attach, placement, the recorded spec ---

@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml"])
def test_where_in_ultralytics_terms(cfg):
    m = attach_yolo(YOLO(cfg), "cbam", where="neck")
    assert type(m) is AttachedYOLO
    neck = {"yolov8n.yaml": [12, 15, 18, 21], "yolo11n.yaml": [13, 16, 19, 22]}[cfg]
    assert m.convattn_report.layers["neck"] == neck and m.convattn_report.layers["backbone"] == []
    assert "neck 1" in m.convattn_report.summary()
    b = attach_yolo(YOLO(cfg), "se", where="backbone")
    assert b.convattn_report.layers["neck"] == [] and len(b.convattn_report.layers["backbone"]) >= 4
    one = attach_yolo(YOLO(cfg), "eca", where=[2, neck[0]])
    assert one.convattn_report.layer_indices == [2, neck[0]]
    plan, = yolo_plans(one.model)
    assert isinstance(plan.where, dict) and plan.to_dict()["where"]  # recordable: {stage: [blocks]}


@pytest.mark.parametrize("cfg", ["yolov8n-pose.yaml", "yolo11n-obb.yaml", "yolov8s.yaml"])
def test_pose_obb_and_s_models_attach_and_record(cfg):
    model = attach_yolo(YOLO(cfg), "se", identity=True)
    assert model.convattn_report.count() >= 9
    trainer = model.task_map[model.task]["trainer"]
    assert trainer.__name__.startswith("Attaching") and json.loads(trainer.convattn_spec)[0]["attn"] == "se"


def test_plain_checkpoint_loads_completely_and_identity_is_exact(tmp_path, data):
    plain = YOLO("yolov8n.yaml")
    with torch.no_grad():  # BN statistics away from their init, so that identity is tested on a real function
        for mod in plain.model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2)
    plain.save(tmp_path / "plain.pt")
    ref = YOLO(tmp_path / "plain.pt")
    model = attach_yolo(YOLO(tmp_path / "plain.pt"), "cbam", identity=True)
    sd, plain_sd = model.model.state_dict(), ref.model.state_dict()
    assert set(plain_sd) <= set(sd) and all(torch.equal(sd[k], v) for k, v in plain_sd.items())
    x = torch.randn(2, 3, 64, 64)
    ref.model.float().eval(), model.model.float().eval()
    assert torch.equal(outputs(ref.model, x), outputs(model.model, x))
    kw = dict(data=data["detect"], imgsz=64, batch=8, workers=0, device="cpu", plots=False, verbose=False,
              project=str(tmp_path), name="val", exist_ok=True)
    assert model.val(**kw).fitness == ref.val(**kw).fitness
    assert n_attn(model.model) == 2 * 11  # val fused the network and kept the modules (CBAM in ResidualScale)


def test_pickle_and_fuse_keep_the_modules(tmp_path):
    model = attach_yolo(YOLO("yolo11n.yaml"), "se", conv="aw")
    net = model.model.eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if ".attn." in name or "pw" in name:
                p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 3, 64, 64)
    ref = outputs(net, x)
    model.save(tmp_path / "m.pt")
    back = YOLO(tmp_path / "m.pt")
    assert n_attn(back.model) == n_attn(net) and yolo_plans(back.model) == yolo_plans(net)
    net2 = back.model.float().eval()
    torch.testing.assert_close(outputs(net2, x), ref, atol=1e-2, rtol=1e-2)  # the file holds half precision
    calls = []
    for m in net.modules():
        if isinstance(m, AttentionModule):
            m.register_forward_hook(lambda *a: calls.append(1))
    net.fuse(verbose=False)
    fused = outputs(net, x)
    assert len(calls) == n_attn(net)
    torch.testing.assert_close(fused, ref, atol=1e-3, rtol=1e-3)


def test_attached_torchvision_network_pickles_whole(tmp_path):
    """attach's run-time classes (here on torch.nn layers: Conv2dWithInputAttn, ...) unpickle by importable names."""
    import copy

    import torchvision

    from convattn import attach
    net = attach(torchvision.models.resnet18(num_classes=4), "se+gct", conv="aw").eval()
    torch.save(net, tmp_path / "net.pt")
    x = torch.randn(2, 3, 64, 64)
    for back in (torch.load(tmp_path / "net.pt", weights_only=False), copy.deepcopy(net)):
        assert type(back.layer1[0].conv1) is type(net.layer1[0].conv1)  # the same (cached) attached class
        assert torch.equal(back.eval()(x), net(x))


def test_trainer_of_an_attached_model_reattaches():
    model = attach_yolo(YOLO("yolov8n.yaml"), "eca", where="neck")
    trainer = model.task_map["detect"]["trainer"]
    assert trainer is attaching_trainer(trainer, model.model)  # one class per spec
    assert json.loads(trainer.convattn_spec)[0]["attn"] == "eca"
    assert YOLO("yolov8n.yaml").task_map["detect"]["trainer"].__name__ == "DetectionTrainer"

    class MyYOLO(YOLO):  # a user's subclass keeps its class and gains the attaching trainer
        pass
    mine = attach_yolo(MyYOLO("yolov8n.yaml"), "se")
    assert isinstance(mine, MyYOLO) and isinstance(mine, AttachedYOLO)
    assert mine.task_map["detect"]["trainer"].__name__ == "AttachingDetectionTrainer"


# --- ultralytics' workflow ---

def _check_trained(model, best, n):
    assert n_attn(model.model) == n
    back = YOLO(best)
    assert n_attn(back.model) == n and yolo_plans(back.model)
    return back


@pytest.mark.slow
@pytest.mark.parametrize("cfg", ["yolov8n", "yolo11n"])
@pytest.mark.parametrize("task", ["detect", "segment", "classify"])
def test_train_and_reload_keep_the_modules(tmp_path, data, cfg, task):
    suffix = {"detect": "", "segment": "-seg", "classify": "-cls"}[task]
    model = attach_yolo(YOLO(f"{cfg}{suffix}.yaml"), "cbam")
    n = n_attn(model.model)
    assert n > 0
    kw = dict(TRAIN)
    model.train(data=data[task], project=str(tmp_path), name="a", **kw)
    best = tmp_path / "a" / "weights" / "best.pt"
    back = _check_trained(model, best, n)
    again = load_yolo(best)  # trains on from best.pt with the modules
    again.train(data=data[task], project=str(tmp_path), name="b", **kw)
    _check_trained(again, tmp_path / "b" / "weights" / "best.pt", n)
    metrics = back.val(data=data[task], imgsz=kw["imgsz"], batch=8, workers=0, device="cpu", plots=False,
                       verbose=False, project=str(tmp_path), name="val")
    assert metrics.fitness is not None


@pytest.mark.slow
def test_resume_predict_and_onnx_export_keep_the_modules(tmp_path, data):
    ort = pytest.importorskip("onnxruntime")
    model = attach_yolo(YOLO("yolov8n.yaml"), "coord", where="neck")
    n = n_attn(model.model)

    def stop(trainer):
        if trainer.epoch == 0:
            raise KeyboardInterrupt("stopped after the first epoch")
    model.add_callback("on_fit_epoch_end", stop)
    with pytest.raises(KeyboardInterrupt):
        model.train(data=data["detect"], project=str(tmp_path), name="r", **dict(TRAIN, epochs=2))
    last = tmp_path / "r" / "weights" / "last.pt"
    resumed = load_yolo(last)
    resumed.train(resume=True, workers=0, device="cpu")
    assert resumed.trainer.start_epoch == 1 and n_attn(resumed.trainer.model) == n
    back = _check_trained(resumed, tmp_path / "r" / "weights" / "best.pt", n)

    img = next((Path(data["detect"]).parent / "images" / "val").iterdir())
    assert back.predict([str(img)], imgsz=64, device="cpu", verbose=False)[0].boxes is not None
    onnx = back.export(format="onnx", imgsz=64, device="cpu")
    x = torch.rand(1, 3, 64, 64)
    net = YOLO(tmp_path / "r" / "weights" / "best.pt").model.float().eval().fuse(verbose=False)
    with torch.no_grad():
        ref = net(x)
    ref = ref[0] if isinstance(ref, (list, tuple)) else ref
    got = ort.InferenceSession(str(onnx)).run(None, {"images": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), ref, atol=1e-3, rtol=1e-3)


@pytest.mark.slow
def test_ddp_worker_rebuilds_with_the_modules(tmp_path, data):
    """ultralytics' DDP workers unpickle the trainer's class (cloudpickle) and may build the network themselves."""
    cloudpickle = pytest.importorskip("cloudpickle")
    model = attach_yolo(YOLO("yolov8n.yaml"), "se", where="backbone")
    trainer = model.task_map["detect"]["trainer"]
    (tmp_path / "t.pkl").write_bytes(cloudpickle.dumps(trainer))
    code = (f"import pickle; cls = pickle.load(open({str(tmp_path / 't.pkl')!r}, 'rb'));"
            f"t = cls(overrides=dict(model='yolov8n.yaml', data={data['detect']!r}, device='cpu', workers=0,"
            f" project={str(tmp_path)!r}, name='ddp', plots=False));"
            "net = t.get_model(cfg='yolov8n.yaml', verbose=False);"
            "print('ATTN', net.convattn_report.layer_indices)")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "ATTN [2, 4, 6, 8, 9]" in r.stdout, r.stderr[-2000:]


@pytest.mark.slow
def test_yolo_study_two_arms(tmp_path, data):
    from convattn.cli import main
    out = tmp_path / "study"
    assert main(["compare", "--task", "yolo", "--variants", "se", "--seeds", "1", "--epochs", "1", "--image-size",
                 "64", "--batch-size", "8", "--data", data["detect"], "--out", str(out)]) == 0
    rows = {r["variant"]: r for r in __import__("csv").DictReader((out / "results.csv").open())}
    assert set(rows) == {"none", "se"} and int(rows["se"]["modules"]) == 11
    assert float(rows["se"]["gflops"]) > float(rows["none"]["gflops"]) > 0
    assert "ultralytics" in (out / "report.md").read_text()

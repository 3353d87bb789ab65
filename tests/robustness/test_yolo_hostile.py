"""Hostile input to the Ultralytics integration: ultralytics missing, convattn missing where a checkpoint with
modules is opened, model families attach_yolo does not serve, where= out of range or unrecordable."""
import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported: no network, no AutoUpdate
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="convattn-yolo-cfg-"))

BLOCK = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == {mod!r} or name.startswith({mod!r} + "."):
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None
    sys.meta_path.insert(0, Block())
    for k in [k for k in sys.modules if k == {mod!r} or k.startswith({mod!r} + ".")]:
        del sys.modules[k]
""")


def _run(code: str, block: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", BLOCK.format(mod=block) + textwrap.dedent(code)],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_ultralytics_missing_is_one_line_naming_the_extra():
    r = _run("""
        import convattn.integrations  # imports nothing heavy
        try:
            import convattn.integrations.ultralytics
        except ImportError as e:
            print("ERR", e)
        from convattn.integrations.yolo_data import export_yolo_data  # needs no ultralytics
    """, "ultralytics")
    assert r.returncode == 0, r.stderr[-2000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("ERR"))
    assert "pip install 'convattn[yolo]'" in line and "ultralytics" in line


@pytest.mark.slow
def test_checkpoint_with_modules_without_convattn_says_to_install_it(tmp_path):
    pytest.importorskip("ultralytics")
    from ultralytics import YOLO

    from convattn.integrations.ultralytics import attach_yolo
    attach_yolo(YOLO("yolov8n.yaml"), "se").save(tmp_path / "best.pt")
    r = _run(f"""
        from ultralytics import YOLO
        YOLO({str(tmp_path / 'best.pt')!r})
    """, "convattn")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "convattn" in last, r.stderr[-2000:]  # "No module named 'convattn'" ...
    assert "require 'convattn'" in r.stdout + r.stderr  # ... and ultralytics' warning: "appears to require ..."


def test_families_attach_yolo_does_not_serve():
    pytest.importorskip("ultralytics")
    from torch import nn
    from ultralytics import RTDETR, YOLO

    from convattn.integrations.ultralytics import attach_yolo
    with pytest.raises(ValueError, match="RTDETR is not supported"):
        attach_yolo(RTDETR("rtdetr-l.yaml"), "se")
    with pytest.raises(ValueError, match="YOLOWorld is not supported"):
        attach_yolo(YOLO("yolov8s-worldv2.yaml"), "se")
    with pytest.raises(ValueError, match="use convattn.attach"):
        attach_yolo(nn.Conv2d(3, 3, 3), "se")


def test_where_out_of_range_and_unrecordable():
    pytest.importorskip("ultralytics")
    from ultralytics import YOLO

    from convattn.integrations.ultralytics import attach_yolo
    model = YOLO("yolov8n.yaml")
    with pytest.raises(ValueError, match=r"layer 40 is out of range; this network has layers 0\.\.22"):
        attach_yolo(model, "se", where=[2, 40])
    with pytest.raises(ValueError, match=r"10 \(Upsample\) hold no block"):
        attach_yolo(model, "se", where=10)
    with pytest.raises(ValueError, match="callable cannot be recorded"):
        attach_yolo(model, "se", where=lambda name, m: True)
    with pytest.raises(ValueError, match="a list holds ultralytics layer indices"):
        attach_yolo(model, "se", where=[2, "head"])
    with pytest.raises(ValueError, match="without a module"):
        attach_yolo(model, where="neck")
    cls = YOLO("yolov8n-cls.yaml")
    with pytest.raises(ValueError, match="no neck layers"):
        attach_yolo(cls, "se", where="neck")
    assert not any(hasattr(m, "attn") for m in model.model.modules())  # every refusal left the network unchanged
    attach_yolo(model, "se", where="neck")
    with pytest.raises(ValueError, match="already has an attention attached"):
        attach_yolo(model, "se", where="neck")

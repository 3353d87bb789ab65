"""Hostile and broken shared folders (config.json + model.safetensors): each problem is one line naming it, from
timm's own loader, ``convattn.sharing.load_folder``, ``load_pretrained`` and ``convattn train --pretrained-path``;
nothing is half-built, a folder never runs code by itself, and a save that cannot be reloaded writes nothing."""
import json
import sys

import pytest
import timm
from safetensors.torch import save_file

from convattn import attach, create_model, load_pretrained
from convattn.cli import main
from convattn.sharing import load_folder, save_pretrained

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from _errors import one_line_error  # noqa: E402 - beside this file (pytest puts its folder on sys.path)


@pytest.fixture
def folder(tmp_path):
    m = create_model("resnet20", attn="se", num_classes=10)
    save_pretrained(m, tmp_path / "f")
    return tmp_path / "f"


def _edit(folder, fn):
    cfg = json.loads((folder / "config.json").read_text())
    fn(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


def _refused(folder, *fragments):
    """Every reader refuses ``folder`` with one line holding ``fragments``."""
    for read in (lambda: load_folder(folder), lambda: timm.create_model(f"local-dir:{folder}", pretrained=True),
                 lambda: load_pretrained(create_model("resnet20", attn="se", num_classes=10), folder)):
        with pytest.raises(ValueError) as e:
            read()
        text = str(e.value)
        assert "\n" not in text, text
        for f in fragments:
            assert f in text, (f, text)


def test_unknown_module_kind(folder):
    _edit(folder, lambda c: c["model_args"]["attach"][0].update(attn="se+frobnicate"))
    _refused(folder, "attach[0]", "frobnicate")


def test_newer_spec_version(folder):
    _edit(folder, lambda c: c["model_args"]["attach"][0].update(spec_version=99))
    _refused(folder, "version 99 is newer than this convattn reads", "upgrade convattn")


def test_unknown_spec_key(folder):
    _edit(folder, lambda c: c["model_args"]["attach"][0].update(frobnicate=1))
    _refused(folder, "unknown attach spec key(s) frobnicate")


@pytest.mark.parametrize("base, fragment", [
    ("timm:no_such_net_37", "not a model of the installed timm"),
    ("torchvision:no_such_net_37", "not a model of the installed torchvision"),
    ("module:no_such_pkg_37.nets:Net", "is not installed"),
    ("ftp:resnet20", "names no network"),
    (42, "names no network"),
])
def test_base_not_installed_or_malformed(folder, base, fragment):
    _edit(folder, lambda c: c["model_args"].update(base=base))
    for read in (lambda: load_folder(folder), lambda: timm.create_model(f"local-dir:{folder}", pretrained=True)):
        with pytest.raises(ValueError, match=fragment) as e:
            read()
        assert "\n" not in str(e.value)


def test_a_module_base_is_never_imported_by_the_folder(folder, tmp_path, monkeypatch):
    (tmp_path / "side_effect_37.py").write_text("open(__file__ + '.imported', 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _edit(folder, lambda c: c["model_args"].update(base="module:side_effect_37:Net"))
    with pytest.raises(ValueError, match="is not imported; import side_effect_37 before loading"):
        load_folder(folder)
    assert not (tmp_path / "side_effect_37.py.imported").exists() and "side_effect_37" not in sys.modules


@pytest.mark.parametrize("base", ["module:os:system", "module:subprocess:Popen", "module:builtins:eval"])
def test_a_module_base_must_be_a_network_class(folder, tmp_path, base):
    target = tmp_path / "pwned"
    args = {"command": f"touch {target}"} if base.endswith("system") else {"args": ["touch", str(target)]}
    _edit(folder, lambda c: c["model_args"].update(base=base, base_args=args))
    with pytest.raises(ValueError, match="not an nn.Module class"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert not target.exists()


def test_base_args_not_a_mapping(folder):
    _edit(folder, lambda c: c["model_args"].update(base_args=[1, 2]))
    with pytest.raises(ValueError, match="base_args must be a mapping"):
        load_folder(folder)


def test_missing_weights(folder):
    (folder / "model.safetensors").unlink()
    _refused(folder, "has no weights file")


def test_mismatched_weights(folder):
    other = create_model("resnet20", attn="cbam", num_classes=10)
    save_file(other.state_dict(), str(folder / "model.safetensors"))
    for read in (lambda: load_folder(folder), lambda: timm.create_model(f"local-dir:{folder}", pretrained=True)):
        with pytest.raises(ValueError, match="weights do not match the network its config.json describes") as e:
            read()
        assert "\n" not in str(e.value) and "unexpected" in str(e.value) and "missing" in str(e.value)


def test_truncated_weights(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    _refused(folder, "model.safetensors")


@pytest.mark.parametrize("text, fragment", [("{not json", "cannot be read as JSON"),
                                            ("[1, 2]", "not a timm model config"),
                                            ('{"architecture": "no_such_arch_37"}', "not a model of the installed timm")])
def test_broken_config(folder, text, fragment):
    (folder / "config.json").write_text(text)
    with pytest.raises(ValueError, match=fragment) as e:
        load_folder(folder)
    assert "\n" not in str(e.value)


def test_not_a_folder(tmp_path):
    with pytest.raises(ValueError, match="is not a folder") as e:
        load_pretrained(create_model("resnet20", num_classes=10), str(tmp_path / "nothing"))
    assert "\n" not in str(e.value)


def test_a_callable_placement_cannot_be_saved(tmp_path):
    m = attach(timm.create_model("resnet18d", num_classes=5), "se", where=lambda name, mod: "layer4" in name)
    with pytest.raises(ValueError, match="callable") as e:
        save_pretrained(m, tmp_path / "a")
    assert "\n" not in str(e.value) and not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match="not serializable"):  # timm's own writer refuses too
        timm.models.save_for_hf(m, tmp_path / "b", safe_serialization=True)


def test_a_failed_save_leaves_the_folder_as_it_was(tmp_path):
    """A recipe that does not rebuild the network: the old files stay, no temporary folder is left behind."""
    import torchvision
    good = create_model("resnet20", attn="se", num_classes=10)
    save_pretrained(good, tmp_path / "f")
    before = {p.name: p.read_bytes() for p in (tmp_path / "f").iterdir()}
    m = attach(torchvision.models.resnet18(num_classes=10), "se")
    with pytest.raises(ValueError, match="rebuilds another network.*nothing was written"):
        save_pretrained(m, tmp_path / "f", base="torchvision:resnet34")  # the wrong builder
    assert {p.name: p.read_bytes() for p in (tmp_path / "f").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_cli_refuses_with_one_line(folder, tmp_path, capsys):
    _edit(folder, lambda c: c["model_args"]["attach"][0].update(spec_version=99))
    rc = main(["train", "--model", "resnet20", "--variant", "se", "--pretrained-path", str(folder), "--epochs", "1",
               "--train-size", "64", "--out", str(tmp_path / "run")])
    assert rc == 2
    one_line_error(capsys, "newer than this convattn reads")
    assert main(["export", "--run", str(tmp_path / "no_run"), "--formats", "hf", "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "convattn export: error")
    assert main(["export", "--model", "resnet20", "--formats", "hf,gif", "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "unknown export format(s) ['gif']; valid: onnx, torchscript, hf")

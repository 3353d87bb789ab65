"""Issue 29, round 3 (run lock, data-file paths, empty options, folders, budgets on resume, range checks, messages):
each hostile or unusual input is refused in one line naming what was wrong and what would be right, or gives the
right result."""
import json
import os
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from convattn.cli import main
from convattn.engine.checkpoint import RunInUseError, RunLockError, clean_stale_temporaries, run_lock
from convattn.validate import ConfigError
from _errors import one_line_error  # noqa: E402 - beside this file (pytest puts its folder on sys.path)




def _folder(root, classes=("a", "b"), n=8, size=16, colour=True, split_sizes=None):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range((split_sizes or {}).get(split, n)):
                shape = (size, size, 3) if colour else (size, size)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(d / f"{i}.png")
    return root


_TRAIN = ["--epochs", "1", "--batch-size", "4", "--workers", "0", "--quiet"]


# --- security ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_lock_that_links_outside_is_refused_and_never_written(tmp_path, capsys, link):
    """Case 1: a .lock linked to a file outside --out was followed and truncated ("pid N on HOST" written into it)."""
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    out = tmp_path / "run"
    out.mkdir()
    (os.symlink if link == "symlink" else os.link)(target, out / ".lock")
    with pytest.raises(RunLockError, match="symbolic link" if link == "symlink" else "hard link"):
        with run_lock(out):
            pass
    assert main(["train", "--out", str(out), "--train-size", "32", *_TRAIN]) == 2
    one_line_error(capsys, ".lock is a " + ("symbolic link" if link == "symlink" else "hard link"),
                    "must be a regular file")
    assert target.read_text() == "keep me"
    assert not (out / "checkpoints").exists()


def _voc(root, ids=None, width="50"):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(root / "JPEGImages" / "a.jpg")
    ann = ET.Element("annotation")
    ET.SubElement(ann, "filename").text = "a.jpg"
    size = ET.SubElement(ann, "size")
    ET.SubElement(size, "width").text, ET.SubElement(size, "height").text = width, "40"
    obj = ET.SubElement(ann, "object")
    ET.SubElement(obj, "name").text = "shoe"
    bb = ET.SubElement(obj, "bndbox")
    for k, v in zip(("xmin", "ymin", "xmax", "ymax"), (5, 5, 25, 15)):
        ET.SubElement(bb, k).text = str(v)
    ET.ElementTree(ann).write(root / "Annotations" / "a.xml")
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids or ["a"]) + "\n")
    return root


def test_voc_ids_and_image_sets_stay_inside_the_data_folder(tmp_path):
    """Case 2: an id such as ../../../elsewhere/x in ImageSets/Main/train.txt read an XML file outside the folder."""
    pytest.importorskip("pycocotools")
    from convattn.tasks.detection import AnnotationError, VocDetection
    elsewhere = _voc(tmp_path / "elsewhere")  # a valid annotation file outside the data folder
    (elsewhere / "Annotations" / "a.xml").rename(elsewhere / "x.xml")
    root = _voc(tmp_path / "data" / "voc", ids=["a", "../../../elsewhere/x"])
    assert VocDetection(root).classes == ["shoe"]  # without an image set: the folder's own files
    with pytest.raises(AnnotationError, match=r"train.txt: id '../../../elsewhere/x' points outside the annotation "
                                              r"folder .*Annotations"):
        VocDetection(root, image_set="train")
    (root / "ImageSets" / "Main" / "train.txt").write_text("/etc/passwd\n")
    with pytest.raises(AnnotationError, match="id '/etc/passwd' points outside"):
        VocDetection(root, image_set="train")
    with pytest.raises(AnnotationError, match="image set '../../x' points outside the image-set folder"):
        VocDetection(root, image_set="../../x")
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    assert len(VocDetection(root, image_set="train")) == 1


# --- silently wrong ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["train", *_TRAIN], ["export", "--model", "resnet20"], ["compare", "--seeds", "1"],
                                  ["detect", "train"], ["maps", "--run", "x"], ["profile", "--models", "resnet20"]])
def test_empty_out_is_refused(tmp_path, capsys, monkeypatch, argv):
    """Case 3: train --out '' wrote the run into the current folder (Path('') is '.')."""
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--out", ""]) == 2
    one_line_error(capsys, "--out '' names no folder")
    assert list(tmp_path.iterdir()) == []
    from convattn.tasks.classification import TrainConfig, train
    with pytest.raises(ConfigError, match="out \\(--out\\) '' names no folder"):
        train(TrainConfig(out="", epochs=1, train_size=32, batch_size=32, progress=False))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("formats", ["", ",", " , "])
def test_export_with_no_format_is_refused(tmp_path, capsys, formats):
    """Case 4: export --formats '' / ',' exited 0 and wrote nothing."""
    assert main(["export", "--model", "resnet20", "--formats", formats, "--out", str(tmp_path / "x")]) == 2
    one_line_error(capsys, f"formats (--formats) {formats!r} names no format; give onnx, torchscript, hf or several (comma-separated)")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1"])
def test_compare_time_budget_must_be_finite_minutes(tmp_path, capsys, value):
    """Case 5: compare --time-budget nan was accepted (NaN in budget.json)."""
    assert main(["compare", f"--time-budget={value}", "--out", str(tmp_path / "s")]) == 2
    one_line_error(capsys, "time_budget (--time-budget) must be a number >= 0 (minutes > 0, or 0 for no budget), got")
    assert not (tmp_path / "s").exists()
    from convattn.tasks.classification.budget import size_study
    with pytest.raises(ConfigError, match="time_budget"):
        size_study(None, ["none"], 1, float(value), tmp_path / "s", True, True)


@pytest.mark.parametrize("content", ["empty", "readme"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_folder_class_without_images_is_refused_by_name(tmp_path, capsys, content, split):
    """Case 6: a class folder that is empty or holds only a README became a class without images (the empty train
    class used to be refused, then passed with exit 0)."""
    root = _folder(tmp_path / "data")
    empty = root / split / "c"
    empty.mkdir()
    if content == "readme":
        (empty / "README.md").write_text("no images here")
    assert main(["train", "--data", "folder", "--data-dir", str(root), "--out", str(tmp_path / "run"), *_TRAIN]) == 2
    one_line_error(capsys, f"class folder {empty} has no image file",
                    "it holds only README.md" if content == "readme" else "it is empty")
    from convattn.data.loaders import _CheckedImageFolder
    with pytest.raises(FileNotFoundError, match=f"class folder {empty} has no image file"):
        _CheckedImageFolder(root / split, None)


def test_hidden_folders_are_not_classes(tmp_path):
    """Case 6: .ipynb_checkpoints (and any folder named .*) became a class; inside a class it duplicated images."""
    from convattn.data import build_data, survey_folder
    from convattn.data.loaders import _CheckedImageFolder
    root = _folder(tmp_path / "data")
    for split in ("train", "val"):
        hidden = root / split / ".ipynb_checkpoints"
        hidden.mkdir()
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(hidden / "x-checkpoint.png")
        inner = root / split / "a" / ".ipynb_checkpoints"
        inner.mkdir()
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(inner / "0-checkpoint.png")
    (root / "train" / ".git").mkdir()
    s = survey_folder(root)
    assert s.classes == ("a", "b") and (s.num_train, s.num_val) == (16, 16)
    ds = _CheckedImageFolder(root / "train", None)
    assert ds.classes == ["a", "b"] and len(ds) == 16
    assert build_data("folder", root, 4, workers=0).num_classes == 2


def test_grey_folder_with_a_colour_image_outside_the_sample_is_colour(tmp_path):
    """Case 6: a colour image the sampled survey missed was read as grey without a word."""
    from convattn.data import resolve_folder_data_config, survey_folder
    from convattn.data.folder import _survey
    root = _folder(tmp_path / "data", n=6, colour=False)
    colour = root / "train" / "a" / "3.png"
    Image.fromarray(np.full((16, 16, 3), (200, 10, 10), np.uint8)).save(colour)
    _survey.cache_clear()
    s = survey_folder(root, sample=3)  # samples files 0, 5 and 11 of 12: all grey
    assert s.sampled == 3 and not s.grey and s.colour_file == str(colour)
    cfg = resolve_folder_data_config(s, dict(input_size=(3, 224, 224), mean=(0.5,) * 3, std=(0.5,) * 3))
    assert cfg.input_size[0] == 3 and f"colour image {colour} among grey ones" in cfg.summary()
    colour.unlink()
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(colour)
    _survey.cache_clear()
    s = survey_folder(root, sample=3)
    assert s.grey and s.colour_file == ""  # all grey: one channel


def _study(out, recipe, budget=None):
    out.mkdir(parents=True)
    (out / "study.json").write_text(json.dumps(dict(task="classification", model="resnet20", recipe=recipe)))
    if budget is not None:
        (out / "budget.json").write_text(json.dumps(dict(budget_min=budget, train_size=1250, epochs=3,
                                                         predicted_s=500.0, budget_s=60 * budget)))


def test_resume_with_another_time_budget_says_the_stored_recipe_is_kept(tmp_path, capsys):
    """Case 7: a new --time-budget on resume was ignored without a word; a study started without a budget and
    resumed with one was refused naming the default study's epochs, which the user never gave."""
    from convattn.tasks.classification.budget import size_study
    _study(tmp_path / "b", dict(train_size=1250, epochs=3), budget=5.0)
    assert size_study(None, ["none"], 1, 9.0, tmp_path / "b", True, True) == dict(train_size=1250, epochs=3)
    out = capsys.readouterr().out
    assert "the 9 min given now is ignored" in out and "sized to 5 min when the study started and keeps that recipe" in out
    assert size_study(None, ["none"], 1, 5.0, tmp_path / "b", True, True) == dict(train_size=1250, epochs=3)
    assert "ignored" not in capsys.readouterr().out  # the same budget: nothing to say
    _study(tmp_path / "n", dict(train_size=64, epochs=1))
    assert size_study(None, ["none"], 1, 5.0, tmp_path / "n", True, True) == dict(train_size=64, epochs=1)
    out = capsys.readouterr().out
    assert "the 5 min given now is ignored" in out and "started without a time budget (64 training images x 1 epochs" in out
    # the CLI implies the default study's 15-minute budget only for a new study, never for one already in --out
    from convattn.cli import build_parser
    from convattn.cli.tasks import compare_config
    args = build_parser().parse_args(["compare", "--out", str(tmp_path / "n")])
    assert compare_config(args, [0]).time_budget_min == 0
    args = build_parser().parse_args(["compare", "--out", str(tmp_path / "new")])
    assert compare_config(args, [0]).time_budget_min == 15.0


# --- raw tracebacks ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["export", "--model", "resnet20", "--input-size", "100000"],
     "input_size (--input-size) must be an integer >= 8 and <= 2048, got 100000"),
    (["compare", "--seeds", "100000000000000000000"], "a seed count must be <= 1000"),
    (["compare", "--seeds", "10000000000"], "--seeds 10000000000: a seed count must be <= 1000"),
    (["compare", "--seeds", "0,99999999999999999999"], "seeds must be distinct integers >= 0 and <= 4294967295"),
])
def test_huge_sizes_and_seed_counts_are_range_checked(tmp_path, capsys, argv, message):
    """Case 8: allocator error, OverflowError and a bare MemoryError."""
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, message)
    assert not (tmp_path / "o").exists()


def test_seeds_that_are_not_whole_numbers_are_named(capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare", "--seeds", "1e20"])
    assert e.value.code == 2
    assert "argument --seeds: expected comma-separated whole numbers such as 3 or 0,5,7, got '1e20'" in \
        capsys.readouterr().err


def test_timm_runner_given_a_folder_says_what_it_expects(tmp_path, capsys):
    """Case 9: convattn-timm DIR said "script not found"."""
    from convattn.timm_runner import main as timm_main
    assert timm_main([str(tmp_path), "/data"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} is a folder, not a script; convattn-timm expects SCRIPT [ARGS...]" in err
    assert err.count("\n") == 1
    (tmp_path / "train.py").write_text("")
    assert timm_main([str(tmp_path)]) == 2
    assert f"it holds train.py: pass one of them, e.g. convattn-timm {tmp_path / 'train.py'}" in capsys.readouterr().err


# --- misleading ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("width, message", [("fifty", "<size><width> must be a whole number of pixels, got 'fifty'"),
                                            ("-3", "<size><width> must be a whole number of pixels >= 0, got '-3'"),
                                            ("50.5", "<size><width> must be a whole number of pixels >= 0, got '50.5'")])
def test_voc_size_that_is_not_a_number_names_file_and_field(tmp_path, width, message):
    """Case 10: "invalid literal for int()" without the file or the field."""
    pytest.importorskip("pycocotools")
    from convattn.tasks.detection import AnnotationError, VocDetection
    root = _voc(tmp_path / "voc", width=width)
    with pytest.raises(AnnotationError, match=re.escape(f"{root / 'Annotations' / 'a.xml'}: {message}")):
        VocDetection(root)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A run trained on a small colour folder with classes a, b (16x16 images)."""
    base = tmp_path_factory.mktemp("r3run")
    root = _folder(base / "data")
    out = base / "run"
    assert main(["train", "--data", "folder", "--data-dir", str(root), "--out", str(out), *_TRAIN]) == 0
    return root, out


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\xff\xfe"])
def test_corrupt_config_json_is_named(folder_run, tmp_path, capsys, content):
    """Case 11: a corrupt config.json of a run folder failed without naming the file."""
    import shutil
    _, out = folder_run
    run = tmp_path / "copy"
    shutil.copytree(out, run)
    (run / "config.json").write_bytes(content.encode("latin-1"))
    capsys.readouterr()
    assert main(["eval", "--run", str(run)]) == 2
    one_line_error(capsys, f"{run / 'config.json'} is corrupt")


def test_eval_on_a_folder_with_other_classes_names_the_class_mismatch(folder_run, tmp_path, capsys):
    """Case 12: the error spoke of the training batch size instead of the class mismatch."""
    _, out = folder_run
    other = _folder(tmp_path / "other", classes=("cat", "dog", "owl"), n=2)
    capsys.readouterr()
    assert main(["eval", "--run", str(out), "--data", "folder", "--data-dir", str(other)]) == 2
    one_line_error(capsys, f"class mismatch: {other} has the classes 3 [cat, dog, owl], but the run {out} was "
                            "trained on 2 [a, b]")
    same = _folder(tmp_path / "same", split_sizes=dict(train=1, val=2))  # the run's classes, fewer images than its batch: evaluated
    assert main(["eval", "--run", str(out), "--data", "folder", "--data-dir", str(same)]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 4


def test_images_too_small_for_the_models_are_refused(tmp_path, capsys):
    """Case 13: a folder of 1x1 images trained into "loss became nan"."""
    root = _folder(tmp_path / "data", size=1)
    assert main(["train", "--data", "folder", "--data-dir", str(root), "--out", str(tmp_path / "run"), *_TRAIN]) == 2
    one_line_error(capsys, "are 1x1 pixels", "too small for the models: at least 8x8",
                    "give --image-size 8 or more to upscale them")
    assert not (tmp_path / "run" / "config.json").exists() and not (tmp_path / "run" / "checkpoints").exists()
    from convattn.data import resolve_folder_data_config, survey_folder
    cfg = resolve_folder_data_config(survey_folder(root), dict(input_size=(3, 32, 32)), image_size=8)
    assert cfg.input_size == (3, 8, 8)  # upscaled on request


def test_stale_checkpoint_temporaries_are_cleaned_by_the_lock_owner_only(tmp_path):
    """Case 14: a checkpoint write killed mid-way left a .epoch_*.tmp folder behind for good."""
    out = tmp_path / "run"
    ck = out / "checkpoints"
    ck.mkdir(parents=True)
    stale = [ck / ".epoch_0003.k2x_9abc.tmp", ck / ".epoch_0012.q1w2e3r4.tmp"]
    for p in stale:
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"half")
    keep = [ck / "epoch_0002", ck / ".epoch_0003.k2x_9abc.tmp.bak", ck / "notes.tmp", ck / ".epoch_x.tmp"]
    for p in keep:
        p.mkdir()
    (ck / ".epoch_0004.file0000.tmp").write_text("a file, not our folder")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_text("keep")
    os.symlink(outside, ck / ".epoch_0005.link0000.tmp")
    with run_lock(out):
        assert all(not p.exists() for p in stale)
        assert all(p.exists() for p in keep) and (ck / ".epoch_0004.file0000.tmp").is_file()
        assert (outside / "x").read_text() == "keep" and (ck / ".epoch_0005.link0000.tmp").is_symlink()
        late = ck / ".epoch_0006.live0000.tmp"  # another writer's temporary: not cleaned without the lock
        late.mkdir()
        with pytest.raises(RunInUseError):
            with run_lock(out):
                pass
        assert late.exists()
    assert clean_stale_temporaries(ck) == [late.name]

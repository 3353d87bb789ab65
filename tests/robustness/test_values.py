"""Every CLI value is honoured exactly (zero included) or refused with one line naming the option and the range."""
import json

import pytest

from convattn.cli import build_parser, main
from convattn.tasks.classification import TrainConfig, resolve_config
from convattn.cli.tasks import train_overrides, _variant
from convattn.validate import ConfigError, check_device, check_value


def _resolved(*argv: str) -> TrainConfig:
    args = build_parser().parse_args(["train", *argv])
    return resolve_config(TrainConfig(variant=_variant(args), **train_overrides(args)))


@pytest.mark.parametrize("flag, field, value", [
    ("--weight-decay", "weight_decay", 0.0), ("--momentum", "momentum", 0.0), ("--warmup-epochs", "warmup_epochs", 0.0),
    ("--workers", "workers", 0), ("--lr", "lr", 0.0), ("--label-smoothing", "label_smoothing", 0.0),
    ("--epochs", "epochs", 3), ("--batch-size", "batch_size", 1), ("--train-size", "train_size", 1),
])
def test_zero_and_small_values_are_honoured(flag, field, value):
    cfg = _resolved(flag, str(value))
    assert getattr(cfg, field) == value
    assert type(getattr(cfg, field)) is type(value)


def test_preset_fills_only_what_was_not_given():
    cfg = _resolved("--weight-decay", "0")
    assert cfg.weight_decay == 0.0 and cfg.momentum == 0.9  # fmnist preset for the rest


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "epochs (--epochs) must be an integer >= 1, got 0"),
    (["--batch-size", "0"], "batch_size (--batch-size) must be an integer >= 1, got 0"),
    (["--train-size", "0"], "train_size (--train-size) must be an integer >= 1, got 0"),
    (["--attn-lr-mult", "0"], "attn_lr_mult must be a finite number > 0"),
    (["--warmup-epochs", "-1"], "warmup_epochs (--warmup-epochs) must be a number >= 0, got -1.0"),
    (["--warmup-epochs", "11", "--epochs", "10"], "warmup_epochs (--warmup-epochs) must be <= epochs (10), got 11.0"),
    (["--ema", "--ema-decay", "5"], "ema_decay (--ema-decay) must be a number >= 0 and <= 1, got 5.0"),
    (["--momentum", "1"], "momentum (--momentum) must be a number >= 0 and < 1, got 1.0"),
    (["--weight-decay=-1e-4"], "weight_decay (--weight-decay) must be a number >= 0, got -0.0001"),
    (["--label-smoothing", "1.5"], "label_smoothing (--label-smoothing) must be a number >= 0 and < 1, got 1.5"),
    (["--lr", "nan"], "lr (--lr) must be a number >= 0, got nan"),
    (["--workers", "-1"], "workers (--workers) must be an integer >= 0, got -1"),
    (["--image-size", "0"], "image_size (--image-size) must be an integer >= 8, got 0"),
    (["--schedule", "step", "--milestones", "5,3"], "milestones (--milestones) must be increasing epochs in 1..10"),
    (["--schedule", "step", "--milestones", "20", "--epochs", "10"], "milestones (--milestones) must be increasing"),
    (["--conv-kwargs", '{"mode": "out"}'], "conv_kwargs (--conv-kwargs) {'mode': 'out'} configure AW-convolution"),
    (["--attn-kwargs", '{"d": 16}'], "attn_kwargs (--attn-kwargs) {'d': 16} configure an attention module"),
])
def test_out_of_range_values_are_refused_in_one_line(argv, message, tmp_path, capsys):
    assert main(["train", *argv, "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written for a refused run


def test_ema_decay_without_ema_is_refused(tmp_path, capsys):
    assert main(["train", "--ema-decay", "0.9", "--out", str(tmp_path)]) == 2
    assert "--ema-decay 0.9 has no effect without --ema" in capsys.readouterr().err


def test_conv_kwargs_with_aw_and_attn_kwargs_with_attention_are_accepted():
    cfg = _resolved("--conv", "aw", "--conv-kwargs", '{"mode": "out"}', "--attn", "steam", "--attn-kwargs", '{"d": 4}')
    assert cfg.conv_kwargs == {"mode": "out"} and cfg.attn_kwargs == {"d": 4} and cfg.variant == "steam+aw"


def test_zero_weight_decay_trains_with_zero(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--weight-decay", "0", "--momentum", "0", "--warmup-epochs", "0", "--epochs", "1",
                 "--train-size", "64", "--batch-size", "32", "--quiet", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["weight_decay"], saved["momentum"], saved["warmup_epochs"]) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("argv, message", [
    (["profile", "--batch-size", "0"], "batch_size (--batch-size) must be an integer >= 1, got 0"),
    (["profile", "--input-size", "0"], "input_size (--input-size) must be an integer >= 8, got 0"),
    (["profile", "--repeats", "0"], "repeats (--repeats) must be an integer >= 1, got 0"),
    (["profile", "--variants", "none,bogus"], "Unknown attention 'bogus'"),
    (["profile", "--device", "cuda:7", "--models", "resnet20"], "device (--device) 'cuda:7'"),
    (["detect", "train", "--epochs", "0"], "epochs (--epochs) must be an integer >= 1, got 0"),
    (["detect", "train", "--batch-size", "0"], "batch_size (--batch-size) must be an integer >= 1, got 0"),
    (["detect", "train", "--min-size", "200", "--max-size", "100"], "max_size (--max-size) must be >= min_size (200)"),
    (["detect", "train", "--trainable-layers", "6"], "trainable_layers (--trainable-layers) must be an integer >= 0 and <= 5"),
    (["detect", "train", "--conv-kwargs", '{"mode": "out"}'], "conv_kwargs (--conv-kwargs) configure AW-convolution"),
    (["compare", "--seeds", "0"], "--seeds 0: a seed count must be >= 1"),
    (["compare", "--seeds", "1,1"], "seeds must be distinct integers >= 0"),
    (["compare", "--latency-batch", "0"], "latency_batch (--latency-batch) must be an integer >= 1, got 0"),
    (["compare", "--weight-decay", "-1"], "weight_decay (--weight-decay) must be a number >= 0"),
    (["compare", "--task", "detection", "--data", "cifar10"], "Unknown detection data 'cifar10'"),
    (["compare", "--task", "detection", "--label-smoothing", "0.1", "--ema"],
     "compare --task detection does not take --ema, --label-smoothing (classification options)"),
    (["compare", "--variants", "se", "--conv-kwargs", '{"mode": "out"}'],
     "configure AW-convolution, but none of the variants none, se has it"),
    (["compare", "--variants", "aw", "--attn-kwargs", '{"d": 4}'],
     "configure an attention module, but none of the variants none, aw has one"),
    (["export", "--model", "resnet20", "--num-classes", "0"], "num_classes (--num-classes) must be an integer >= 1"),
    (["export", "--model", "resnet20", "--input-size", "-3"], "input_size (--input-size) must be an integer >= 8"),
])
def test_other_commands_refuse_bad_values(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_compare_honours_zero_weight_decay(tmp_path):
    """compare passes 0 on to every run's recipe (the default study's values fill only what was not given)."""
    args = build_parser().parse_args(["compare", "--weight-decay", "0", "--warmup-epochs", "0"])
    over = train_overrides(args)
    assert over["weight_decay"] == 0.0 and over["warmup_epochs"] == 0.0


def test_compare_gives_module_options_to_the_variants_that_have_the_module(tmp_path):
    """--attn-kwargs in a study: the attention runs get them, the baseline trains without them (it was refused)."""
    from dataclasses import asdict

    from convattn.tasks.classification import CompareConfig
    from convattn.tasks.classification.study import study_recipe, arm_config
    cfg = CompareConfig(model="resnet20", variants=["steam", "aw"], train=dict(attn_kwargs={"weight_decay": False},
                                                                               epochs=1))
    base = study_recipe(cfg, ["none", "steam", "aw"])
    runs = {v: arm_config(base, v) for v in ("none", "steam", "aw")}
    assert runs["steam"].attn_kwargs == {"weight_decay": False}
    assert runs["none"].attn_kwargs == {} and runs["aw"].attn_kwargs == {}
    for rc in runs.values():  # each run's own config resolves (the baseline's was refused before)
        assert asdict(resolve_config(rc))["attn_kwargs"] == rc.attn_kwargs


def test_data_set_without_a_default_recipe_is_refused(monkeypatch):
    from convattn import data
    monkeypatch.setitem(data.DATASETS, "newset", "a data set added without a preset")
    with pytest.raises(ConfigError, match="data set 'newset' has no default recipe; choose one with --preset"):
        resolve_config(TrainConfig(data="newset"))
    assert resolve_config(TrainConfig(data="newset", preset="cifar")).preset == "cifar"


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ConfigError):
        main(["--debug", "train", "--epochs", "0", "--out", str(tmp_path)])
    with pytest.raises(ConfigError):
        main(["train", "--epochs", "0", "--out", str(tmp_path), "--debug"])


def test_check_value_types_and_bounds():
    assert check_value("x", 0, lo=0, integer=True) == 0
    assert check_value("x", None, lo=1, optional=True) is None
    for bad in (True, 1.5, "3", float("inf")):
        with pytest.raises(ConfigError, match="x \\(--x\\) must be an integer >= 1"):
            check_value("x", bad, lo=1, integer=True)
    with pytest.raises(ConfigError, match="must be a number > 0 and < 1, got 1"):
        check_value("x", 1, lo=0, hi=1, lo_open=True, hi_open=True)
    assert check_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="not a device"):
        check_device("bogus")


def test_unknown_module_option_is_one_line(tmp_path, capsys):
    assert main(["train", "--attn", "steam", "--attn-kwargs", '{"dd": 4}', "--epochs", "1", "--train-size", "32",
                 "--batch-size", "32", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unexpected keyword argument 'dd'" in err and '--attn-kwargs {"dd": 4}' in err and err.count("\n") == 1


def test_worker_errors_are_reduced_to_their_last_line(tmp_path, capsys, monkeypatch):
    import convattn.cli.tasks as tcli

    def boom(args):
        raise ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                         "last):\n  File \"x.py\", line 1\nValueError: cannot read image /data/cat/1.png: truncated")
    monkeypatch.setattr(tcli, "_run_train", boom)  # the parser binds the handler when main() builds it
    assert main(["train", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("ValueError: cannot read image /data/cat/1.png: truncated (--debug shows the traceback)")
    assert err.count("\n") == 1


def test_eval_prints_even_when_the_run_folder_is_read_only(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--train-size", "32", "--batch-size", "32", "--quiet", "--out",
                 str(out)]) == 0
    capsys.readouterr()
    import convattn.tasks.classification.evaluation as cls

    def read_only(path, text):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(cls, "atomic_write_text", read_only)
    assert main(["eval", "--run", str(out)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 2000 and "Permission denied" in res["not_written"]


@pytest.mark.parametrize("argv, message", [
    (["eval", "--run", "x", "--batch-size", "0"], "batch_size (--batch-size) must be an integer >= 1, got 0"),
    (["eval", "--run", "x", "--recalibrate-bn", "-1"], "recalibrate_bn (--recalibrate-bn) must be an integer >= 0"),
    (["detect", "predict", "--run", "x", "--score-thresh", "1.5"], "score_thresh (--score-thresh) must be a number >= 0 and <= 1"),
    (["detect", "predict", "--run", "x", "--num", "0"], "num (--num) must be an integer >= 1, got 0"),
    (["maps", "--run", "x", "--index", "a,b"], "--index takes validation-image numbers such as 0,5,9"),
    (["maps", "--run", "x", "--index=-3"], "--index numbers must be >= 0"),
])
def test_eval_maps_predict_refuse_bad_values(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_compare_detection_passes_every_given_recipe_value(monkeypatch, tmp_path):
    """compare --task detection hands the detection recipe options on (it used to keep only 4 and drop the rest)."""
    import convattn.tasks.detection.study as dc
    seen = {}
    monkeypatch.setattr(dc, "compare_detection", lambda base, *a, **k: seen.setdefault("base", base))
    assert main(["compare", "--task", "detection", "--weight-decay", "0", "--momentum", "0.8", "--epochs", "2",
                 "--amp", "bf16", "--train-size", "16", "--out", str(tmp_path)]) == 0
    base = seen["base"]
    assert (base.weight_decay, base.momentum, base.epochs, base.amp, base.train_size) == (0.0, 0.8, 2, "bf16", 16)
    assert base.workers == 0 and base.lr is None  # not given: the detection defaults and preset


def test_every_config_field_is_an_option_declared_once():
    """The train/compare and detect options are generated from TrainConfig and DetectConfig: a new field is a new
    option with its help, and a given value reaches the config as given."""
    from dataclasses import fields

    from convattn.cli.tasks import _DETECT_OWN, _TRAIN_OWN, _detect_config
    from convattn.tasks.detection.run import DetectConfig
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices
    for cmd, cls, own in (("train", TrainConfig, _TRAIN_OWN), ("compare", TrainConfig, _TRAIN_OWN),
                          ("detect", DetectConfig, _DETECT_OWN)):
        opts = {a.dest: a for a in sub[cmd]._actions}
        for f in fields(cls):
            if f.name not in own:
                assert f.name in opts and opts[f.name].help, (cmd, f.name)
    args = parser.parse_args(["train", "--no-nesterov", "--gamma", "0.5", "--stop-after", "1", "--ema", "--ema-decay",
                              "0.9", "--milestones", "2,4", "--schedule", "step"])
    over = train_overrides(args)
    assert over == {"nesterov": False, "gamma": 0.5, "stop_after": 1, "ema": True, "ema_decay": 0.9,
                    "milestones": [2, 4], "schedule": "step"}
    d = _detect_config(parser.parse_args(["detect", "train", "--momentum", "0.8", "--no-frozen-bn", "--stop-after", "2",
                                          "--attn-kwargs", '{"d": 4}']), variant="steam")
    assert (d.momentum, d.frozen_bn, d.stop_after, d.attn_kwargs, d.variant, d.weight_decay) == \
        (0.8, False, 2, {"d": 4}, "steam", 1e-4)

"""Training engine on tiny real data: outputs, exact resume, checkpoint safety, evaluation, bad input."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from convattn.cli import main
from convattn.models import create_model
from convattn.engine.checkpoint import CheckpointError
from convattn.tasks.classification import TrainConfig, evaluate_run, recalibrate_bn, train
from convattn.engine.optim import param_groups

TINY = dict(model="resnet20", train_size=256, batch_size=64, epochs=2, warmup_epochs=0.5, progress=False, threads=2)


def test_train_writes_everything(tmp_path):
    final = train(TrainConfig(variant="steam", out=str(tmp_path), **TINY))
    assert final["epochs"] == 2 and 0 <= final["val_top1"] <= 100 and final["train_images"] == 256
    for f in ("config.json", "metrics.csv", "metrics.jsonl", "final.json", "curves.png",
              "checkpoints/latest.json", "checkpoints/epoch_0002/model.safetensors", "checkpoints/epoch_0002/state.pt"):
        assert (tmp_path / f).exists(), f
    assert not (tmp_path / "checkpoints" / "epoch_0001").exists()  # keep_last=1
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["preset"] == "fmnist" and cfg["lr"] == 0.1  # preset filled in


def test_resume_is_bit_exact(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    opts = dict(variant="se+aw", conv_kwargs={"init": "small"}, attn_lr_mult=3.0, **TINY)  # 4 optimizer groups
    train(TrainConfig(out=str(a), **opts))
    part = train(TrainConfig(out=str(b), stop_after=1, **opts))
    assert part["stopped_after"] == 1 and not (b / "final.json").exists()
    with pytest.raises(CheckpointError, match="attn_lr_mult"):  # another multiplier is another run
        train(TrainConfig(out=str(b), **{**opts, "attn_lr_mult": 1.0}))
    train(TrainConfig(out=str(b), **opts))
    wa = load_file(str(a / "checkpoints/epoch_0002/model.safetensors"))
    wb = load_file(str(b / "checkpoints/epoch_0002/model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    fa, fb = json.loads((a / "final.json").read_text()), json.loads((b / "final.json").read_text())
    assert fa["val_top1"] == fb["val_top1"]


def test_resume_refuses_other_settings_and_corrupt_checkpoint(tmp_path):
    train(TrainConfig(out=str(tmp_path), stop_after=1, **TINY))
    with pytest.raises(CheckpointError, match="different settings"):
        train(TrainConfig(out=str(tmp_path), **{**TINY, "lr": 0.3}))
    w = tmp_path / "checkpoints/epoch_0001/model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])  # truncated
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        train(TrainConfig(out=str(tmp_path), **TINY))
    assert (tmp_path / "metrics.csv").exists()  # earlier results untouched


def test_eval_matches_training_and_checks_variant(tmp_path):
    final = train(TrainConfig(variant="cbam", out=str(tmp_path), **{**TINY, "epochs": 1}))
    res = evaluate_run(tmp_path, device="cpu")
    assert res["top1"] == pytest.approx(final["val_top1"]) and res["loss"] == pytest.approx(final["val_loss"])
    pbn = evaluate_run(tmp_path, device="cpu", recalibrate_bn_batches=2)  # precise BN: a separate result file
    assert pbn["bn_recalibrated_batches"] == 2 and (tmp_path / "eval_precise_bn.json").exists()
    assert json.loads((tmp_path / "eval.json").read_text())["top1"] == res["top1"]
    assert evaluate_run(tmp_path, device="cpu")["top1"] == res["top1"]  # weights on disk untouched
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["variant"] = "se"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="another model/variant"):
        evaluate_run(tmp_path, device="cpu")


def test_gct_beta_excluded_from_weight_decay():
    m = create_model("resnet20", attn="gct")
    groups = param_groups(m, 0.1, 5e-4, "declared")
    no_decay = {id(p) for p in groups[1]["params"]}
    betas = [p for n, p in m.named_parameters() if n.endswith("beta")]
    assert betas and all(id(p) in no_decay for p in betas) and len(no_decay) == len(betas)
    assert len(param_groups(m, 0.1, 5e-4, "none")) == 1
    nb = param_groups(m, 0.1, 5e-4, "norm_bias")[1]["params"]
    assert len(nb) > len(betas)


def test_cli_train_and_errors(tmp_path, capsys):
    rc = main(["train", "--model", "resnet20", "--attn", "eca", "--epochs", "1", "--train-size", "128",
               "--batch-size", "64", "--out", str(tmp_path / "r"), "--quiet", "--threads", "2"])
    assert rc == 0 and json.loads((tmp_path / "r" / "final.json").read_text())["variant"] == "eca"
    assert main(["train", "--model", "resnet9", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "Valid names" in capsys.readouterr().err
    assert main(["train", "--data", "cifar10", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert main(["train", "--batch-size", "20000", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "larger than the training set" in capsys.readouterr().err
    assert main(["eval", "--run", str(tmp_path / "nothing")]) == 2
    assert "convattn train" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tmp_path):
    """torchrun with 2 CPU processes (gloo) and the same global batch reproduces a single-process run."""
    common = ["--model", "resnet20", "--epochs", "1", "--train-size", "512", "--batch-size", "64", "--quiet",
              "--warmup-epochs", "0", "--lr", "0.02"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                    "-m", "convattn", "train", *common, "--out", str(tmp_path / "ddp")], check=True, env=env,
                   timeout=600, capture_output=True)
    subprocess.run([sys.executable, "-m", "convattn", "train", *common, "--threads", "1", "--out", str(tmp_path / "one")],
                   check=True, env=env, timeout=600, capture_output=True)
    ddp = json.loads((tmp_path / "ddp" / "final.json").read_text())
    one = json.loads((tmp_path / "one" / "final.json").read_text())
    assert ddp["world_size"] == 2 and ddp["train_images"] == one["train_images"]
    # BN statistics are per process (32 vs 64 images), the only source of difference
    assert abs(ddp["val_loss"] - one["val_loss"]) / one["val_loss"] < 0.1
    assert abs(ddp["val_top1"] - one["val_top1"]) < 5.0
    wa = load_file(str(tmp_path / "ddp/checkpoints/epoch_0001/model.safetensors"))
    wb = load_file(str(tmp_path / "one/checkpoints/epoch_0001/model.safetensors"))
    rel = (wa["fc.weight"] - wb["fc.weight"]).norm() / wb["fc.weight"].norm()
    assert rel < 0.1



@pytest.mark.slow  # default-suite budget: covered in CI's slow run
def test_ema_label_smoothing_step_schedule(tmp_path):
    final = train(TrainConfig(variant="se", out=str(tmp_path), ema=True, ema_decay=0.9, label_smoothing=0.1,
                              schedule="step", milestones=[1], wd_exclude="norm_bias", **TINY))
    assert "ema_top1" in final and (tmp_path / "checkpoints/epoch_0002/ema.safetensors").exists()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["lr"] < rows[0]["lr"]  # step after epoch 1
    res = evaluate_run(tmp_path, use_ema=True, device="cpu")
    assert res["top1"] == pytest.approx(final["ema_top1"])


@pytest.mark.slow
def test_bf16_autocast_channels_last_training(tmp_path):
    final = train(TrainConfig(variant="steam", out=str(tmp_path), amp="bf16", channels_last=True,
                              **{**TINY, "epochs": 1, "train_size": 128}))
    assert 0 <= final["val_top1"] <= 100
    res = evaluate_run(tmp_path, device="cpu")
    assert res["top1"] == pytest.approx(final["val_top1"])


def test_recalibrate_bn_is_the_plain_average_of_batch_statistics():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3, momentum=0.01))
    batches = [(torch.randn(4, 2, 6, 6) + i, None) for i in range(3)]
    w = net[0].weight.clone()
    used = recalibrate_bn(net.eval(), iter(batches + batches), 3, torch.device("cpu"))
    with torch.no_grad():
        feats = [net[0](x) for x, _ in batches]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    assert used == 3 and torch.equal(net[0].weight, w)
    torch.testing.assert_close(net[1].running_mean, mean)
    torch.testing.assert_close(net[1].running_var, var)
    assert net[1].momentum == 0.01 and not net[1].training

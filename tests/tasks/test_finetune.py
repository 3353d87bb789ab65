"""Fine-tuning a pretrained network with attention on the CLI's config (``--pretrained-path --identity
--freeze-epochs``): the identity form starts at the plain network's accuracy exactly, resume is exact across the
end of the freeze, the frozen part does not move while frozen (weights and BatchNorm statistics) and does after,
and a timm network's pretrained input convention (three channels, its mean/std) is applied to grey images."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from convattn.cli import build_parser
from convattn.cli.tasks import train_overrides
from convattn.engine.freeze import new_parameter_names
from convattn.models import create_model
from convattn.tasks.classification import TrainConfig, build_model, data_for, evaluate, resolve_config, train
from convattn.validate import ConfigError

TINY = dict(model="resnet20", train_size=256, batch_size=64, warmup_epochs=0.0, progress=False, threads=1)


def _ckpt(run, epoch):
    return load_file(str(run / f"checkpoints/epoch_{epoch:04d}/model.safetensors"))


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A plain ResNet-20 trained for one short epoch: the "pretrained" network."""
    out = tmp_path_factory.mktemp("plain")
    final = train(TrainConfig(out=str(out), epochs=1, **TINY))
    return out, final, str(out / "checkpoints/epoch_0001/model.safetensors")


@pytest.fixture(scope="module")
def finetuned(plain, tmp_path_factory):
    """SE attached in the identity form on the plain network, the pretrained part frozen for epoch 1 of 2,
    trained uninterrupted (both checkpoints kept)."""
    out = tmp_path_factory.mktemp("finetuned")
    opts = dict(variant="se", identity=True, freeze_epochs=1, pretrained_path=plain[2], epochs=2, **TINY)
    final = train(TrainConfig(out=str(out), keep_last=2, **opts))
    return out, final, opts


def test_identity_form_starts_exactly_at_the_plain_networks_accuracy(plain, finetuned):
    out, final, _ = finetuned
    plain_final = plain[1]  # evaluated by the plain run on the same 2,000 validation images
    start = json.loads((out / "start.json").read_text())
    assert start["start_val_top1"] == plain_final["val_top1"]
    assert start["start_val_loss"] == plain_final["val_loss"]  # the same logits, not only the same argmax
    assert final["start_val_top1"] == plain_final["val_top1"]
    # the data is read as the plain run read it: its normalisation (data.json of the run that wrote the weights)
    d_plain, d_ft = (json.loads((p / "data.json").read_text()) for p in (plain[0], out))
    assert d_ft["mean"] == d_plain["mean"] and d_ft["std"] == d_plain["std"] and d_ft["in_chans"] == 1


def test_frozen_part_does_not_move_while_frozen_and_moves_after(plain, finetuned):
    out, _, _ = finetuned
    pre, ep1, ep2 = load_file(plain[2]), _ckpt(out, 1), _ckpt(out, 2)
    model = create_model("resnet20", variant="se", identity=True, in_chans=1)
    new = new_parameter_names(model, loaded=pre.keys())
    frozen = [k for k, _ in model.named_parameters() if k not in new]
    stats = [k for k in pre if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(frozen) > 50 and len(stats) == 3 * 19 and "fc.weight" in new and "layer1.0.bn2.attn.scale" in new
    for k in frozen + stats:  # epoch 1: bit for bit the pretrained tensors
        assert torch.equal(ep1[k], pre[k]), k
    assert not torch.equal(ep1["fc.weight"], pre["fc.weight"])  # the new parameters trained
    assert all(ep1[k].abs().item() > 0 for k in ep1 if k.endswith("attn.scale"))
    moved = [k for k in frozen + stats if not torch.equal(ep2[k], ep1[k])]  # epoch 2: everything trains
    assert len(moved) == len(frozen) + len(stats)


def test_resume_across_the_end_of_the_freeze_is_exact(finetuned, tmp_path):
    ref, ref_final, opts = finetuned
    part = train(TrainConfig(out=str(tmp_path), stop_after=1, **opts))
    assert part["stopped_after"] == 1 and part["start_val_top1"] == ref_final["start_val_top1"]
    final = train(TrainConfig(out=str(tmp_path), **opts))  # resumes in epoch 2: unfrozen
    wa, wb = _ckpt(ref, 2), _ckpt(tmp_path, 2)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert final["val_top1"] == ref_final["val_top1"] and final["start_val_top1"] == ref_final["start_val_top1"]


def test_linear_probe_trains_only_the_head(plain, tmp_path):
    final = train(TrainConfig(out=str(tmp_path), variant="none", freeze_epochs=-1, pretrained_path=plain[2],
                              epochs=1, **TINY))
    assert final["start_val_top1"] == plain[1]["val_top1"]  # no module: the plain network itself
    pre, after = load_file(plain[2]), _ckpt(tmp_path, 1)
    changed = sorted(k for k in pre if not torch.equal(pre[k], after[k]))
    assert changed == ["fc.bias", "fc.weight"]


def test_options_are_validated_and_reach_train_and_compare():
    with pytest.raises(ConfigError, match="no --pretrained-path"):
        resolve_config(TrainConfig(freeze_epochs=2))
    with pytest.raises(ConfigError, match=r"freeze_epochs \(--freeze-epochs\) must be an integer >= -1"):
        resolve_config(TrainConfig(freeze_epochs=-2, pretrained_path="w.safetensors"))
    with pytest.raises(ConfigError, match="must be <= epochs"):
        resolve_config(TrainConfig(freeze_epochs=5, epochs=3, pretrained_path="w.safetensors"))
    with pytest.raises(ConfigError, match="identity"):
        resolve_config(TrainConfig(identity="yes"))
    assert resolve_config(TrainConfig(identity=True)).identity  # allowed without weights (a note is printed)
    for command in ("train", "compare"):
        args = build_parser().parse_args([command, "--identity", "--freeze-epochs", "-1"])
        assert {"identity": True, "freeze_epochs": -1}.items() <= train_overrides(args).items()


def test_timm_pretrained_stem_reads_grey_images_as_three_channels_with_the_models_mean_std(tmp_path, capsys):
    """timm:tf_efficientnet_lite0 with a weights file of its layout (random here; ImageNet weights come from
    scripts/convert_efficientnet_lite0.py) on the grey embedded images at 32 px."""
    import timm
    torch.manual_seed(0)
    weights = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("tf_efficientnet_lite0").state_dict().items()},
              str(weights))
    cfg = resolve_config(TrainConfig(model="timm:tf_efficientnet_lite0", pretrained_path=str(weights), image_size=32,
                                     train_size=128, batch_size=32, eval_batch_size=500, epochs=1))
    data = data_for(cfg, cfg.batch_size, cfg.eval_batch_size, workers=0)
    assert data.in_chans == 3 and data.image_size == 32
    assert data.mean == (0.5, 0.5, 0.5) and data.std == (0.5, 0.5, 0.5)
    assert "data cfg" in data.source["mean"] and data.source["channels"] == "grey images as 3 channels"
    x, _ = next(iter(data.val.epoch(0)))
    assert x.shape[1:] == (3, 32, 32) and torch.equal(x[:, 0], x[:, 2])
    # the stem keeps its 3 input channels, and the identity form evaluates as the plain network, exactly (the new
    # 10-class head is initialised from the seed, as a run does)
    torch.manual_seed(0)
    plain = build_model(cfg, data).eval()
    assert plain.conv_stem.weight.shape[1] == 3
    torch.manual_seed(0)
    with_eca = build_model(TrainConfig(**{**cfg.__dict__, "variant": "eca", "identity": True}), data).eval()
    a, b = (evaluate(m, data.val, torch.device("cpu")) for m in (plain, with_eca))
    assert a == b


def test_bn_eval_keeps_pretrained_statistics_for_the_whole_run(plain, tmp_path, capsys):
    """--bn-eval: the pretrained BatchNorm running statistics never move (also after the freeze), while the weights,
    BatchNorm scale and shift included, train after it; without it the statistics move once unfrozen."""
    pre = load_file(plain[2])
    stats = [k for k in pre if k.endswith(("running_mean", "running_var"))]
    affine = [k.replace("running_mean", "weight") for k in stats if k.endswith("running_mean")]
    for bn_eval in (True, False):
        out = tmp_path / str(bn_eval)
        train(TrainConfig(out=str(out), variant="se", identity=True, freeze_epochs=1, bn_eval=bn_eval,
                          pretrained_path=plain[2], epochs=2, keep_last=2, **TINY))
        ep2 = _ckpt(out, 2)
        moved = [k for k in stats if not torch.equal(pre[k], ep2[k])]
        assert (moved == []) if bn_eval else (len(moved) == len(stats)), (bn_eval, moved[:3])
        assert all(not torch.equal(pre[k], ep2[k]) for k in affine)  # scale trains after the freeze either way
        said = capsys.readouterr().out  # the resolved choice is printed at the start
        assert (f"BatchNorm (--bn-eval): {len(stats) // 2} pretrained BatchNorm layers keep their statistics" in said) \
            == bn_eval
    with pytest.raises(ConfigError, match=r"bn_eval \(--bn-eval\).*no --pretrained-path"):
        resolve_config(TrainConfig(bn_eval=True))


def test_a_new_head_starts_at_zero(plain, tmp_path):
    """A head for another class count (the file's has 10 classes, this model 7) is zeroed after the load: uniform
    predictions, loss ln(classes), and the printed start says so; a head the file provides is kept."""
    import math
    model = build_model(TrainConfig(pretrained_path=plain[2], pretrained_partial=True), num_classes=7, in_chans=1)
    assert model.pretrained_report.zeroed_head == ["fc.bias", "fc.weight"]
    assert not model.fc.weight.any() and not model.fc.bias.any()
    logits = model.eval()(torch.randn(3, 1, 28, 28))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 3, 6]))
    assert loss.item() == pytest.approx(math.log(7), abs=1e-6)
    kept = build_model(TrainConfig(pretrained_path=plain[2]), num_classes=10, in_chans=1)
    assert kept.pretrained_report.zeroed_head == [] and torch.equal(kept.fc.weight, load_file(plain[2])["fc.weight"])

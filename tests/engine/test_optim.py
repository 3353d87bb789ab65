"""Optimizer groups: which parameters count as attention, the learning-rate multiplier, weight-decay exclusions."""
import pytest
import torch

from convattn.models import create_model
from convattn.engine import create_scheduler
from convattn.tasks.classification import TrainConfig, resolve_config
from convattn.engine.optim import attention_parameter_names, param_groups


def _ids(params):
    return {id(p) for p in params}


@pytest.mark.parametrize("variant,expected", [
    ("none", 0),
    ("aw", 2 * 3 * 3 * 4),  # 2 AW convs per block x 9 blocks (3 per stage) x (PW1, PW2) x (weight, bias)
    ("se", 9 * 4),  # fc1/fc2 weight and bias per block
    ("steam", 4 * 8),  # 4 units x (CIA, SIA) x 4 vectors of d
])
def test_attention_parameter_names_count(variant, expected):
    m = create_model("resnet20", variant=variant)
    names = attention_parameter_names(m)
    assert len(names) == expected
    params = dict(m.named_parameters())
    assert names <= set(params)
    if variant == "aw":  # the generator only: never the kernel K of an AW convolution
        assert all(".pw1." in n or ".pw2." in n for n in names)
    if variant == "steam":
        assert sum(params[n].numel() for n in names) == 256  # 8 d per unit, d = 8, 4 units


def test_groups_partition_parameters_with_multiplier():
    m = create_model("resnet20", variant="gct+aw")
    groups = param_groups(m, 0.1, 5e-4, "declared", attn_lr_mult=10)
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == len(list(m.parameters()))  # every parameter once
    names = attention_parameter_names(m)
    attn = _ids(p for n, p in m.named_parameters() if n in names)
    betas = _ids(p for n, p in m.named_parameters() if n.endswith("beta"))
    for g in groups:
        ids = _ids(g["params"])
        if ids & attn:
            assert ids <= attn and g["lr"] == pytest.approx(1.0)
        else:
            assert not ids & attn and g["lr"] == 0.1
        assert (g["weight_decay"] == 0.0) == bool(ids & betas) and (not ids & betas or ids <= betas)
    assert groups[0]["lr"] == 0.1 and groups[0]["weight_decay"] == 5e-4  # the logged group is the backbone's
    plain = param_groups(m, 0.1, 5e-4, "declared")
    assert len(plain) == 2 and all(g["lr"] == 0.1 for g in plain)  # multiplier 1: the usual two groups


def test_sgd_step_scales_attention_updates_only():
    """Oracle: one SGD step (no momentum, no decay) moves each parameter by -lr * mult * grad."""
    torch.manual_seed(0)
    m = create_model("resnet20", variant="se+aw", conv_kwargs={"init": "small"})
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(m(x), y).backward()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    torch.optim.SGD(param_groups(m, 0.01, 0.0, "none", attn_lr_mult=7.0), lr=0.01).step()
    attn = attention_parameter_names(m)
    assert attn
    for n, p in m.named_parameters():
        rate = 0.07 if n in attn else 0.01
        torch.testing.assert_close(p.detach(), before[n] - rate * grads[n], rtol=1e-6, atol=1e-7)


def test_scheduler_keeps_the_ratio_after_warmup():
    cfg = resolve_config(TrainConfig(variant="aw", lr=0.1, epochs=4, warmup_epochs=1, attn_lr_mult=10))
    m = create_model("resnet20", variant="aw")
    opt = torch.optim.SGD(param_groups(m, cfg.lr, cfg.weight_decay, cfg.wd_exclude, cfg.attn_lr_mult), lr=cfg.lr)
    sched = create_scheduler(opt, cfg.schedule, 10, cfg.epochs, 10 * int(cfg.warmup_epochs), cfg.warmup_lr)
    for step in (10, 20, 35):
        sched.step_update(step)
        lrs = [g["lr"] for g in opt.param_groups]
        assert lrs[-1] == pytest.approx(10 * lrs[0]) and 0 < lrs[0] <= 0.1


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "10", True])
def test_bad_multiplier_is_refused(bad):
    with pytest.raises(ValueError, match="attn_lr_mult"):
        resolve_config(TrainConfig(attn_lr_mult=bad))
    with pytest.raises(ValueError, match="attn_lr_mult"):
        param_groups(create_model("resnet20"), 0.1, 0.0, attn_lr_mult=bad)
    with pytest.raises(ValueError, match="wd_exclude"):
        param_groups(create_model("resnet20"), 0.1, 0.0, wd_exclude="bias")


@pytest.mark.parametrize("warmup", [0, 4])
def test_step_schedule_drops_at_the_milestone_epochs(warmup):
    """Milestone m applies from the first update of epoch m + 1, with or without warm-up (timm's own
    MultiStepLRScheduler counts milestones from t + 1 and after the warm-up by default)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = create_scheduler(opt, "step", 5, 4, warmup, 1e-4, milestones=[1, 3], gamma=0.5)
    seen = []
    for u in range(20):
        seen.append(opt.param_groups[0]["lr"])
        sched.step_update(u + 1)
    expect = [1e-4 + u * (0.1 - 1e-4) / warmup if u < warmup else 0.1 * 0.5 ** sum(u >= 5 * m for m in (1, 3))
              for u in range(20)]
    assert seen == pytest.approx(expect, rel=1e-12)

"""Detection on the shared engine: bit-exact resume, the settings check, the schedule, kill and resume, torchrun."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("pycocotools")

from convattn.tasks.detection import make_synthetic_coco  # noqa: E402
from convattn.tasks.detection.run import DetectConfig, load_detector_run, train_detector  # noqa: E402
from convattn.engine import CheckpointError, create_scheduler, latest_checkpoint  # noqa: E402

TINY = dict(data="coco", epochs=2, batch_size=4, warmup_iters=3, milestones=[1], train_size=8, val_size=2,
            progress=False, threads=2)


def _weights(run):
    return load_file(str(run / "checkpoints" / "epoch_0002" / "model.safetensors"))


@pytest.mark.slow  # default-suite budget: covered in CI's slow run
def test_detection_resume_is_bit_exact_and_checks_settings(tmp_path):
    data = make_synthetic_coco(tmp_path / "coco", n_train=8, n_val=2)
    opts = dict(TINY, data_dir=str(data), variant="se")
    a, b = tmp_path / "a", tmp_path / "b"
    train_detector(DetectConfig(out=str(a), **opts))
    part = train_detector(DetectConfig(out=str(b), stop_after=1, **opts))
    assert part == {"stopped_after": 1, "epochs": 2} and not (b / "final.json").exists()
    with pytest.raises(CheckpointError, match=r"different settings \(lr: 0.02 -> 0.01\)"):
        train_detector(DetectConfig(out=str(b), **{**opts, "lr": 0.01}))
    with pytest.raises(CheckpointError, match="warmup_iters: 3 -> 5"):  # detection used to check only 2 settings
        train_detector(DetectConfig(out=str(b), **{**opts, "warmup_iters": 5}))
    train_detector(DetectConfig(out=str(b), **opts))
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ra, rb = (json.loads((r / "final.json").read_text()) for r in (a, b))
    assert ra["bbox"] == rb["bbox"]
    rows = json.loads((latest_checkpoint(b / "checkpoints") / "meta.json").read_text())["metrics"]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["lr"] == pytest.approx(0.002)  # after milestone 1
    # the engine's run loading (shared with classification's load_run): config, data info, the latest weights
    cfg, info, model = load_detector_run(b)
    assert cfg.variant == "se" and cfg.warmup_iters == 3 and info == json.loads((b / "data.json").read_text())
    assert all(torch.equal(v, wb[k]) for k, v in model.state_dict().items())
    with pytest.raises(FileNotFoundError, match="written by `convattn detect train`"):
        load_detector_run(tmp_path)


def test_detection_schedule_is_torchvisions_reference():
    """Linear warm-up from 0.1 % over W updates (torchvision's LinearLR, start_factor 0.001), x0.1 after each
    milestone epoch (MultiStepLR stepped per epoch), oracle written from those definitions."""
    lr, steps, warm, milestones = 0.02, 5, 7, [2, 3]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = create_scheduler(opt, "step", steps, 4, warm, lr * 1e-3, milestones=milestones, gamma=0.1)
    seen = []
    for u in range(4 * steps):
        seen.append(opt.param_groups[0]["lr"])
        sched.step_update(u + 1)
    epoch = [u // steps + 1 for u in range(4 * steps)]
    expect = [lr * (0.001 + 0.999 * u / warm) if u < warm else lr * 0.1 ** sum(e > m for m in milestones)
              for u, e in zip(range(4 * steps), epoch)]
    assert seen == pytest.approx(expect, rel=1e-12)


def _detect_cmd(out, data, extra=()):
    return [sys.executable, "-m", "convattn", "detect", "train", "--data", "coco", "--data-dir", str(data),
            "--epochs", "3", "--batch-size", "4", "--warmup-iters", "3", "--train-size", "8", "--val-size", "2",
            "--variant", "steam", "--quiet", *extra, "--out", str(out)]


@pytest.mark.slow
def test_detection_sigkill_then_resume_matches_uninterrupted(tmp_path):
    data = make_synthetic_coco(tmp_path / "coco", n_train=8, n_val=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref, run = tmp_path / "ref", tmp_path / "run"
    subprocess.run(_detect_cmd(ref, data, ["--threads", "1"]), check=True, capture_output=True, timeout=600, env=env)
    proc = subprocess.Popen(_detect_cmd(run, data, ["--threads", "1"]), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    t0 = time.time()
    while not (run / "checkpoints" / "latest.json").exists():
        assert proc.poll() is None and time.time() - t0 < 300, "no checkpoint appeared"
        time.sleep(0.05)
    time.sleep(random.Random(0).uniform(0.0, 1.0))  # in epoch 2 (or while it checkpoints)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(run / "checkpoints") is not None  # what is on disk is complete
    subprocess.run(_detect_cmd(run, data, ["--threads", "1"]), check=True, capture_output=True, timeout=600, env=env)
    wa = load_file(str(ref / "checkpoints/epoch_0003/model.safetensors"))
    wb = load_file(str(run / "checkpoints/epoch_0003/model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((ref / "eval.json").read_text())["bbox"] == json.loads((run / "eval.json").read_text())["bbox"]


@pytest.mark.slow
def test_detection_torchrun_two_processes(tmp_path):
    """torchrun with 2 CPU processes (gloo): each rank trains on half the global batch, rank 0 evaluates and writes;
    the weights stay close to a single-process run (BN statistics are per process)."""
    data = make_synthetic_coco(tmp_path / "coco", n_train=8, n_val=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = _detect_cmd(tmp_path / "ddp", data, ["--epochs", "1", "--lr", "0.002"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541", *cmd[1:]]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600, env=env)
    one = _detect_cmd(tmp_path / "one", data, ["--epochs", "1", "--lr", "0.002", "--threads", "1"])
    subprocess.run(one, check=True, capture_output=True, timeout=600, env=env)
    for r in ("ddp", "one"):
        assert set(json.loads((tmp_path / r / "final.json").read_text())["bbox"]) >= {"AP", "AP50"}
    wa = load_file(str(tmp_path / "ddp/checkpoints/epoch_0001/model.safetensors"))
    wb = load_file(str(tmp_path / "one/checkpoints/epoch_0001/model.safetensors"))
    key = "roi_heads.box_predictor.cls_score.weight"
    assert (wa[key] - wb[key]).norm() / wb[key].norm() < 0.1


def test_detection_optimizer_has_classifications_parameter_groups(tmp_path):
    """Detection builds its optimizer as classification does (convattn.engine.run.build_sgd): attention at
    attn_lr_mult x the rate, no weight decay on what modules declare (GCT's beta), frozen stages left out; the
    settings are resume-checked and reach the trained run's optimizer state."""
    from convattn.engine.optim import attention_parameter_names
    from convattn.engine.run import build_sgd
    from convattn.tasks.detection.run import build_detector, resolve
    cfg = resolve(DetectConfig(variant="gct+aw", attn_lr_mult=10.0, trainable_layers=3))
    model = build_detector(cfg, num_classes=3)
    opt = build_sgd(model, cfg)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    attn = {n for n in attention_parameter_names(model) if named[n].requires_grad}  # outside the frozen stages
    assert attn and all(by_param[id(named[n])]["lr"] == pytest.approx(10 * cfg.lr) for n in attn)
    betas = [n for n in named if n.endswith(".beta") and named[n].requires_grad]
    assert betas and all(by_param[id(named[n])]["weight_decay"] == 0.0 for n in betas)
    convs = [n for n in named if n.endswith(".weight") and named[n].ndim == 4 and n not in attn and named[n].requires_grad]
    assert convs and all(by_param[id(named[n])]["weight_decay"] == cfg.weight_decay for n in convs)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and not any(id(p) in by_param for p in frozen)  # trainable_layers=3: the stem and stage 1
    with pytest.raises(ValueError, match="attn_lr_mult must be a finite number > 0"):
        resolve(DetectConfig(attn_lr_mult=0))
    with pytest.raises(ValueError, match="wd_exclude must be one of"):
        resolve(DetectConfig(wd_exclude="bias"))
    # a run: the groups reach the checkpoint, and a changed multiplier is refused on resume
    data = make_synthetic_coco(tmp_path / "coco", n_train=4, n_val=2)
    opts = dict(TINY, data_dir=str(data), epochs=1, milestones=[], train_size=4, variant="gct", attn_lr_mult=10.0)
    train_detector(DetectConfig(out=str(tmp_path / "r"), stop_after=1, **opts))
    state = torch.load(latest_checkpoint(tmp_path / "r" / "checkpoints") / "state.pt", weights_only=True)
    lrs = sorted({g["initial_lr"] for g in state["optimizer"]["param_groups"]})
    assert lrs == pytest.approx([0.02, 0.2])  # batch 4: the preset's rate; attention 10 x
    assert {g["weight_decay"] for g in state["optimizer"]["param_groups"]} == {0.0, 1e-4}
    with pytest.raises(CheckpointError, match="attn_lr_mult: 10.0 -> 1.0"):
        train_detector(DetectConfig(out=str(tmp_path / "r"), **{**opts, "attn_lr_mult": 1.0}))

"""``convattn-timm SCRIPT ARGS``: timm's scripts see convattn's models.

The stand-in script below uses the calls timm's ``train.py`` and ``validate.py`` make on a model (create_model by
name with their keyword arguments, resolve_data_config, create_dataset / create_loader on an ImageFolder,
create_optimizer_v2 with layer decay, a scheduler, checkpoint loading), so the runner is tested the way those
scripts use it without shipping timm's scripts (which are not part of the timm package).
"""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from convattn.timm_runner import main

SCRIPT = textwrap.dedent('''
    import argparse, json, torch, timm
    from timm.data import create_dataset, create_loader, resolve_data_config
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--model", required=True)
    p.add_argument("--checkpoint", default="")
    p.add_argument("--result", required=True)
    a = p.parse_args()
    # as train.py: unset options are None and dropped by create_model
    model = timm.create_model(a.model, pretrained=bool(a.checkpoint), num_classes=2, drop_rate=0.0,
                              drop_path_rate=0.1, drop_block_rate=None, global_pool=None, bn_momentum=None,
                              bn_eps=None, scriptable=False, checkpoint_path=None,
                              **({"pretrained_cfg_overlay": {"file": a.checkpoint}} if a.checkpoint else {}))
    model.set_grad_checkpointing(True)
    cfg = resolve_data_config({}, model=model)
    ds = create_dataset("", root=a.data + "/train", split="train", is_training=True)
    loader = create_loader(ds, input_size=cfg["input_size"], batch_size=4, is_training=True, mean=cfg["mean"],
                           std=cfg["std"], interpolation=cfg["interpolation"], crop_pct=cfg["crop_pct"], num_workers=0,
                           use_prefetcher=False)  # train.py --no-prefetcher (no CUDA here)
    opt = create_optimizer_v2(model, "sgd", lr=0.01, weight_decay=1e-4, layer_decay=0.7)
    sched, _ = create_scheduler_v2(opt, "cosine", num_epochs=1)
    model.train()
    losses = []
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    sched.step(1)
    json.dump(dict(model=type(model).__name__, input_size=list(cfg["input_size"]), groups=len(opt.param_groups),
                   losses=losses), open(a.result, "w"))
''')


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        d = tmp_path / "data" / "train" / c
        d.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    return tmp_path


def test_runner_runs_a_timm_style_script_with_convattn_models(folder):
    out = folder / "res.json"
    argv_before = list(sys.argv)
    assert main([str(folder / "train.py"), str(folder / "data"), "--model", "convattn_resnet20_cbam_aw",
                 "--result", str(out)]) == 0
    assert sys.argv == argv_before  # restored
    res = json.loads(out.read_text())
    assert res["model"] == "ResNet" and res["input_size"] == [3, 32, 32]  # the model's own cfg, not 224
    assert res["groups"] > 2 and len(res["losses"]) == 2 and all(np.isfinite(res["losses"]))  # layer decay groups


def test_runner_with_local_weights_as_a_console_script(folder, tmp_path):
    import timm
    import torch
    weights = tmp_path / "w.pth"
    torch.save(timm.create_model("convattn_resnet20", num_classes=2).state_dict(), weights)
    out = folder / "res.json"
    run = subprocess.run([sys.executable, "-m", "convattn.timm_runner", str(folder / "train.py"),
                          str(folder / "data"), "--model", "convattn_resnet20", "--checkpoint", str(weights),
                          "--result", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(out.read_text())["model"] == "ResNet"


def test_runner_usage_and_missing_script(tmp_path, capsys):
    assert main([]) == 2 and "usage: convattn-timm" in capsys.readouterr().out
    assert main([str(tmp_path / "nope.py")]) == 2
    assert "nope.py not found" in capsys.readouterr().err

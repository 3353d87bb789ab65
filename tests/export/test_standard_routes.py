"""The export calls a user makes, with no convattn export mode: ``torch.onnx.export`` (dynamo exporter, the default,
and ``dynamo=False``) and ``torch.export.export``, with a dynamic batch, checked with onnxruntime at batch 1, 2, 5."""
import pytest
import torch

from convattn import create_model
from convattn.models import DEFAULT_VARIANTS

ort = pytest.importorskip("onnxruntime")

VARIANTS = list(DEFAULT_VARIANTS) + ["coord", "steam@all"]


def _model(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    m = create_model("resnet20", variant=variant, in_chans=1, conv_kwargs={"init": "small"} if "aw" in variant else None)
    return m.eval()


def _check_onnx(path, model) -> None:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    with torch.no_grad():
        for batch in (1, 2, 5):
            x = torch.randn(batch, 1, 28, 28)
            y = torch.from_numpy(sess.run(None, {name: x.numpy()})[0])
            torch.testing.assert_close(y, model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_onnx_export_torchscript_exporter(variant, tmp_path):
    model = _model(variant)
    path = tmp_path / "m.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (torch.randn(2, 1, 28, 28),), str(path), input_names=["x"], dynamo=False,
                          dynamic_axes={"x": {0: "batch"}})
    _check_onnx(path, model)


@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_export_dynamic_batch(variant):
    model = _model(variant)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        ep = torch.export.export(model, (torch.randn(2, 1, 28, 28),), dynamic_shapes=({0: batch},))
    with torch.no_grad():
        for n in (1, 3, 5):
            x = torch.randn(n, 1, 28, 28)
            torch.testing.assert_close(ep.module()(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_onnx_export_dynamo_default(variant, tmp_path):
    model = _model(variant)
    path = tmp_path / "m.onnx"
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        torch.onnx.export(model, (torch.randn(2, 1, 28, 28),), str(path), dynamic_shapes=({0: batch},))
    _check_onnx(path, model)

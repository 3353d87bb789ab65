"""ONNX (dynamic batch, optionally dynamic height/width) and TorchScript export of convattn models; ``"hf"``: a
timm / Hugging Face folder (:func:`convattn.sharing.save_pretrained`).

AWConv2d's default implementation folds the batch into convolution groups, and ONNX stores a Conv's group
count as a constant, so a folded graph only runs at the traced batch size (onnx issues 3843, 3889). Inside
``export_mode`` every AWConv2d switches to ``impl="unfold"`` (unfold + batched matmul, no batch-dependent
attribute) unless it already uses ``"taps"``, and the model's original implementations are restored afterwards.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ..layers import AttentionModule
from ..optional import require

__all__ = ["export_mode", "export_onnx", "export_torchscript", "run_onnx", "export_model", "verify_export"]


@contextlib.contextmanager
def export_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Switch the modules that need it (AWConv2d: to its batch-independent implementation) to their export-safe
    computation for the duration of the block (the contract's ``for_export``)."""
    undo = [u for m in model.modules() if isinstance(m, AttentionModule) and (u := m.for_export()) is not None]
    try:
        yield model
    finally:
        for u in reversed(undo):
            u()


def export_onnx(model: nn.Module, path: str | os.PathLike, example: torch.Tensor, dynamic_batch: bool = True,
                dynamic_hw: bool = False, opset: int = 18) -> Path:
    """Export ``model`` (eval mode) to ONNX with the TorchScript-based exporter; returns the path."""
    require("onnx", "export", "ONNX export")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    axes = {}
    if dynamic_batch:
        axes[0] = "batch"
    if dynamic_hw:
        axes.update({2: "height", 3: "width"})
    tmp = path.with_name(f".{path.name}.tmp")
    with export_mode(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(tmp), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": axes, "output": {0: "batch"} if dynamic_batch else {}} if axes else None,
                          opset_version=opset, dynamo=False)
    os.replace(tmp, path)
    return path


def run_onnx(path: str | os.PathLike, x: torch.Tensor) -> torch.Tensor:
    """Run an exported model with onnxruntime on the CPU."""
    ort = require("onnxruntime", "export", "running an ONNX model")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"input": x.detach().cpu().numpy()})
    return torch.from_numpy(y)


def verify_export(model: nn.Module, path: str | os.PathLike, fmt: str, in_chans: int, size: int,
                  batches: tuple[int, ...] = (1, 2, 5)) -> float:
    """Largest |exported - PyTorch| over random inputs at each batch size (the file is loaded once)."""
    if fmt == "onnx":
        ort = require("onnxruntime", "export", "verifying an ONNX export")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        run = lambda x: torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])  # noqa: E731
    else:
        run = torch.jit.load(str(path))
    worst = 0.0
    model = model.eval()
    with torch.no_grad():
        for batch in batches:
            x = torch.randn(batch, in_chans, size, size)
            worst = max(worst, (run(x) - model(x)).abs().max().item())
    return worst


def export_torchscript(model: nn.Module, path: str | os.PathLike, example: torch.Tensor) -> Path:
    """Trace ``model`` to TorchScript (export-safe AW implementation) and save it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with export_mode(model.eval()), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
    tmp = path.with_name(f".{path.name}.tmp")
    traced.save(str(tmp))
    os.replace(tmp, path)
    return path


def export_model(model: nn.Module, out_dir: str | os.PathLike, name: str, example: torch.Tensor,
                 formats: tuple[str, ...] = ("onnx", "torchscript"), dynamic_hw: bool = False) -> dict[str, Path]:
    out = {}
    if "onnx" in formats:
        out["onnx"] = export_onnx(model, Path(out_dir) / f"{name}.onnx", example, dynamic_hw=dynamic_hw)
    if "torchscript" in formats:
        out["torchscript"] = export_torchscript(model, Path(out_dir) / f"{name}.pt", example)
    if "hf" in formats:  # a timm / Hugging Face folder, checked by reloading it (convattn.sharing)
        from ..sharing import save_pretrained
        out["hf"] = save_pretrained(model, Path(out_dir) / f"{name}_hf", check_size=example.shape[-1]).path
    return out

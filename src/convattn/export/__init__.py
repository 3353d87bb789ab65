"""Export to ONNX and TorchScript, with AWConv2d switched to a batch-size-independent implementation."""
from .exporter import export_model, export_mode, export_onnx, export_torchscript, run_onnx, verify_export

__all__ = ["export_model", "export_mode", "export_onnx", "export_torchscript", "run_onnx", "verify_export"]

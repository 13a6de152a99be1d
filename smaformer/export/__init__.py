"""Export: checkpoints to ONNX / TorchScript / safetensors (verified against eager), the metadata contract
exported files carry, and the runtimes (ONNX Runtime, OpenVINO) that run them."""
from smaformer.export.exporters import (
    TOLERANCE,
    ExportError,
    ExportResult,
    export_onnx,
    export_safetensors,
    export_torchscript,
)
from smaformer.export.from_checkpoint import export_checkpoint
from smaformer.export.metadata import ExportMetadata, read_onnx_metadata

__all__ = ["TOLERANCE", "ExportError", "ExportMetadata", "ExportResult", "export_checkpoint", "export_onnx",
           "export_safetensors", "export_torchscript", "read_onnx_metadata"]

"""``export_checkpoint``: one checkpoint file to any export format, the outputs checked before any work."""
from __future__ import annotations

from pathlib import Path

from smaformer.checkpoint import load_checkpoint, sidecar_path
from smaformer.errors import InputError
from smaformer.export.exporters import ExportResult, export_onnx, export_safetensors, export_torchscript
from smaformer.export.half import export_onnx_fp16
from smaformer.export.openvino import Quantizer, export_openvino
from smaformer.io_utils import check_output


def export_checkpoint(ckpt_path: str | Path, out: str | Path, fmt: str,
                      onnx_exporters: tuple[str, ...] = ("dynamo", "torchscript"), *,
                      quantize: Quantizer | None = None, fp16: bool = False) -> ExportResult:
    """Load a checkpoint (.pt or safetensors pair) and export it to ``fmt``. ``quantize`` (e.g.
    ``infer.quantize.Int8Quantizer``: NNCF INT8 behind a Dice guard) applies to ``openvino``, ``fp16`` to
    ``onnx``. The outputs (with the sidecar a safetensors export and the weights an OpenVINO IR writes beside
    them) are checked first: writable, and never the checkpoint or its sidecar."""
    if quantize is not None and fmt != "openvino":
        raise InputError(out, "--int8 applies to --format openvino")
    if fp16 and fmt != "onnx":
        raise InputError(out, "--fp16 applies to --format onnx")
    src = Path(ckpt_path)
    inputs = [src, src.with_suffix(".safetensors"), sidecar_path(src)] if src.suffix in (".safetensors", ".json") \
        else [src]
    siblings = {"safetensors": [sidecar_path(out)], "openvino": [Path(out).with_suffix(".bin")]}.get(fmt, [])
    inputs += list(quantize.inputs) if quantize is not None else []      # e.g. the INT8 calibration folder
    for target in [out, *siblings]:
        check_output(target, inputs=inputs)
    model, info = load_checkpoint(ckpt_path)
    if fmt == "openvino":
        return export_openvino(model, info, out, quantize, onnx_exporters)
    if fmt == "onnx" and fp16:
        return export_onnx_fp16(model, info, out, onnx_exporters)
    if fmt == "onnx":
        return export_onnx(model, info, out, onnx_exporters)
    if fmt == "torchscript":
        return export_torchscript(model, info, out)
    if fmt == "safetensors":
        return export_safetensors(model, {**info, "state_dict": model.state_dict()}, out)  # no second read
    raise InputError(out, f"unknown export format {fmt!r}; use onnx, openvino, torchscript or safetensors")

"""OpenVINO IR export (``model.xml`` + ``model.bin``), fp32 or INT8, checked like every other export.

The network goes through our verified ONNX export first (so the same dims are dynamic or pinned), then
``openvino.convert_model`` turns it into an IR saved with fp32 weights. The metadata block travels in
the IR's ``rt_info`` under the key ``smaformer`` (the JSON the ONNX export stores). fp32: the IR must
match eager within ``TOLERANCE``. INT8: a ``quantize`` hook (``infer.quantize.Int8Quantizer``: NNCF
post-training quantization on slices prepared as ``predict`` prepares them, then a Dice guard on held-back
cases) returns the quantized model or raises, and so decides whether the file is written at all. The hook
lives in ``infer`` because it runs inference; export never imports ``infer``.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Protocol

import numpy as np
import torch.nn as nn

from smaformer.errors import InputError
from smaformer.export.exporters import ExportResult, _diff, _example, _require, _verify, export_onnx
from smaformer.export.metadata import META_KEY, ExportMetadata, read_onnx_metadata
from smaformer.io_utils import atomic_files


class Quantizer(Protocol):
    """A quantization hook (``infer.quantize.Int8Quantizer``): ``inputs`` are the folders it reads (no output
    may land there); ``prepare(model, info)`` loads and checks its data before any export work; the call takes
    (fp32 IR model, metadata, output path) and returns (quantized model, report lines), raising to refuse."""

    inputs: list[Path]

    def prepare(self, model: nn.Module, info: dict) -> None: ...

    def __call__(self, ov_model, meta: ExportMetadata, path: Path) -> tuple[object, list[str]]: ...

#: exported files run in fp32: OpenVINO would otherwise pick bf16 on CPUs with AMX (labels change)
F32 = {"INFERENCE_PRECISION_HINT": "f32"}


def _openvino():
    try:
        import openvino as ov
    except ImportError:
        raise InputError(None, "OpenVINO export and runtime need the openvino package "
                               "(pip install -e '.[export]')") from None
    return ov


def compile_ir(model, device: str = "CPU"):
    """A compiled OpenVINO model (from an ``ov.Model`` or a path) as ``f(np.ndarray) -> np.ndarray``."""
    ov = _openvino()
    compiled = ov.Core().compile_model(model if not isinstance(model, Path) else str(model), device, F32)
    out = compiled.output(0)
    return lambda a: compiled(np.ascontiguousarray(a, dtype=np.float32))[out]


def read_ir_metadata(path: Path) -> ExportMetadata:
    """The ``smaformer`` block of an IR's ``rt_info``."""
    ov = _openvino()
    try:
        model = ov.Core().read_model(str(path))
    except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses for any unreadable file
        raise InputError(path, f"not a readable OpenVINO IR (with its .bin beside it): {str(e).splitlines()[0]}") \
            from None
    if not model.has_rt_info([META_KEY]):
        raise InputError(path, "OpenVINO IR has no smaformer metadata (preprocessing); export it with "
                               "`smaformer export --format openvino`")
    return ExportMetadata.from_json(model.get_rt_info([META_KEY]).astype(str), path)


def save_ir(ov_model, path: Path, meta: ExportMetadata) -> None:
    """Write ``path`` (.xml) and its .bin with the metadata; both appear only when both were written."""
    ov = _openvino()
    ov_model.set_rt_info(meta.to_json(), [META_KEY])
    with atomic_files(path.with_suffix(".bin"), path) as folder:
        ov.save_model(ov_model, str(folder / path.name), compress_to_fp16=False)


def export_openvino(model: nn.Module, info: dict, path: str | Path, quantize: Quantizer | None = None,
                    onnx_exporters: tuple[str, ...] = ("dynamo", "torchscript")) -> ExportResult:
    """IR export: fp32 (parity with eager enforced), or quantized by ``quantize`` (``infer.quantize.Int8Quantizer``:
    its report goes into the result's notes, and a failing guard raises before anything is written)."""
    ov = _openvino()
    path = Path(path)
    if path.suffix != ".xml":
        raise InputError(path, "an OpenVINO IR is named *.xml (its weights go to the .bin beside it)")
    if quantize is not None:
        quantize.prepare(model, info)            # its data loaded and checked before any export work
    with tempfile.TemporaryDirectory(prefix="smaformer-ir-") as d:
        onnx_res = export_onnx(model, info, Path(d) / "model.onnx", onnx_exporters)
        meta = read_onnx_metadata(onnx_res.path)
        ov_model = ov.convert_model(str(onnx_res.path))
    result = ExportResult(path, "openvino", f"{onnx_res.exporter} -> openvino.convert_model")
    x = _example(info)
    run = compile_ir(ov_model)
    _verify(result, lambda t: run(t.numpy()), model, x, _require(model, "onnx"))
    if quantize is not None:
        ov_model, report = quantize(ov_model, meta, path)
        result.fmt = "openvino INT8"
        result.exporter += " -> nncf.quantize"
        result.notes += ["the max |eager - export| lines are the fp32 IR's, before quantization", *report]
        d = _diff(lambda t: compile_ir(ov_model)(t.numpy()), model, x)
        result.notes.append(f"INT8 max |eager - export| at {'x'.join(map(str, x.shape))}: {d:.3g} "
                            "(not held to the fp32 tolerance; the Dice guard decides)")
    save_ir(ov_model, path, meta)
    return result

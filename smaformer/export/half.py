"""FP16 ONNX for GPUs (TensorRT, ONNX Runtime CUDA): the verified fp32 export converted to half precision.

The converter is ONNX Runtime's own ``onnxruntime.transformers.float16`` (the maintained fork of
onnxconverter-common's; the original breaks on the Identity nodes our exporter leaves before LayerNorm).
Inputs and outputs stay float32, so runners and ``predict`` do not change; LayerNormalization, Softmax and
the reductions of a decomposed norm stay fp32 (casts around them), besides the converter's own block list.

Parity is checked on CPU with ONNX Runtime on the same inputs as the fp32 check: max |eager - fp16| must stay
within ``FP16_RTOL`` of the largest eager logit (at least 1), and the argmax labels must agree on at least
``FP16_LABEL_AGREEMENT`` of the voxels.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from smaformer.export.exporters import ExportError, ExportResult, _example, _variants, export_onnx
from smaformer.io_utils import atomic_path

FP16_RTOL = 2e-2
FP16_LABEL_AGREEMENT = 0.999
KEEP_FP32 = ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt")


def _parity(run, model: nn.Module, x: torch.Tensor) -> tuple[float, float, float]:
    """``(max abs diff, allowed diff, share of equal labels)`` of the fp16 graph against eager fp32."""
    with torch.no_grad():
        ref = model(x).float().numpy()
    got = np.asarray(run(x.numpy()), dtype=np.float32)
    if got.shape != ref.shape:
        return float("inf"), 0.0, 0.0
    return (float(np.abs(got - ref).max()), FP16_RTOL * max(1.0, float(np.abs(ref).max())),
            float((got.argmax(1) == ref.argmax(1)).mean()))


def export_onnx_fp16(model: nn.Module, info: dict, path: str | Path,
                     exporters: tuple[str, ...] = ("dynamo", "torchscript")) -> ExportResult:
    """A half-precision ONNX file with float32 inputs/outputs, its dims and metadata those of the fp32 export."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.transformers import float16

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="smaformer-fp16-") as d:
        base = export_onnx(model, info, Path(d) / "model.onnx", exporters)
        graph = onnx.load(str(base.path))
    half = float16.convert_float_to_float16(graph, keep_io_types=True,
                                            op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *KEEP_FP32])
    result = ExportResult(path, "onnx fp16", f"{base.exporter} -> onnxruntime.transformers.float16",
                          dims=base.dims, notes=list(base.notes),
                          tolerance=f"<= {FP16_RTOL:g} x max(1, max |eager logit|) at each shape")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3   # no warnings about fp16 nodes the CPU provider cannot constant-fold
    sess = ort.InferenceSession(half.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    run = lambda a: sess.run(None, {name: a})[0]  # noqa: E731
    x = _example(info)
    probes = {"example": x}
    if base.dims.get("batch") is None:
        probes["batch"] = _variants(x, False)["batch"]
    if base.dims.get("height") is None:
        probes["height/width"] = _variants(x, True)["height/width"]
    for t in probes.values():
        shape = "x".join(str(s) for s in t.shape)
        d, allowed, agree = _parity(run, model, t)
        result.checks[shape] = d
        result.notes.append(f"labels agree on {100 * agree:.3f}% of the voxels at {shape}")
        if not d <= allowed or agree < FP16_LABEL_AGREEMENT:
            raise ExportError(f"{path}: fp16 parity failed at {shape}: max abs diff {d:.3g} (allowed {allowed:.3g}), "
                              f"labels agree on {100 * agree:.3f}% (need {100 * FP16_LABEL_AGREEMENT:g}%)")
    result.notes.append(f"labels must agree on >= {100 * FP16_LABEL_AGREEMENT:g}% of the voxels")
    with atomic_path(path) as tmp:
        onnx.save(half, str(tmp))
    return result

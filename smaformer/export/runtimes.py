"""Running an exported file (ONNX under ONNX Runtime or OpenVINO, an OpenVINO IR under OpenVINO) behind the
same ``model(x) -> logits`` call that ``infer_volume`` uses for torch models."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from smaformer.errors import InputError
from smaformer.export.metadata import read_metadata, read_onnx_metadata


class FixedBatch:
    """Run a callable that only accepts batch ``n``: split, zero-pad the last chunk, trim the result."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], n: int | None):
        self.run, self.n = run, n

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().float().cpu().numpy()
        if not self.n or arr.shape[0] == self.n:
            return torch.from_numpy(np.asarray(self.run(arr)))
        outs = []
        for s in range(0, arr.shape[0], self.n):
            chunk = arr[s:s + self.n]
            pad = self.n - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            outs.append(np.asarray(self.run(chunk))[:self.n - pad])
        return torch.from_numpy(np.concatenate(outs))


def onnxruntime_runner(path: Path, device: str | torch.device = "cpu") -> tuple[Callable, dict]:
    """``(runner, info)`` for an ONNX file under ONNX Runtime (CUDA provider when asked and present)."""
    import onnxruntime as ort

    meta = read_onnx_metadata(path)
    device = torch.device(device)
    providers: list = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    sess = ort.InferenceSession(str(path), providers=providers)
    name = sess.get_inputs()[0].name
    return FixedBatch(lambda a: sess.run(None, {name: a})[0], meta.static_batch), meta.info


def openvino_runner(path: Path, device: str | torch.device = "cpu") -> tuple[Callable, dict]:
    """``(runner, info)`` for an ONNX file or an OpenVINO IR (``.xml``, fp32 or INT8) under OpenVINO."""
    try:
        import openvino as ov
    except ImportError:
        raise InputError(path, "--engine openvino needs the openvino package (pip install openvino)") from None
    meta = read_metadata(path)
    device = torch.device(device)
    target = "CPU" if device.type != "cuda" else "GPU" if device.index is None else f"GPU.{device.index}"
    # exported files run in fp32: OpenVINO would otherwise pick bf16 on CPUs with AMX (labels change)
    compiled = ov.Core().compile_model(str(path), target, {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled.output(0)
    return FixedBatch(lambda a: compiled(a)[out], meta.static_batch), meta.info


RUNTIMES = {"onnxruntime": onnxruntime_runner, "openvino": openvino_runner}

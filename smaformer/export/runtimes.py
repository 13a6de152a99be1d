"""Running an exported file (ONNX under ONNX Runtime or OpenVINO, an OpenVINO IR under OpenVINO) behind the
same ``model(x) -> logits`` call that ``infer_volume`` uses for torch models."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from smaformer.errors import InputError
from smaformer.export.metadata import ExportMetadata, read_onnx_metadata
from smaformer.export.openvino import compile_ir, read_ir_metadata


class FixedBatch:
    """Run a callable that only accepts batch ``n``: split, zero-pad the last chunk, trim the result."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], n: int | None, engine: str = "",
                 device: torch.device | None = None):
        self.run, self.n = run, n
        self.engine, self.device = engine, device or torch.device("cpu")    # where the runtime computes

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


def read_metadata(path: Path) -> ExportMetadata:
    """The ``smaformer`` block of an exported file: an ONNX file or an OpenVINO IR (``.xml``)."""
    return read_ir_metadata(Path(path)) if Path(path).suffix == ".xml" else read_onnx_metadata(Path(path))


def onnxruntime_runner(path: Path, device: str | torch.device = "cpu") -> tuple[Callable, dict]:
    """``(runner, info)`` for an ONNX file under ONNX Runtime: the CUDA provider for a CUDA device, the CPU
    provider for the CPU. No silent fallback: a CUDA device without a working CUDA provider (the
    ``onnxruntime`` CPU wheel, or CUDA libraries that fail to load) is refused in one line."""
    import onnxruntime as ort

    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise InputError(path, f"--engine onnxruntime runs on cpu or cuda, not {device.type}; use --device cpu")
    available = ort.get_available_providers()
    if device.type == "cuda" and "CUDAExecutionProvider" not in available:
        raise InputError(path, f"--device cuda: this ONNX Runtime has no CUDA provider (it has "
                               f"{', '.join(available)}); install onnxruntime-gpu or use --device cpu")
    meta = read_onnx_metadata(path)
    providers: list = ["CPUExecutionProvider"]
    if device.type == "cuda":
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0})]
    sess = ort.InferenceSession(str(path), providers=providers)
    if device.type == "cuda" and "CUDAExecutionProvider" not in sess.get_providers():
        raise InputError(path, f"--device cuda: ONNX Runtime could not start its CUDA provider (the session "
                               f"has {', '.join(sess.get_providers())}); check the CUDA/cuDNN libraries "
                               "onnxruntime-gpu needs, or use --device cpu")
    name = sess.get_inputs()[0].name
    return FixedBatch(lambda a: sess.run(None, {name: a})[0], meta.static_batch, "onnxruntime", device), meta.info


def openvino_runner(path: Path, device: str | torch.device = "cpu") -> tuple[Callable, dict]:
    """``(runner, info)`` for an ONNX file or an OpenVINO IR (``.xml``, fp32 or INT8) under OpenVINO, on the
    CPU: a CUDA (or MPS) device is refused in one line, since OpenVINO's "GPU" is an Intel GPU, not the CUDA
    device that was asked for."""
    device = torch.device(device)
    if device.type != "cpu":
        raise InputError(path, f"--engine openvino runs on the CPU here, not on {device}: OpenVINO's GPU is an "
                               "Intel GPU, not a CUDA device; use --device cpu, or --engine onnxruntime/torch "
                               "for CUDA")
    meta = read_metadata(path)
    return FixedBatch(compile_ir(Path(path)), meta.static_batch, "openvino"), meta.info   # fp32, as every IR


RUNTIMES = {"onnxruntime": onnxruntime_runner, "openvino": openvino_runner}

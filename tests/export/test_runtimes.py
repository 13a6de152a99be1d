"""No silent runtime fallback: ONNX Runtime without a working CUDA provider and OpenVINO asked for a CUDA
device are refused in one line, before any work, instead of running on the CPU or an Intel GPU."""
import pytest
import torch

import smaformer.export.runtimes as rt
from smaformer.errors import InputError


def _one_line(e: pytest.ExceptionInfo, *words: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg and "m.onnx" in msg and all(w in msg for w in words), msg


def test_onnxruntime_without_cuda_provider_is_refused(tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: pytest.fail("no session may start"))
    for device in ("cuda", "cuda:1"):
        with pytest.raises(InputError) as e:
            rt.onnxruntime_runner(tmp_path / "m.onnx", torch.device(device))
        _one_line(e, "no CUDA provider", "onnxruntime-gpu", "--device cpu")
    with pytest.raises(InputError) as e:
        rt.onnxruntime_runner(tmp_path / "m.onnx", torch.device("mps"))
    _one_line(e, "not mps")


def test_onnxruntime_cuda_provider_that_fails_to_start_is_refused(tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    asked = {}

    class Session:   # what ONNX Runtime does when CUDA libraries fail to load: a CPU session and a log line
        def __init__(self, path, providers):
            asked["providers"] = providers

        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", Session)
    monkeypatch.setattr(rt, "read_onnx_metadata", lambda p: None)
    with pytest.raises(InputError) as e:
        rt.onnxruntime_runner(tmp_path / "m.onnx", torch.device("cuda:1"))
    _one_line(e, "could not start its CUDA provider")
    assert asked["providers"] == [("CUDAExecutionProvider", {"device_id": 1})]    # no CPU provider to fall to


def test_openvino_follows_the_device_asked(tmp_path, monkeypatch):
    ov = pytest.importorskip("openvino")
    monkeypatch.setattr(ov.Core, "compile_model", lambda *a, **k: pytest.fail("nothing may be compiled"))
    for device in ("cuda", "cuda:0", "mps"):
        with pytest.raises(InputError) as e:
            rt.openvino_runner(tmp_path / "m.onnx", torch.device(device))
        _one_line(e, "Intel GPU", "--device cpu")


def test_auto_device_runs_exported_members_where_their_runtime_can(monkeypatch):
    """--device auto on a CUDA machine: OpenVINO runs on the CPU, ONNX Runtime on CUDA only with its CUDA
    provider; an explicit device is left to the runner, which refuses what it cannot do."""
    import onnxruntime as ort

    from smaformer.infer.members import exported_device

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert exported_device("openvino", cuda, auto=True) == cpu
    assert exported_device("openvino", cuda, auto=False) == cuda
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert exported_device("onnxruntime", cuda, auto=True) == cpu
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert exported_device("onnxruntime", cuda, auto=True) == cuda
    assert exported_device("onnxruntime", cpu, auto=True) == cpu

"""Device and precision: one meaning of "auto", explicit impossible choices refused with the fix; deterministic
CUDA gets its cuBLAS workspace setting or a one-line refusal."""
import os

import pytest
import torch

import smaformer.runtime as runtime
from smaformer.errors import InputError
from smaformer.runtime import (
    autocast,
    cpu_bf16_units,
    cpu_description,
    enable_deterministic,
    resolve_device,
    resolve_precision,
)


def test_auto_device_is_the_best_present():
    want = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto").type == want
    assert resolve_device(None).type == want
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_absent_device_is_an_input_error():
    with pytest.raises(InputError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu0")


def test_precision_rules():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu, training=True) == "bf16"
    assert resolve_precision("fp16", cpu) == "fp16"           # inference autocast exists on CPU
    with pytest.raises(InputError, match="fp16 trains only on CUDA"):
        resolve_precision("fp16", cpu, training=True)
    with pytest.raises(InputError, match="unknown precision"):
        resolve_precision("fp8", cpu)


def test_autocast_context():
    x = torch.randn(4, 4)
    with autocast("bf16", "cpu"):
        assert (x @ x).dtype == torch.bfloat16
    with autocast("fp32", "cpu"):
        assert (x @ x).dtype == torch.float32


def test_cpu_bf16_units_and_auto_stays_fp32_on_cpu(monkeypatch):
    flags = " ".join(line for line in runtime._cpuinfo_lines() if line.startswith("flags")).split()
    want = next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), None)
    if flags:
        assert cpu_bf16_units() == want
    assert cpu_bf16_units() in (None, "amx_bf16", "avx512_bf16")
    assert "bf16 units" in cpu_description() and "torch capability" in cpu_description()
    monkeypatch.setattr(runtime, "cpu_bf16_units", lambda: "amx_bf16")
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"   # bf16 failed the label check (DEPLOY.md)


@pytest.fixture
def restore_determinism():
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.benchmark = before[1]


def test_deterministic_cuda_sets_the_cublas_workspace_before_cuda_starts(monkeypatch, restore_determinism):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    enable_deterministic(torch.device("cpu"))               # the CPU needs no cuBLAS setting
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ and torch.are_deterministic_algorithms_enabled()
    enable_deterministic(torch.device("cuda", 1))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and not torch.backends.cudnn.benchmark
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")    # the user's valid choice is kept
    enable_deterministic(torch.device("cuda"))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_deterministic_cuda_after_cuda_started_is_refused_in_one_line(monkeypatch, restore_determinism):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(InputError) as e:      # too late to set: cuBLAS has read the variable already
        enable_deterministic(torch.device("cuda"))
    assert "\n" not in str(e.value) and "CUBLAS_WORKSPACE_CONFIG=:4096:8" in str(e.value) and ":0:0" in str(e.value)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":0:0"

"""Device and precision: one meaning of "auto", explicit impossible choices refused with the fix."""
import pytest
import torch

import smaformer.runtime as runtime
from smaformer.errors import InputError
from smaformer.runtime import autocast, cpu_bf16_units, cpu_description, resolve_device, resolve_precision


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

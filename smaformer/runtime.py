"""Device and precision, resolved once for every verb (train, evaluate, predict, demo).

``auto`` means one thing everywhere: the device is CUDA, else Apple MPS, else the CPU; the precision is
bf16 on CUDA devices that support it, fp16 on older CUDA devices, and fp32 on every other device. On
CPUs this includes those with bf16 matrix units (``cpu_bf16_units``): bf16 would be faster there, but it
failed the label check of docs/DEPLOY.md twice (ACDC labels differed from fp32 in 0.87% of foreground voxels
at Dice 35.7, 0.51% at Dice 44.5; the bar is 0.1%), so bf16 on CPU is an explicit ``--precision bf16``. An
explicit choice the machine cannot honour is an ``InputError`` with the fix, never a silent fallback.
"""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import torch

from smaformer.errors import InputError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None -> cuda, then mps, then cpu. ``cuda:1`` and the like pass through when present."""
    if isinstance(name, torch.device):
        return name
    name = name or "auto"
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(None, f"unknown device {name!r}; use one of {', '.join(DEVICES)} (or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(None, f"device {name}: no CUDA device is available (use cpu or auto)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(None, f"device {name}: MPS is not available on this machine (use cpu or auto)")
    return device


CUBLAS_WORKSPACE = ":4096:8"     # one of the two settings cuBLAS documents as deterministic (":16:8" is the other)


def enable_deterministic(device: torch.device) -> None:
    """``torch.use_deterministic_algorithms(True)``, and on CUDA the ``CUBLAS_WORKSPACE_CONFIG`` that
    deterministic cuBLAS needs (else torch raises at the first cuBLAS call). cuBLAS reads the variable when
    CUDA creates its handles, so it is set here only while CUDA is not initialised yet; after that an unset
    or other value is refused in one line, with the fix."""
    if device.type == "cuda" and os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (":4096:8", ":16:8"):
        if torch.cuda.is_initialized():
            raise InputError(None, "train.deterministic on CUDA needs CUBLAS_WORKSPACE_CONFIG=:4096:8 (or :16:8) "
                                   "before CUDA starts; it is "
                                   f"{os.environ.get('CUBLAS_WORKSPACE_CONFIG', 'unset')}: export it and rerun")
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


@functools.lru_cache(maxsize=1)
def _cpuinfo_lines() -> tuple[str, ...]:
    try:
        return tuple(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines())
    except OSError:
        return ()


@functools.lru_cache(maxsize=1)
def cpu_bf16_units() -> str | None:
    """The bf16 matrix instructions of this CPU, ``"amx_bf16"`` or ``"avx512_bf16"``, or None.

    Read from the /proc/cpuinfo flags (Linux), else from torch's own CPU probe. Without them torch emulates
    bf16 matmuls, which is slower than fp32."""
    lines = _cpuinfo_lines()
    flags = {f for line in lines if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    if not lines:  # no cpuinfo (macOS, Windows): ask torch (private probes, absent on some builds)
        flags = {name for name, probe in (("amx_bf16", "_is_amx_tile_supported"),
                                          ("avx512_bf16", "_is_avx512_bf16_supported"))
                 if getattr(torch.cpu, probe, lambda: False)()}
    return next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), None)


def cpu_description() -> str:
    """One line for benchmark records: CPU model, torch's vector capability and the bf16 units found."""
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo_lines() if line.startswith("model name")),
                 "unknown CPU")
    return (f"{model}; torch capability {torch.backends.cpu.get_cpu_capability()}; "
            f"bf16 units {cpu_bf16_units() or 'none'}")


def resolve_precision(name: str, device: torch.device, *, training: bool = False) -> str:
    """``fp32``/``fp16``/``bf16`` for ``name`` on ``device``; ``auto`` as the module docstring says.

    fp16 training needs CUDA (its loss scaler is CUDA-only), so it is refused elsewhere.
    """
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if name not in PRECISIONS:
        raise InputError(None, f"unknown precision {name!r}; use auto, {', '.join(PRECISIONS)}")
    if training and name == "fp16" and device.type != "cuda":
        raise InputError(None, "precision fp16 trains only on CUDA; use fp32 or bf16 on this device")
    return name


def autocast(precision: str, device: torch.device | str):
    """``torch.autocast`` for bf16/fp16, a no-op context for fp32."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)

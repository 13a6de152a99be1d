"""Device and precision, resolved once for every verb (train, evaluate, predict, demo).

``auto`` means one thing everywhere: the device is CUDA, else Apple MPS, else the CPU; the precision is
bf16 on CUDA devices that support it, fp16 on older CUDA devices, and fp32 on every other device. An
explicit choice the machine cannot honour is an ``InputError`` with the fix, never a silent fallback.
"""
from __future__ import annotations

import contextlib

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

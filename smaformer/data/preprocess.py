"""Deterministic preprocessing shared by training, evaluation and prediction.

The spec lives in every checkpoint (``checkpoint.default_preprocessing``), so ``predict`` applies exactly
what training used:

- ``intensity``: ``{"mode": "window", "lo": -125, "hi": 275}`` (clip, then scale to [0, 1]; the Synapse
  convention), ``{"mode": "zscore"}``, ``{"mode": "minmax", "per_slice": False}`` or ``{"mode": "none"}``.
- ``channel_mode``: ``"repeat"`` (1 → ``in_chans`` copies), ``"pseudo_hdr"`` (SMAFormer's
  ``[x, clamp(1.2x, 0, 1), avgpool3x3(x)]``) or ``"none"`` (the image already has ``in_chans`` channels).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

CHANNEL_MODES = ("repeat", "pseudo_hdr", "none")


def normalize_intensity(arr: np.ndarray, spec: dict) -> np.ndarray:
    """Apply an intensity spec to a stack of slices, (D,H,W) or (D,C,H,W); returns float32.

    Training, evaluation and prediction all call this on slice stacks (a 2D image is a stack of one), so
    ``per_slice: true`` (zscore or minmax) means the same everywhere: statistics of each axis-0 entry, over
    all its channels and pixels."""
    x = np.asarray(arr, dtype=np.float32)
    mode = spec.get("mode", "none")
    if mode == "none":
        return x
    if mode == "window":
        lo, hi = float(spec["lo"]), float(spec["hi"])
        return (np.clip(x, lo, hi) - lo) / (hi - lo)
    if mode == "fixed":   # from fix_volume_statistics
        return (x - spec["offset"]) / spec["divisor"]
    if mode not in ("zscore", "minmax"):
        raise ValueError(f"unknown intensity mode {mode!r}; use window, zscore, minmax or none")
    offset, divisor = _offset_divisor(x, mode, tuple(range(1, x.ndim)) if spec.get("per_slice") else None)
    return (x - offset) / divisor


def fix_volume_statistics(arr: np.ndarray, spec: dict) -> dict:
    """A spec that gives, batch by batch, what ``normalize_intensity`` gives on the whole stack ``arr``.

    Whole-stack statistics (zscore or minmax without ``per_slice``) are computed once here and become a
    fixed ``(x - offset) / divisor``; every other spec already works on any sub-stack and is returned as is.
    This is what lets volume inference normalise one batch at a time (the statistics take one float32 pass).
    """
    mode = spec.get("mode", "none")
    if mode not in ("zscore", "minmax") or spec.get("per_slice"):
        return spec
    offset, divisor = _offset_divisor(np.asarray(arr, dtype=np.float32), mode, None)
    return {"mode": "fixed", "offset": np.float32(offset), "divisor": np.float32(divisor)}


def _offset_divisor(x: np.ndarray, mode: str, axes: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """zscore: (mean, std); minmax: (min, max - min), over ``axes`` (None: all); a zero divisor becomes 1."""
    keep = axes is not None
    if mode == "zscore":
        offset, scale = x.mean(axis=axes, keepdims=keep), x.std(axis=axes, keepdims=keep)
    else:
        offset = x.min(axis=axes, keepdims=keep)
        scale = x.max(axis=axes, keepdims=keep) - offset
    return offset, np.where(scale > 0, scale, np.float32(1.0))


def make_channels(x: torch.Tensor, mode: str, in_chans: int) -> torch.Tensor:
    """Turn a (B,C,H,W) batch into the model's ``in_chans`` channels according to ``mode``."""
    if mode == "none":
        if x.shape[1] != in_chans:
            raise ValueError(f"channel_mode 'none' needs {in_chans} input channels, got {x.shape[1]}")
        return x
    if x.shape[1] != 1:
        if x.shape[1] == in_chans:
            return x
        raise ValueError(f"channel_mode {mode!r} expects 1-channel input, got {x.shape[1]} channels")
    if mode == "repeat":
        return x.repeat(1, in_chans, 1, 1)
    if mode == "pseudo_hdr":
        if in_chans != 3:
            raise ValueError("channel_mode 'pseudo_hdr' makes 3 channels; the model has in_chans="
                             f"{in_chans}")
        return torch.cat([x, (1.2 * x).clamp(0, 1), F.avg_pool2d(x, 3, stride=1, padding=1)], dim=1)
    raise ValueError(f"unknown channel_mode {mode!r}; use one of {CHANNEL_MODES}")

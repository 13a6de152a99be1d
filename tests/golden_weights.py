"""The golden weights procedures of ``../shared/golden/README.md``, shared by the parity and coverage tests.

Every tensor is drawn from ``torch.randn`` seeded with the CRC32 of its official name, then scaled by rule.
Buffers (relative-position indices, masks, BatchNorm step counters) are not drawn: our models compute them, and
tests that need them in a checkpoint add them.
"""
from __future__ import annotations

import functools
import json
import zlib
from pathlib import Path

import torch

BUFFERS = ("num_batches_tracked", "relative_position_index", "attn_mask", "flatten_index")


def golden_tensor(name: str, shape, proc: str = "A") -> torch.Tensor:
    """The value procedure ``proc`` ("A" or "B") gives the official parameter or running statistic ``name``."""
    t = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(zlib.crc32(name.encode("utf-8"))),
                    dtype=torch.float32)
    if name.endswith("running_mean"):
        return 0.1 * t
    if name.endswith("running_var"):
        return 1 + 0.1 * t.abs()
    if t.dim() == 1 and name.endswith(".weight"):
        return 1 + 0.1 * t
    if proc == "B" and t.dim() >= 2:
        return t / (t.numel() // t.shape[0]) ** 0.5
    if proc == "B" and t.dim() == 0:
        return 1 + 0.1 * t
    return 0.02 * t


def golden_state_dict(keys: list, proc: str = "A") -> dict[str, torch.Tensor]:
    """Official-named weights for the ``[name, shape, dtype, is_buffer]`` rows of a ``keys.json``, buffers left out."""
    return {name: golden_tensor(name, shape, proc) for name, shape, _dtype, _ in keys if not name.endswith(BUFFERS)}


@functools.lru_cache(maxsize=4)
def golden_file_state_dict(keys_json: Path, proc: str = "A") -> dict[str, torch.Tensor]:
    """``golden_state_dict`` of a ``keys.json`` file, cached: full-size models share one copy per session."""
    return golden_state_dict(json.loads(Path(keys_json).read_text(encoding="utf-8")), proc)

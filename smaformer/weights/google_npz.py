"""Load Google's ImageNet-21k ``R50+ViT-B_16.npz`` (flax layout) into TransUNet, with a coverage report.

The model's ``pretrained_mapping()`` names the npz key of each parameter (as the official ``load_from`` reads
them: 353 keys). The transforms are those of the official loader, derived from the target's shape:
- 4-D conv kernels are HWIO -> OIHW (``permute(3, 2, 0, 1)``);
- 2-D Dense kernels, including the attention's (768, 12, 64) query/key/value and (12, 64, 768) out kernels, are
  flattened to (in, out) and transposed;
- 1-D scales and biases (GroupNorm, LayerNorm, the (12, 64) attention biases) are flattened;
- the position embedding (1, 197, 768) drops its class token; when the model's token grid is not 14x14 the
  14x14 grid is resized bilinearly with align_corners=True in float64, which is what the official
  ``scipy.ndimage.zoom(order=1)`` computes, and here also for non-square grids.

``load_pretrained`` hands ``.npz`` paths and dicts holding these keys to ``load_google_npz``. Nothing is
downloaded; the file is read with ``allow_pickle=False``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from smaformer.errors import CheckpointError, InputError
from smaformer.io_utils import check_readable
from smaformer.weights.coverage import CoverageReport, copy_mapped

POS_KEY = "Transformer/posembed_input/pos_embedding"
MARKER = "Transformer/encoder_norm/scale"  # present in every Google ViT npz


def is_google_npz(src: object) -> bool:
    """True for a ``.npz`` path, or a dict with Google ViT keys."""
    if isinstance(src, (str, Path)):
        return str(src).endswith(".npz")
    return isinstance(src, dict) and MARKER in src


def read_npz(src: str | Path | dict) -> dict[str, torch.Tensor]:
    """The npz (path or dict of arrays/tensors) as float32 tensors."""
    if isinstance(src, (str, Path)):
        check_readable(src, "weights file", CheckpointError)
        try:
            with np.load(src, allow_pickle=False) as npz:
                src = {k: npz[k] for k in npz.files}
        except Exception as e:  # noqa: BLE001 - any failure here is a bad file for the user
            raise CheckpointError(src, f"cannot read the npz ({type(e).__name__})") from None
    return {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in src.items()}


def _grid_tokens(n: int) -> int:
    """Grid tokens of an n-token Google position embedding (n - 1 when it carries a class token)."""
    return n if math.isqrt(n) ** 2 == n else n - 1


def resize_position_embedding(posemb: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, N, D) Google position embedding -> (1, gh*gw, D): the class token is dropped (when N is not a square)
    and the square grid is resized bilinearly (align_corners=True, float64) when it differs from ``grid``."""
    n = _grid_tokens(posemb.shape[1])
    posemb = posemb[:, posemb.shape[1] - n:]
    side = math.isqrt(n)
    if side * side != n:
        raise CheckpointError(None, f"position embedding with {posemb.shape[1]} tokens is not a square grid")
    if (side, side) == tuple(grid):
        return posemb
    table = posemb[0].reshape(side, side, -1).permute(2, 0, 1)[None].double()
    table = F.interpolate(table, size=tuple(grid), mode="bilinear", align_corners=True)
    return table[0].permute(1, 2, 0).reshape(1, grid[0] * grid[1], -1).float()


def _convert(key: str, value: torch.Tensor, param: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """The official ``load_from`` transform of one npz entry, for the target ``param``."""
    if key == POS_KEY:
        return resize_position_embedding(value, tuple(model.grid))
    if value.numel() != param.numel():
        return value  # reported as a shape mismatch
    if param.dim() == 4 and value.dim() == 4:
        return value.permute(3, 2, 0, 1)
    if param.dim() == 2:
        return value.reshape(param.shape[1], param.shape[0]).T
    return value.reshape(param.shape)


def load_google_npz(model: nn.Module, src: str | Path | dict) -> CoverageReport:
    """Load a Google R50+ViT npz into ``model`` via its ``pretrained_mapping()``; returns the coverage."""
    mapping_fn = getattr(model, "pretrained_mapping", None)
    if mapping_fn is None or not hasattr(model, "grid"):
        raise InputError(None, f"{type(model).__name__} cannot take a Google ViT npz (TransUNet can)")
    npz, mapping = read_npz(src), mapping_fn()
    report = CoverageReport(layout="google-npz", source="R50+ViT-B/16")

    def adapt(name: str, key: str, array: np.ndarray, param: torch.Tensor) -> tuple[torch.Tensor, bool]:
        value = _convert(key, array, param, model)
        return value, key == POS_KEY and _grid_tokens(array.shape[1]) != value.shape[1]

    used = copy_mapped(model, mapping, npz, report, adapt, ("npz", "npz"))
    report.unused_checkpoint_keys = sorted(k for k in npz if k not in used)
    return report

"""Image-size helpers every model shares: int-or-(H, W), "must be a multiple of N; use M", padding."""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F


def to_2tuple(size: int | tuple[int, int] | list[int], what: str = "img_size") -> tuple[int, int]:
    """An int or (H, W) as an (H, W) tuple of positive ints."""
    if isinstance(size, numbers.Integral):
        size = (size, size)
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise ValueError(f"{what} must be an int or (H, W), got {size!r}")
    if min(int(s) for s in size) <= 0:
        raise ValueError(f"{what} must be positive, got {size!r}")
    return int(size[0]), int(size[1])


def _shown(hw: tuple[int, int]) -> str:
    return str(hw[0]) if hw[0] == hw[1] else str(tuple(hw))


def nearest_multiple(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """The closest (H, W) whose sides are positive multiples of ``multiple``."""
    return tuple(max(multiple, round(s / multiple) * multiple) for s in size)  # type: ignore[return-value]


def check_multiple(size: tuple[int, int], multiple: int, what: str = "img_size", why: str = "",
                   hint: str = "") -> None:
    """Raise ``ValueError("img_size 250 is not divisible by 32; use 256<hint>")`` unless both sides are
    positive multiples of ``multiple``. ``why`` explains the multiple, ``hint`` offers another fix."""
    if all(s > 0 and s % multiple == 0 for s in size):
        return
    raise ValueError(f"{what} {_shown(size)} is not divisible by {multiple}{why}; "
                     f"use {_shown(nearest_multiple(size, multiple))}{hint}")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad (B, C, H, W) bottom/right to multiples of ``multiple``."""
    ph, pw = (-x.shape[2]) % multiple, (-x.shape[3]) % multiple
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x

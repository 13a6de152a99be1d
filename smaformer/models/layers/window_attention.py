"""Swin V1 window attention (our own code): relative-position bias and two exact attention paths.

API
- ``WindowAttention(dim, num_heads, window_size, qkv_bias=True)``: ``forward(x (B*nW, N, C), window, mask)``
  with mask ``(nW, N, N) | None``;
  ``qkv``, ``proj``, ``relative_position_bias_table`` ((2w-1)^2, heads); ``relative_position_index`` is a
  computed, non-persistent buffer. Two exact paths (``explicit_attention`` picks one per call):
  - *fused*, for inference (no autograd) and for CUDA: 4-D ``F.scaled_dot_product_attention`` with bias (+
    shift mask) as the additive mask. Shifted windows are folded into the head axis, (B, nW*heads, N, hd),
    so the (nW*heads, N, N) mask broadcasts over the batch: no per-batch copy, and PyTorch's fused CPU
    kernel runs (5-D inputs fall back to its slow math path, which also upcasts bf16 to fp32);
  - *explicit*, for CPU training: ``(q*scale) @ k^T + bias (+ mask)``, softmax, ``@ v``, as the official
    code, whose autograd is faster than SDPA's backward with a bias that needs a gradient. Under bf16/fp16
    autocast on CPUs without bf16 matrix units (``runtime.cpu_bf16_units``) training stays fused: there
    emulated bf16 ``bmm`` is several times slower. Tracing and ONNX export also take the explicit path.
  ``attention_path("explicit" | "fused")`` forces one (FLOP counting, benchmarks).
- ``relative_position_index(window)``: the (N, N) index into the bias table.
- ``interpolate_rel_pos_table(table, new_window)``: bicubic resize of a ((2w-1)^2, heads) bias table; the
  same tensor values come back when the window is unchanged.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from smaformer.runtime import cpu_bf16_units


def relative_position_index(window: int) -> torch.Tensor:
    """(N, N) index into a ((2w-1)^2, heads) table: ``(dh + w-1) * (2w-1) + (dw + w-1)``, dh = h_q - h_k."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
    return rel[0] * (2 * window - 1) + rel[1]


def interpolate_rel_pos_table(table: torch.Tensor, new_window: int) -> torch.Tensor:
    """Resize a ((2w-1)^2, heads) relative-position bias table to ``new_window`` bicubically (as timm does).

    An unchanged window returns the values exactly (a clone)."""
    side = math.isqrt(table.shape[0])
    if side * side != table.shape[0]:
        raise ValueError(f"bias table with {table.shape[0]} rows is not (2w-1)^2")
    new_side = 2 * new_window - 1
    if new_side == side:
        return table.clone()
    grid = table.T.reshape(1, table.shape[1], side, side).float()
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return grid.reshape(table.shape[1], new_side * new_side).T.contiguous().to(table.dtype)


ATTENTION_PATHS = ("auto", "explicit", "fused")
_forced_path = ["auto"]  # set by attention_path(); one slot, read at every forward


@contextlib.contextmanager
def attention_path(path: str) -> Iterator[None]:
    """Force every WindowAttention onto one path ("explicit" or "fused") inside the block; "auto" restores
    the rule of :func:`explicit_attention`. For FLOP counting (the fused CPU kernel has no FLOP formula in
    ``torch.utils.flop_counter``) and for benchmarks. Not thread-safe: it sets a module-wide switch."""
    if path not in ATTENTION_PATHS:
        raise ValueError(f"unknown attention path {path!r}; use one of {ATTENTION_PATHS}")
    previous, _forced_path[0] = _forced_path[0], path
    try:
        yield
    finally:
        _forced_path[0] = previous


def explicit_attention(q: torch.Tensor) -> bool:
    """True when window attention should run as explicit matmul + softmax rather than fused SDPA (see the
    module docstring): while tracing/exporting, and for CPU training (autograd recorded) in fp32, or in
    bf16/fp16 on CPUs with bf16 matrix units. Emulated bf16 ``bmm`` is slower than the fused kernel."""
    if _forced_path[0] != "auto":
        return _forced_path[0] == "explicit"
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return True
    if q.device.type != "cpu" or not q.requires_grad:
        return False
    return q.dtype == torch.float32 or cpu_bf16_units() is not None


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias."""

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.window_size = dim, num_heads, window_size
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def relative_bias(self, window: int) -> torch.Tensor:
        """(heads, N, N) bias for a window of side ``window`` (<= the table's window: a centred sub-range)."""
        index = self.relative_position_index
        if window != self.window_size:  # map smaller than the window: the same offsets, from the top-left block
            full = self.window_size
            index = index.view(full, full, full, full)[:window, :window, :window, :window]
        n = window * window
        return self.relative_position_bias_table[index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, window: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B*nW, N, C) windows of side ``window``; mask: (nW, N, N) additive shift mask or None."""
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B*nW, heads, N, hd)
        if explicit_attention(q):
            out = self._explicit(q, k, v, window, mask)
        else:
            out = self._fused(q, k, v, window, mask)
        return self.proj(out.transpose(1, 2).reshape(b_, n, c))

    def _explicit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                  mask: torch.Tensor | None) -> torch.Tensor:
        """The official formulation: (q*scale) @ k^T + bias (+ mask through a (B, nW) view), softmax, @ v.
        No casts: under autocast the fp32 bias promotes the scores to fp32, as in the official code."""
        b_, heads, n, _ = q.shape
        scores = (q * self.scale) @ k.transpose(-2, -1) + self.relative_bias(window).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            scores = (scores.view(b_ // nw, nw, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(b_, heads, n, n)
        return scores.softmax(dim=-1) @ v

    def _fused(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
               mask: torch.Tensor | None) -> torch.Tensor:
        """4-D ``scaled_dot_product_attention`` (the fused CPU kernel; 5-D inputs would take the slow math path).
        Shifted windows are folded into the head axis, (B, nW*heads, N, hd), so the (nW*heads, N, N) bias+mask
        broadcasts over the batch instead of being expanded to (B*nW, heads, N, N)."""
        b_, heads, n, hd = q.shape
        bias = self.relative_bias(window).to(q.dtype)
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0), scale=self.scale)
        nw = mask.shape[0]
        attn_mask = (bias.unsqueeze(0) + mask.to(q.dtype).unsqueeze(1)).reshape(1, nw * heads, n, n)
        shape = (b_ // nw, nw * heads, n, hd)
        out = F.scaled_dot_product_attention(q.reshape(shape), k.reshape(shape), v.reshape(shape),
                                             attn_mask=attn_mask, scale=self.scale)
        return out.reshape(b_, heads, n, hd)

"""ViT encoder blocks (our own code), named as TransUNet's ``vit_seg_modeling.py`` (``attn.query/key/value/out``,
``ffn.fc1/fc2``, ``attention_norm``, ``ffn_norm``, ``encoder_norm``).

API
- ``Attention(dim, heads)``: separate q/k/v Linear layers, ``softmax(q k^T / sqrt(head_dim)) v``, ``out``.
- ``ViTBlock(dim, heads, mlp_dim, eps=1e-6)``: pre-norm ``x + attn(LN(x))``, then ``x + ffn(LN(x))`` with
  fc1 -> exact GELU -> fc2 (dropouts are identities in eval and are left out).
- ``ViTEncoder(dim, depth, heads, mlp_dim)``: ``layer`` (blocks) then ``encoder_norm``; (B, N, D) -> same.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    """Multi-head self-attention with separate query/key/value projections."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)))
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ViTBlock(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn = Mlp(dim, mlp_dim)
        self.attn = Attention(dim, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attention_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class ViTEncoder(nn.Module):
    """``depth`` ViT blocks, then a final LayerNorm."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.layer = nn.ModuleList(ViTBlock(dim, heads, mlp_dim, eps) for _ in range(depth))
        self.encoder_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layer:
            x = block(x)
        return self.encoder_norm(x)

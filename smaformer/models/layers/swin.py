"""Swin Transformer V1 building blocks (our own code), shared by Swin-Unet and SMAFormer.

Layout: tokens are channels-last 4D tensors ``(B, H, W, C)`` everywhere; no module needs to know the
input resolution at construction, so any size works (Swin V1 padding to window multiples, cropped back).

API
- ``PatchEmbed(in_chans, embed_dim, patch_size=4)``: ``(B, C, H, W) -> (B, H/4, W/4, D)``; conv k4 s4 then
  LayerNorm (``proj``, ``norm``). H, W that are not multiples of the patch are zero-padded bottom/right.
- ``WindowAttention(dim, num_heads, window_size, qkv_bias=True)``: ``forward(x (B*nW, N, C), window, mask)``
  with mask ``(nW, N, N) | None``;
  ``qkv``, ``proj``, ``relative_position_bias_table`` ((2w-1)^2, heads); ``relative_position_index`` is a
  computed, non-persistent buffer. Runs ``F.scaled_dot_product_attention`` with bias (+ shift mask) as the
  additive mask.
- ``SwinBlock(dim, num_heads, window_size, shift, mlp_ratio=4., drop_path=0.)``: ``(B, H, W, C) -> same``.
  Pre-norm (``norm1``, ``attn``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``). Shifted blocks roll by window // 2.
  When min(H, W) <= window there is no shift and the window is the whole (short side of the) map, as in
  official Swin. The shift mask (0 / -100) is cached per (H, W, window, shift, device);
  ``window_mask(H, W, device)`` returns it (None when unshifted).
- ``SwinStage(dim, depth, num_heads, window_size, drop_path, mlp_ratio=4., downsample=False, upsample=False)``:
  ``blocks`` alternating W-MSA / SW-MSA, then an optional ``downsample`` (PatchMerging) or ``upsample``
  (PatchExpand), named as in official Swin / Swin-Unet so checkpoints map by renaming.
- ``PatchMerging(dim)``: ``(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)``; concat (h, w) offsets
  (0,0), (1,0), (0,1), (1,1), ``norm`` LN(4C), ``reduction`` Linear(4C, 2C, no bias). Odd sizes are padded.
- ``PatchExpand(dim)``: ``(B, H, W, C) -> (B, 2H, 2W, C/2)``; ``expand`` Linear(C, 2C, no bias), channels
  split as (p1 p2 c), ``norm`` LN(C/2).
- ``FinalPatchExpandX4(dim)``: ``(B, H, W, C) -> (B, 4H, 4W, C)``; Linear(C, 16C, no bias), p=4, LN(C).
- ``DropPath(p)``: stochastic depth per sample.
- ``interpolate_rel_pos_table(table, new_window)``: bicubic resize of a ((2w-1)^2, heads) bias table; the
  same tensor values come back when the window is unchanged.
- ``init_swin_weights(module)``: official init (trunc-normal 0.02 Linear weights, zero biases, LN 1/0).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MASK_VALUE = -100.0  # official Swin uses -100 (not -inf) for cross-region pairs


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p`` (train only)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


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
        bias = self.relative_bias(window).to(q.dtype)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0), scale=self.scale)
        else:
            nw = mask.shape[0]
            shape = (b_ // nw, nw, self.num_heads, n, -1)
            attn_mask = bias.unsqueeze(0) + mask.to(q.dtype).unsqueeze(1)  # (nW, heads, N, N)
            out = F.scaled_dot_product_attention(q.reshape(shape), k.reshape(shape), v.reshape(shape),
                                                 attn_mask=attn_mask, scale=self.scale)
        return self.proj(out.reshape(b_, self.num_heads, n, -1).transpose(1, 2).reshape(b_, n, c))


class Mlp(nn.Module):
    """fc1 -> GELU (exact erf) -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _shift_mask(hp: int, wp: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """(nW, N, N) mask: 0 within a region of the rolled map, -100 across regions (official construction)."""
    img = torch.zeros(hp, wp, device=device)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    region = 0
    for hs in cuts:
        for ws in cuts:
            img[hs, ws] = region
            region += 1
    win = img.reshape(hp // window, window, wp // window, window).permute(0, 2, 1, 3).reshape(-1, window * window)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, MASK_VALUE)


class SwinBlock(nn.Module):
    """Pre-norm Swin block: x + W-MSA/SW-MSA(LN(x)), then x + MLP(LN(x)), on (B, H, W, C) tokens."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: bool, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.window_size, self.shift = window_size, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self._masks: dict[tuple, torch.Tensor] = {}

    def geometry(self, h: int, w: int) -> tuple[int, int]:
        """(window, shift) used at resolution (h, w): whole-map window and no shift when min(h, w) <= window."""
        if min(h, w) <= self.window_size:
            return min(h, w), 0
        return self.window_size, (self.window_size // 2 if self.shift else 0)

    def window_mask(self, h: int, w: int, device: torch.device | None = None) -> torch.Tensor | None:
        """The cached (nW, N, N) shift mask for an (h, w) input, or None when this block does not shift."""
        window, shift = self.geometry(h, w)
        if shift == 0:
            return None
        hp, wp = -(-h // window) * window, -(-w // window) * window
        device = device or self.attn.qkv.weight.device
        key = (hp, wp, window, shift, str(device))
        if key not in self._masks:
            self._masks[key] = _shift_mask(hp, wp, window, shift, device)
        return self._masks[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        window, shift = self.geometry(h, w)
        shortcut = x
        x = self.norm1(x)
        pad_h, pad_w = (-h) % window, (-w) % window
        if pad_h or pad_w:  # Swin V1: zero-pad normalised tokens bottom/right, crop back after attention
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = x.reshape(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
        windows = self.attn(windows.reshape(-1, window * window, c), window, self.window_mask(h, w, x.device))
        x = windows.reshape(b, hp // window, wp // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, hp, wp, c)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        if pad_h or pad_w:
            x = x[:, :h, :w].contiguous()
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """(B, C, H, W) image -> (B, H/p, W/p, D) tokens: conv k=p s=p, then LayerNorm."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 4) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = (-x.shape[2]) % self.patch_size, (-x.shape[3]) % self.patch_size
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (h,w offsets (0,0),(1,0),(0,1),(1,1)) -> LN(4C) -> Linear(4C, 2C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1], x.shape[2]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


def pixel_shuffle_tokens(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, H, W, p*p*c) with channels ordered (p1 p2 c), as the official einops rearranges -> (B, pH, pW, c)."""
    b, h, w, c = x.shape
    c //= p * p
    return x.reshape(b, h, w, p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h * p, w * p, c)


class PatchExpand(nn.Module):
    """2x upsampling of tokens: Linear(C, 2C, no bias), split channels (p1 p2 c), LN(C/2)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"PatchExpand needs an even dim, got {dim}")
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_shuffle_tokens(self.expand(x), 2))


class FinalPatchExpandX4(nn.Module):
    """4x upsampling of tokens back to pixels: Linear(C, 16C, no bias), split (p1 p2 c) with p=4, LN(C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.expand = nn.Linear(dim, 16 * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_shuffle_tokens(self.expand(x), 4))


class SwinStage(nn.Module):
    """``depth`` Swin blocks alternating W-MSA / SW-MSA, then an optional PatchMerging or PatchExpand."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, drop_path: list[float] | float = 0.0,
                 mlp_ratio: float = 4.0, downsample: bool = False, upsample: bool = False) -> None:
        super().__init__()
        if downsample and upsample:
            raise ValueError("a stage either downsamples or upsamples, not both")
        rates = list(drop_path) if isinstance(drop_path, (list, tuple)) else [float(drop_path)] * depth
        if len(rates) != depth:
            raise ValueError(f"drop_path has {len(rates)} rates for {depth} blocks")
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, shift=i % 2 == 1, mlp_ratio=mlp_ratio, drop_path=rates[i])
            for i in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None
        self.upsample = PatchExpand(dim) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


def drop_path_rates(depths: tuple[int, ...] | list[int], rate: float) -> list[list[float]]:
    """Swin's stochastic depth: rising linearly from 0 to ``rate`` over all blocks, split per stage."""
    flat = torch.linspace(0, rate, sum(depths), device="cpu").tolist()
    starts = [sum(depths[:i]) for i in range(len(depths) + 1)]
    return [flat[a:b] for a, b in zip(starts, starts[1:], strict=False)]


def swin_encoder(dims: list[int], depths, num_heads, window_size: int, rates: list[list[float]],
                 mlp_ratio: float) -> nn.ModuleList:
    """The Swin encoder stages: stage i has ``depths[i]`` blocks at width ``dims[i]``, PatchMerging after all
    but the last."""
    n = len(depths)
    return nn.ModuleList(SwinStage(dims[i], depths[i], num_heads[i], window_size, rates[i], mlp_ratio,
                                   downsample=i < n - 1) for i in range(n))


def mirrored_block(name: str, prefix: str, top: int) -> str | None:
    """Swin-T source of a mirrored decoder block: ``<prefix>i.blocks.j...`` <- ``layers.(top - i).blocks.j...``
    (how the official Swin-Unet and SMAFormer loaders fill their decoders); None for other names."""
    if not name.startswith(prefix) or ".blocks." not in name:
        return None
    i, rest = name[len(prefix):].split(".", 1)
    return f"layers.{top - int(i)}.{rest}"


def init_swin_weights(module: nn.Module) -> None:
    """Official Swin init, for ``model.apply``: trunc-normal(0.02) Linear weights, zero biases, LayerNorm 1/0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

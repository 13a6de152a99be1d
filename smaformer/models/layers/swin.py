"""Swin Transformer V1 building blocks (our own code), shared by Swin-Unet and SMAFormer.

Layout: tokens are channels-last 4D tensors ``(B, H, W, C)`` everywhere; no module needs to know the
input resolution at construction, so any size works (Swin V1 padding to window multiples, cropped back).

API
- ``PatchEmbed(in_chans, embed_dim, patch_size=4)``: ``(B, C, H, W) -> (B, H/4, W/4, D)``; conv k4 s4 then
  LayerNorm (``proj``, ``norm``). H, W that are not multiples of the patch are zero-padded bottom/right.
- ``WindowAttention``: see ``window_attention`` (the explicit and fused attention paths).
- ``SwinBlock(dim, num_heads, window_size, shift, mlp_ratio=4., drop_path=0.)``: ``(B, H, W, C) -> same``.
  Pre-norm (``norm1``, ``attn``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``). Shifted blocks roll by window // 2.
  When min(H, W) <= window there is no shift and the window is the whole (short side of the) map, as in
  official Swin. Roll + window partition is one ``index_select`` with a precomputed token order, and window
  reverse + roll back one more (exact copies; ``torch.roll`` and permute copies were the slow part). The
  shift mask (0 / -100) and the token orders are cached per (H, W, window, shift, device), for at most
  ``LAYOUT_CACHE`` input sizes per block; ``window_mask(H, W, device)`` returns the mask (None when
  unshifted).
- ``SwinStage(dim, depth, num_heads, window_size, drop_path, mlp_ratio=4., downsample=False, upsample=False)``:
  ``blocks`` alternating W-MSA / SW-MSA, then an optional ``downsample`` (PatchMerging) or ``upsample``
  (PatchExpand), named as in official Swin / Swin-Unet so checkpoints map by renaming.
- ``PatchMerging(dim)``: ``(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)``; concat (h, w) offsets
  (0,0), (1,0), (0,1), (1,1), ``norm`` LN(4C), ``reduction`` Linear(4C, 2C, no bias). Odd sizes are padded.
- ``PatchExpand(dim)``: ``(B, H, W, C) -> (B, 2H, 2W, C/2)``; ``expand`` Linear(C, 2C, no bias), channels
  split as (p1 p2 c), ``norm`` LN(C/2).
- ``FinalPatchExpandX4(dim)``: ``(B, H, W, C) -> (B, 4H, 4W, C)``; Linear(C, 16C, no bias), p=4, LN(C).
- ``DropPath(p)``: stochastic depth per sample.
- ``init_swin_weights(module)``: official init (trunc-normal 0.02 Linear weights, zero biases, LN 1/0).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from smaformer.models.layers.window_attention import WindowAttention

MASK_VALUE = -100.0  # official Swin uses -100 (not -inf) for cross-region pairs
LAYOUT_CACHE = 4  # input sizes whose shift mask and token order a block keeps


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
        self._layouts: dict[tuple, tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]] = {}

    def geometry(self, h: int, w: int) -> tuple[int, int]:
        """(window, shift) used at resolution (h, w): whole-map window and no shift when min(h, w) <= window."""
        if min(h, w) <= self.window_size:
            return min(h, w), 0
        return self.window_size, (self.window_size // 2 if self.shift else 0)

    def window_mask(self, h: int, w: int, device: torch.device | None = None) -> torch.Tensor | None:
        """The cached (nW, N, N) shift mask for an (h, w) input, or None when this block does not shift."""
        return self._layout(h, w, device or self.attn.qkv.weight.device)[0]

    def _layout(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(shift mask or None, token order, inverse order) of the padded (hp, wp) map, cached per
        (hp, wp, window, shift, device), at most ``LAYOUT_CACHE`` sizes per block (oldest dropped first).

        ``order`` lists the flat token indices of the rolled map window by window, so one ``index_select``
        does roll + window partition, and ``inverse`` does window reverse + roll back (exact copies)."""
        window, shift = self.geometry(h, w)
        hp, wp = -(-h // window) * window, -(-w // window) * window
        key = (hp, wp, window, shift, str(device))
        if key not in self._layouts:
            with torch.inference_mode(False):  # normal tensors: one made in inference mode cannot serve training
                self._layouts[key] = self._new_layout(hp, wp, window, shift, device)
        return self._layouts[key]

    def _new_layout(self, hp: int, wp: int, window: int, shift: int, device: torch.device) -> tuple:
        while len(self._layouts) >= LAYOUT_CACHE:
            self._layouts.pop(next(iter(self._layouts)))
        grid = torch.arange(hp * wp, device=device).view(hp, wp)
        if shift:
            grid = torch.roll(grid, shifts=(-shift, -shift), dims=(0, 1))
        order = grid.view(hp // window, window, wp // window, window).permute(0, 2, 1, 3).reshape(-1)
        mask = _shift_mask(hp, wp, window, shift, device) if shift else None
        return mask, order, torch.argsort(order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        window, _ = self.geometry(h, w)
        mask, order, inverse = self._layout(h, w, x.device)
        shortcut = x
        x = self.norm1(x)
        pad_h, pad_w = (-h) % window, (-w) % window
        if pad_h or pad_w:  # Swin V1: zero-pad normalised tokens bottom/right, crop back after attention
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        windows = x.reshape(b, hp * wp, c).index_select(1, order).view(-1, window * window, c)
        windows = self.attn(windows, window, mask)
        x = windows.reshape(b, hp * wp, -1).index_select(1, inverse).view(b, hp, wp, -1)
        if pad_h or pad_w:
            x = x[:, :h, :w]
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

"""SMAFormer-specific layers: the SMA attention variants, E-MLP, the edge head and the V2.3 final expansion.

Two SMA flavours exist in the official repository (lzeeorno/SMAFormer):
- ``CBAM``: what V2.3 calls SMA. Channel gate from avg- and max-pooled features through a shared bias-free
  1x1-conv MLP (hidden ``max(C // 16, 8)``), then a spatial gate from a 7x7 conv on [mean_c, max_c]. No residual.
  Submodule names ``channel_fc`` / ``spatial_conv`` equal the official ones, so V2.3 checkpoints load by name.
- ``SynergisticMultiAttention``: the full module of the paper/README (V2.1): pixel attention ``x*sigmoid(conv1x1 x)``
  and channel attention in parallel, fused by conv1x1 on their product, then the spatial gate, then a conv1x1+BN
  projection. ``forward`` adds the residual; ``attend`` is the branch without it (the block adds its own).

All modules here take (B, C, H, W) except ``EnhancedMLP`` and ``FinalExpand``, which take channels-last
tokens (B, H, W, C) like the Swin layers.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from smaformer.models.layers.swin import pixel_shuffle_tokens


def reduced_dim(dim: int, reduction: int = 16, minimum: int = 8) -> int:
    """Hidden width of the channel-attention MLP: ``max(dim // reduction, minimum)`` as in the official code."""
    return max(dim // reduction, minimum)


def channel_mlp(dim: int, reduction: int = 16) -> nn.Sequential:
    """The shared bias-free MLP of channel attention: conv1x1 -> ReLU -> conv1x1 (indices 0 and 2 hold weights)."""
    hidden = reduced_dim(dim, reduction)
    return nn.Sequential(nn.Conv2d(dim, hidden, 1, bias=False), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, dim, 1, bias=False))


def channel_gate(x: torch.Tensor, mlp: nn.Module) -> torch.Tensor:
    """``x * sigmoid(mlp(avgpool x) + mlp(maxpool x))``."""
    avg = x.mean(dim=(2, 3), keepdim=True)
    mx = x.amax(dim=(2, 3), keepdim=True)
    return x * torch.sigmoid(mlp(avg) + mlp(mx))


def spatial_gate(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """``x * sigmoid(conv([mean_c x, max_c x]))``."""
    pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
    return x * torch.sigmoid(conv(pooled))


class CBAM(nn.Module):
    """V2.3's SMA: channel gate then spatial gate, no residual. (B, C, H, W) -> same."""

    def __init__(self, dim: int, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        self.channel_fc = channel_mlp(dim, reduction)
        self.spatial_conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spatial_gate(channel_gate(x, self.channel_fc), self.spatial_conv)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Channels-last (B, H, W, C) in and out."""
        return self(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class PixelAttention(nn.Module):
    """``x * sigmoid(conv1x1(x))`` (conv with bias)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(x))


class ChannelAttention(nn.Module):
    """Channel gate with its own MLP (``fc``)."""

    def __init__(self, dim: int, reduction: int = 16):
        super().__init__()
        self.fc = channel_mlp(dim, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_gate(x, self.fc)


class SpatialAttention(nn.Module):
    """Spatial gate from a bias-free k x k conv on [mean_c, max_c]."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spatial_gate(x, self.conv)


class SynergisticMultiAttention(nn.Module):
    """The paper's SMA (V2.1): ``x + BN(conv1x1(SA(fuse(PA(x) * CA(x)))))``. (B, C, H, W) -> same."""

    def __init__(self, dim: int, reduction: int = 16):
        super().__init__()
        self.pixel_attn = PixelAttention(dim)
        self.channel_attn = ChannelAttention(dim, reduction)
        self.spatial_attn = SpatialAttention(7)
        self.fusion_proj = nn.Conv2d(dim, dim, 1)
        self.out_proj = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The attention branch without the residual."""
        synergy = self.fusion_proj(self.pixel_attn(x) * self.channel_attn(x))
        return self.out_proj(self.spatial_attn(synergy))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attend(x)


class EnhancedMLP(nn.Module):
    """E-MLP on channels-last tokens: fc1 -> GELU -> depthwise 3x3 -> pointwise 1x1 -> GELU -> fc2."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.pwconv = nn.Conv2d(hidden, hidden, 1)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x)).permute(0, 3, 1, 2)
        x = self.act(self.pwconv(self.dwconv(x))).permute(0, 2, 3, 1)
        return self.fc2(x)


_LAPLACIAN = ((-1.0, -1.0, -1.0), (-1.0, 8.0, -1.0), (-1.0, -1.0, -1.0))
_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
EDGE_KINDS = ("laplacian", "sobel")


class EdgeHead(nn.Module):
    """Edge-enhancement classifier: depthwise 3x3 edge filters, concat with the features, conv1x1+BN+ReLU, conv1x1.

    ``edge='laplacian'`` is what the official code builds (its comment calls it Sobel): one 8-neighbour Laplacian
    per channel, scaled by 1/8. ``edge='sobel'`` builds true Sobel x and y filters (two per channel, also /8).
    The filters are trainable; only their initialisation differs.
    """

    def __init__(self, dim: int, num_classes: int, edge: str = "laplacian"):
        super().__init__()
        if edge not in EDGE_KINDS:
            raise ValueError(f"edge must be one of {EDGE_KINDS}, got {edge!r}")
        kernels = [torch.tensor(_LAPLACIAN)] if edge == "laplacian" else [torch.tensor(_SOBEL_X),
                                                                           torch.tensor(_SOBEL_X).t()]
        n = len(kernels)
        self.edge_conv = nn.Conv2d(dim, dim * n, 3, padding=1, groups=dim, bias=False)
        with torch.no_grad():
            self.edge_conv.weight.copy_(torch.stack(kernels).repeat(dim, 1, 1).unsqueeze(1) / 8.0)
        self.refine = nn.Sequential(nn.Conv2d(dim * (1 + n), dim, 1), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
        self.out_conv = nn.Conv2d(dim, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_conv(self.refine(torch.cat([x, self.edge_conv(x)], dim=1)))


class FinalExpand(nn.Module):
    """V2.3 head on channels-last tokens: two (Linear d->4d no bias, x2 pixel shuffle, LN) steps, then
    Linear d->classes with bias. Returns (B, classes, 4H, 4W)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.expand1 = nn.Linear(dim, 4 * dim, bias=False)
        self.norm1 = nn.LayerNorm(dim)
        self.expand2 = nn.Linear(dim, 4 * dim, bias=False)
        self.norm2 = nn.LayerNorm(dim)
        self.output = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(pixel_shuffle_tokens(self.expand1(x), 2))
        x = self.norm2(pixel_shuffle_tokens(self.expand2(x), 2))
        return self.output(x).permute(0, 3, 1, 2)


def resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The official resize: bilinear, align_corners=False, no antialias (a no-op at the same size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

"""ResNetV2 (BiT) trunk with weight-standardised convs and GroupNorm (our own code), named as TransUNet's
``vit_seg_modeling_resnet_skip.py`` so official and Google-npz weights map by name.

API
- ``StdConv2d``: Conv2d whose filters are standardised every forward, ``(w - mean) / sqrt(var + 1e-5)`` with the
  biased variance over (in, kh, kw).
- ``Bottleneck(cin, cout, cmid, stride)``: despite the official "PreAct" name, post-activation:
  ``relu(gn1(conv1))`` (1x1), ``relu(gn2(conv2))`` (3x3, carries the stride), ``gn3(conv3)`` (1x1), then
  ``relu(residual + y)``; the residual is ``gn_proj(downsample(x))`` when the shape changes. gn1-gn3 are
  GroupNorm(32, C, eps 1e-6); ``gn_proj`` is GroupNorm(C, C) with the default eps 1e-5, as the official code.
- ``ResNetV2(width, units, in_chans)``: ``root`` (StdConv 7x7 s2, GroupNorm, ReLU), MaxPool 3/2 without padding,
  ``body.block{1..n}`` (strides 1, 2, 2, ...). ``forward(x) -> (features, skips)`` with skips
  ``[block{n-1}, ..., block1, root]`` (deepest first). The max pool makes block1 one row/column short
  (224 -> 55); that map is zero-padded bottom/right to H/4 x W/4, as the official code pads 55 -> 56.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F


class StdConv2d(nn.Conv2d):
    """Conv2d with weight standardisation (BiT)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (self.weight - mean) / torch.sqrt(var + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Bottleneck(nn.Module):
    """Post-activation bottleneck unit with StdConv and GroupNorm."""

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1) -> None:
        super().__init__()
        self.gn1 = nn.GroupNorm(32, cmid, eps=1e-6)
        self.conv1 = StdConv2d(cin, cmid, 1, bias=False)
        self.gn2 = nn.GroupNorm(32, cmid, eps=1e-6)
        self.conv2 = StdConv2d(cmid, cmid, 3, stride=stride, padding=1, bias=False)
        self.gn3 = nn.GroupNorm(32, cout, eps=1e-6)
        self.conv3 = StdConv2d(cmid, cout, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or cin != cout:
            self.downsample = StdConv2d(cin, cout, 1, stride=stride, bias=False)
            self.gn_proj = nn.GroupNorm(cout, cout)
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.gn_proj(self.downsample(x))
        y = self.relu(self.gn1(self.conv1(x)))
        y = self.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return self.relu(residual + y)


class ResNetV2(nn.Module):
    """BiT ResNetV2 trunk returning the deepest map and the skip maps at 1/8, 1/4 and 1/2 (deepest first)."""

    def __init__(self, width: int = 64, units: tuple[int, ...] = (3, 4, 9), in_chans: int = 3) -> None:
        super().__init__()
        self.width = width
        self.root = nn.Sequential(OrderedDict(
            conv=StdConv2d(in_chans, width, kernel_size=7, stride=2, padding=3, bias=False),
            gn=nn.GroupNorm(32, width, eps=1e-6),
            relu=nn.ReLU(inplace=True)))
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0)
        blocks, cin = OrderedDict(), width
        for b, n in enumerate(units):
            cmid = width * 2 ** b
            cout = 4 * cmid
            stride = 1 if b == 0 else 2
            blocks[f"block{b + 1}"] = nn.Sequential(OrderedDict(
                (f"unit{u + 1}", Bottleneck(cin if u == 0 else cout, cout, cmid, stride if u == 0 else 1))
                for u in range(n)))
            cin = cout
        self.body = nn.Sequential(blocks)
        self.out_channels = cin

    @property
    def skip_channels(self) -> list[int]:
        """Channels of the skips, deepest first: block(n-1), ..., block1, root."""
        return [4 * self.width * 2 ** b for b in range(len(self.body) - 2, -1, -1)] + [self.width]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, w = x.shape[-2:]
        x = self.root(x)
        skips = [x]
        x = self.pool(x)
        for i, block in enumerate(list(self.body)[:-1]):
            x = block(x)
            th, tw = h // (4 * 2 ** i), w // (4 * 2 ** i)  # official: in_size / 4 / (i + 1), i = 0, 1
            ph, pw = th - x.shape[-2], tw - x.shape[-1]
            if not (0 <= ph < 3 and 0 <= pw < 3):
                raise ValueError(f"ResNetV2 skip {i}: map {tuple(x.shape[-2:])} cannot be padded to {(th, tw)}")
            skips.append(F.pad(x, (0, pw, 0, ph)) if ph or pw else x)
        return self.body[-1](x), skips[::-1]

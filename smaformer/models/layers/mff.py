"""HBFormer's convolutional decoder blocks (our own code), named as in lzeeorno/SMAFormer ``models/HBFormer.py``.

API (all on (B, C, H, W) maps, BatchNorm2d everywhere, exact SiLU):
- ``ECA()``: ``x * sigmoid(conv1d_k3(avgpool(x)))``; the Conv1d (``conv``, 1->1, no bias) slides along channels.
- ``MedDSPP(dim, rates=(1, 4, 8), experts=4)``: dilated depthwise-separable pyramid with mixture-of-experts
  weights. ``branch_attention`` / ``expert_attention`` (pool, 1x1 C->C/8, ReLU, 1x1 -> 3 or 4, softmax) give one
  weight per rate and per expert; the same expert weights mix ``dw_experts[r][i]`` (3x3 depthwise, dilation r)
  and then ``pw_experts[r][i]`` (1x1) for every rate. Each rate: ``SiLU(bns[r](pw)) * branch_w[r]``; then cat
  in rate order, ``eca``, ``fuse`` (1x1, 3C->C, no bias), ``fuse_bn``.
- ``LRDBlock(cin, cout)``: ``lrelu(bn2(conv2(lrelu(bn1(conv1(x))))) + conv_skip(x))``; conv1 3x3, conv2 and
  conv_skip 1x1, no biases, LeakyReLU 0.01.
- ``MFFDecoder(cin, cout)``: ``forward(x, skip)``: ``transp_conv`` (ConvTranspose2d k2 s2) on x, cat
  ``[up, skip]`` (upsampled first), ``LRD_block``, ``Med_DSPP``, then ``BN(ReLU(.))`` (ReLU first). The skip
  must have ``cin - cout`` channels.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ECA(nn.Module):
    """Efficient channel attention: a k=3 Conv1d over the pooled channel vector, zero-padded at both ends."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean(dim=(2, 3)).unsqueeze(1)  # (B, 1, C)
        return x * torch.sigmoid(self.conv(y)).transpose(1, 2).unsqueeze(-1)


def _attention(dim: int, outputs: int) -> nn.Sequential:
    """Global pool -> 1x1 (C -> C/8, bias) -> ReLU -> 1x1 (-> outputs, bias) -> softmax over outputs."""
    hidden = max(dim // 8, 1)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, hidden, 1), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, outputs, 1), nn.Softmax(dim=1))


class MedDSPP(nn.Module):
    """Dilated depthwise-separable pyramid whose experts are mixed by input-dependent softmax weights."""

    def __init__(self, dim: int, rates: tuple[int, ...] = (1, 4, 8), experts: int = 4) -> None:
        super().__init__()
        self.rates, self.experts = tuple(rates), experts
        self.branch_attention = _attention(dim, len(rates))
        self.expert_attention = _attention(dim, experts)
        self.dw_experts = nn.ModuleList(
            nn.ModuleList(nn.Conv2d(dim, dim, 3, padding=r, dilation=r, groups=dim, bias=False)
                          for _ in range(experts))
            for r in rates)
        self.pw_experts = nn.ModuleList(
            nn.ModuleList(nn.Conv2d(dim, dim, 1, bias=False) for _ in range(experts)) for _ in rates)
        self.bns = nn.ModuleList(nn.BatchNorm2d(dim) for _ in rates)
        self.eca = ECA()
        self.fuse = nn.Conv2d(len(rates) * dim, dim, 1, bias=False)
        self.fuse_bn = nn.BatchNorm2d(dim)

    @staticmethod
    def _mix(convs: nn.ModuleList, weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = weights[:, 0:1] * convs[0](x)
        for i in range(1, len(convs)):
            out = out + weights[:, i:i + 1] * convs[i](x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch_w = self.branch_attention(x)  # (B, rates, 1, 1)
        expert_w = self.expert_attention(x)  # (B, experts, 1, 1), shared by every rate, dw and pw
        outs = []
        for r in range(len(self.rates)):
            y = self._mix(self.pw_experts[r], expert_w, self._mix(self.dw_experts[r], expert_w, x))
            outs.append(F.silu(self.bns[r](y)) * branch_w[:, r:r + 1])
        return self.fuse_bn(self.fuse(self.eca(torch.cat(outs, dim=1))))


class LRDBlock(nn.Module):
    """Residual conv block: two conv-BN-LeakyReLU steps with a 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 1, bias=False)
        self.conv_skip = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)
        self.lrelu = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.lrelu(self.bn1(self.conv1(x)))))
        return self.lrelu(y + self.conv_skip(x))


class MFFDecoder(nn.Module):
    """x2 decoder step: transposed conv, concat [up, skip], LRD block, Med_DSPP, then BN(ReLU(.))."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.transp_conv = nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
        self.LRD_block = LRDBlock(cin, cout)  # noqa: N815 - official name
        self.Med_DSPP = MedDSPP(cout)  # noqa: N815 - official name
        self.BN = nn.BatchNorm2d(cout)  # noqa: N815 - official name

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.LRD_block(torch.cat([self.transp_conv(x), skip], dim=1))
        return self.BN(F.relu(self.Med_DSPP(x)))

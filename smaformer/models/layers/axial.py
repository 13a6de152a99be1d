"""Axial attention blocks of the Medical Transformer (Valanarasu et al. 2021), torch only.

Mirrors jeya-maria-jose/Medical-Transformer ``lib/models/axialnet.py`` @62f40a5 so that official checkpoints map
by renaming one word (``hight_block`` -> ``height_block``):

- ``AxialAttention`` attends along one axis of fixed length ``kernel_size`` with 8 heads. With ``positional`` it
  adds relative-position terms for queries, keys and values (table of shape (2*gp, 2K-1)); with ``gated`` those
  terms are scaled by the learnable gates G_Q, G_K, G_V1, G_V2 (0-dim parameters ``f_qr, f_kr, f_sv, f_sve``).
  Without ``positional`` it is the official ``AxialAttention_wopos``. There is no 1/sqrt(d) scaling: a BatchNorm
  over the stacked logits replaces it.
- ``AxialBlock``: 1x1 down, attention along H, attention along W (stride 2 -> AvgPool2d(2)), 1x1 up, residual.

The official code builds the gates with ``requires_grad=False`` and unfreezes every parameter after epoch 10.
Here gates are trainable by default; freezing is explicit through ``set_gates_trainable`` (the training loop's
``freeze_gates_epochs`` option calls it).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

GATE_NAMES = ("f_qr", "f_kr", "f_sv", "f_sve")


def relative_index(k: int) -> torch.Tensor:
    """Flat (k*k,) index into the (., 2k-1) relative table: entry i*k+j is i - j + k - 1 (i, j = query, key)."""
    i = torch.arange(k).unsqueeze(1)
    j = torch.arange(k).unsqueeze(0)
    return (i - j + k - 1).reshape(-1)


class AxialAttention(nn.Module):
    """Multi-head self-attention along H (``width=False``) or W (``width=True``) of a (B, C, H, W) map.

    ``kernel_size`` is the length of the attended axis and must equal it at run time (the relative table is
    sized to it). ``stride`` 2 average-pools both axes by 2 afterwards (used only on the width pass).
    """

    __constants__ = ["positional", "gated", "width"]

    def __init__(self, dim: int, kernel_size: int, groups: int = 8, stride: int = 1, width: bool = False,
                 positional: bool = True, gated: bool = False):
        super().__init__()
        if dim % (2 * groups):
            raise ValueError(f"axial attention width {dim} must be a multiple of 2*groups = {2 * groups}")
        if gated and not positional:
            raise ValueError("gated axial attention needs positional=True (the gates scale the positional terms)")
        self.dim, self.groups, self.group_planes = dim, groups, dim // groups
        self.kernel_size, self.stride, self.width = kernel_size, stride, width
        self.positional, self.gated = positional, gated
        self.qkv_transform = nn.Conv1d(dim, 2 * dim, kernel_size=1, bias=False)
        self.bn_qkv = nn.BatchNorm1d(2 * dim)
        self.bn_similarity = nn.BatchNorm2d(3 * groups if positional else groups)
        self.bn_output = nn.BatchNorm1d(2 * dim if positional else dim)
        if gated:
            for name, init in zip(GATE_NAMES, (0.1, 0.1, 1.0, 0.1), strict=True):
                self.register_parameter(name, nn.Parameter(torch.tensor(init)))
        if positional:
            self.relative = nn.Parameter(torch.empty(2 * self.group_planes, 2 * kernel_size - 1))
            self.register_buffer("flatten_index", relative_index(kernel_size), persistent=False)
        self.pooling = nn.AvgPool2d(stride, stride=stride) if stride > 1 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: qkv ~ N(0, 1/C_in), relative table ~ N(0, 1/gp); everything else PyTorch's default."""
        nn.init.normal_(self.qkv_transform.weight, 0.0, math.sqrt(1.0 / self.dim))
        if self.positional:
            nn.init.normal_(self.relative, 0.0, math.sqrt(1.0 / self.group_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Fold the other axis into the batch: (N*W, C, H) for the height pass, (N*H, C, W) for the width pass.
        x = x.permute(0, 2, 1, 3) if self.width else x.permute(0, 3, 1, 2)
        n, m, c, length = x.shape
        b, g, gp = n * m, self.groups, self.group_planes
        qkv = self.bn_qkv(self.qkv_transform(x.reshape(b, c, length))).reshape(b, g, 2 * gp, length)
        q, k, v = torch.split(qkv, [gp // 2, gp // 2, gp], dim=2)
        out = self._attend(q, k, v, length) if self.training else self._attend_eval(q, k, v, length)
        out = out.view(n, m, self.dim, length)
        out = out.permute(0, 2, 1, 3) if self.width else out.permute(0, 2, 3, 1)
        return self.pooling(out)

    def _embeddings(self, length: int) -> list[torch.Tensor]:
        """Relative embeddings for queries, keys and values: (gp/2, K, K), (gp/2, K, K), (gp, K, K)."""
        gp = self.group_planes
        emb = self.relative.index_select(1, self.flatten_index).view(2 * gp, length, length)
        return torch.split(emb, [gp // 2, gp // 2, gp], dim=0)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, length: int) -> torch.Tensor:
        """The official computation (BatchNorms over the stacked logits and outputs); used in training."""
        b, g = q.shape[0], self.groups
        qk = torch.einsum("bgci,bgcj->bgij", q, k)
        if not self.positional:
            attn = F.softmax(self.bn_similarity(qk), dim=3)
            return self.bn_output(torch.einsum("bgij,bgcj->bgci", attn, v).reshape(b, self.dim, length))
        q_emb, k_emb, v_emb = self._embeddings(length)
        qr = torch.einsum("bgci,cij->bgij", q, q_emb)
        kr = torch.einsum("bgci,cij->bgij", k, k_emb).transpose(2, 3)
        if self.gated:
            qr = qr * self.f_qr
            kr = kr * self.f_kr
        logits = self.bn_similarity(torch.cat([qk, qr, kr], dim=1)).view(b, 3, g, length, length).sum(dim=1)
        attn = F.softmax(logits, dim=3)
        sv = torch.einsum("bgij,bgcj->bgci", attn, v)
        sve = torch.einsum("bgij,cij->bgci", attn, v_emb)
        if self.gated:
            sv = sv * self.f_sv
            sve = sve * self.f_sve
        # Concatenating along the axis and re-viewing interleaves the channels: 2*(g*gp+c) is sv, +1 is sve.
        out = self.bn_output(torch.cat([sv, sve], dim=-1).view(b, 2 * self.dim, length))
        return out.view(b, self.dim, 2, length).sum(dim=2)

    def _attend_eval(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, length: int) -> torch.Tensor:
        """Same result with the eval BatchNorms folded into per-group scales on q and k (cheap, O(K)) instead of
        stacking and normalising three (K x K) logit maps; about half the time and memory of ``_attend``."""
        b, g, gp = q.shape[0], self.groups, self.group_planes
        s_sim, t_sim = _fold_bn(self.bn_similarity.weight, self.bn_similarity.bias,
                                self.bn_similarity.running_mean, self.bn_similarity.running_var, self.bn_similarity.eps)
        s_out, t_out = _fold_bn(self.bn_output.weight, self.bn_output.bias,
                                self.bn_output.running_mean, self.bn_output.running_var, self.bn_output.eps)
        s_sim, t_sim = s_sim.view(-1, g, 1, 1), t_sim.view(-1, g, 1, 1).sum(dim=0)
        logits = torch.einsum("bgci,bgcj->bgij", q * s_sim[0], k)
        if not self.positional:
            attn = F.softmax(logits.add_(t_sim), dim=3)
            sv = torch.einsum("bgij,bgcj->bgci", attn, v).reshape(b, self.dim, length)
            return sv * s_out.view(-1, 1) + t_out.view(-1, 1)
        q_emb, k_emb, v_emb = self._embeddings(length)
        s_qr, s_kr = s_sim[1], s_sim[2]
        if self.gated:
            s_qr, s_kr = s_qr * self.f_qr, s_kr * self.f_kr
        logits.add_(torch.einsum("bgci,cij->bgij", q * s_qr, q_emb))
        logits.add_(torch.einsum("bgci,cij->bgij", k * s_kr, k_emb).transpose(2, 3))
        attn = F.softmax(logits.add_(t_sim), dim=3)
        s_out, t_out = s_out.view(g, gp, 2, 1), t_out.view(g, gp, 2).sum(dim=2).view(g * gp, 1)
        s_sv, s_sve = s_out[:, :, 0], s_out[:, :, 1]
        if self.gated:
            s_sv, s_sve = s_sv * self.f_sv, s_sve * self.f_sve
        out = torch.einsum("bgij,bgcj->bgci", attn, v) * s_sv + torch.einsum("bgij,cij->bgci", attn, v_emb) * s_sve
        return out.reshape(b, self.dim, length) + t_out


def _fold_bn(weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor | None, var: torch.Tensor | None,
             eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``x * scale + shift`` (differs from the unfolded form by about 1e-7)."""
    assert mean is not None and var is not None, "BatchNorm without running statistics"
    scale = weight * torch.rsqrt(var + eps)
    return scale, bias - mean * scale


class AxialBlock(nn.Module):
    """Residual axial block: conv_down 1x1 -> BN -> ReLU -> H-attention -> W-attention -> ReLU -> conv_up 1x1 -> BN,
    plus the (projected) identity, then ReLU. Output channels ``2*planes``; input resolution ``size`` = (H, W).

    ``unused_conv1`` adds the official ``AxialBlock_wopos.conv1`` (1x1 with bias), which the official forward
    never calls; it exists only so that the compatibility build holds every official parameter.
    """

    expansion = 2

    def __init__(self, inplanes: int, planes: int, size: tuple[int, int], stride: int = 1, groups: int = 8,
                 positional: bool = True, gated: bool = False, unused_conv1: bool = False):
        super().__init__()
        width, out = planes, planes * self.expansion
        self.conv_down = nn.Conv2d(inplanes, width, 1, bias=False)
        if unused_conv1:
            self.conv1 = nn.Conv2d(width, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        kw = dict(groups=groups, positional=positional, gated=gated)
        self.height_block = AxialAttention(width, size[0], **kw)
        self.width_block = AxialAttention(width, size[1], stride=stride, width=True, **kw)
        self.conv_up = nn.Conv2d(width, out, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv_down(x)))
        out = F.relu(self.width_block(self.height_block(out)))
        out = self.bn2(self.conv_up(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


def make_axial_layer(inplanes: int, planes: int, blocks: int, size: tuple[int, int], stride: int = 1,
                     **block_kw) -> nn.Sequential:
    """``blocks`` AxialBlocks; the first takes ``inplanes`` at resolution ``size`` and applies ``stride``."""
    layers = [AxialBlock(inplanes, planes, size, stride=stride, **block_kw)]
    size = (size[0] // stride, size[1] // stride)
    layers += [AxialBlock(planes * AxialBlock.expansion, planes, size, **block_kw) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def _gates(module: nn.Module) -> list[nn.Parameter]:
    return [getattr(m, name) for m in module.modules() if isinstance(m, AxialAttention) and m.gated
            for name in GATE_NAMES]


def set_gates_trainable(module: nn.Module, trainable: bool) -> int:
    """Freeze (``False``) or unfreeze (``True``) every gate G_Q, G_K, G_V1, G_V2 in ``module``.

    Returns how many gate tensors it touched (0 for models without gates, so it is safe on any model). A frozen
    gate gets no gradient, so optimizers skip it; build the optimizer over all parameters so that the gates train
    once unfrozen.
    """
    gates = _gates(module)
    for p in gates:
        p.requires_grad_(trainable)
    return len(gates)


def gates_trainable(module: nn.Module) -> bool | None:
    """True/False when every gate in ``module`` is trainable/frozen; None without gates or when mixed."""
    flags = {p.requires_grad for p in _gates(module)}
    return flags.pop() if len(flags) == 1 else None

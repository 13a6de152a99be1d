"""SimMIM masked-image modelling around a model's own Swin encoder (Xie et al., CVPR 2022).

Random ``mask_patch``-pixel squares of the input are hidden: their patch tokens are replaced by a learned
mask token before the Swin stages. A light head (a 1x1 convolution and pixel shuffle) predicts every pixel
from the last stage's tokens, and the loss is the L1 error on the hidden pixels only. The encoder modules
are the model's own (shared, not copied), so ``encoder_state_dict`` hands them back in the Swin-T
(Microsoft) layout that ``smaformer.weights.load_pretrained`` reads, through the model's
``pretrained_mapping``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# model attribute names of (stages, final norm), by encoder layout
_ENCODERS = (("layers", "norm"), ("encoder_layers", "encoder_norm"))


def swin_encoder_names(model: nn.Module) -> tuple[str, str]:
    """``(stages, norm)`` attribute names of a model with a Swin encoder (Swin-Unet, SMAFormer); ValueError
    for any other."""
    for stages, norm in _ENCODERS:
        if hasattr(model, "patch_embed") and isinstance(getattr(model, stages, None), nn.ModuleList) \
                and isinstance(getattr(model, norm, None), nn.LayerNorm) and hasattr(model, "pretrained_mapping"):
            return stages, norm
    raise ValueError(f"{type(model).__name__} has no Swin encoder to pretrain; SimMIM pretraining takes "
                     "swin_unet or smaformer")


def random_masks(batch: int, grid: tuple[int, int], ratio: float, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """(B, gh, gw) float masks with exactly ``ceil(ratio * gh * gw)`` ones each (SimMIM's count)."""
    n = grid[0] * grid[1]
    count = math.ceil(ratio * n)
    order = torch.rand(batch, n, generator=generator).argsort(1)
    masks = torch.zeros(batch, n)
    masks.scatter_(1, order[:, :count], 1.0)
    return masks.view(batch, *grid)


class SimMIM(nn.Module):
    """Masked-image modelling over ``model``'s patch embedding, Swin stages and final norm."""

    def __init__(self, model: nn.Module, mask_patch: int = 32):
        super().__init__()
        self.stages_name, self.norm_name = swin_encoder_names(model)
        self.patch_embed = model.patch_embed
        self.stages = getattr(model, self.stages_name)
        self.norm = getattr(model, self.norm_name)
        patch = self.patch_embed.patch_size
        self.stride = patch * 2 ** (len(self.stages) - 1)
        if mask_patch % patch:
            raise ValueError(f"mask_patch {mask_patch} must be a multiple of the patch size {patch}")
        self.mask_patch, self.tokens_per_mask = mask_patch, mask_patch // patch
        self.in_chans = self.patch_embed.proj.in_channels
        embed = self.patch_embed.proj.out_channels
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, embed))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = nn.Conv2d(self.norm.normalized_shape[0], self.stride ** 2 * self.in_chans, kernel_size=1)
        self._mapping = model.pretrained_mapping()

    def grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """The mask grid of an input size (ValueError unless the mask patch and the encoder stride divide it)."""
        step = math.lcm(self.mask_patch, self.stride)
        if size[0] % step or size[1] % step:
            raise ValueError(f"input {size[0]}x{size[1]} must be a multiple of {step} for SimMIM "
                             f"(mask patch {self.mask_patch}, encoder stride {self.stride})")
        return size[0] // self.mask_patch, size[1] // self.mask_patch

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``x`` (B, C, H, W) with the ``mask`` (B, gh, gw) squares hidden."""
        k = self.tokens_per_mask
        m = mask.repeat_interleave(k, 1).repeat_interleave(k, 2).unsqueeze(-1).to(x.dtype)
        t = self.patch_embed(x)
        t = t * (1 - m) + self.mask_token.to(t.dtype) * m
        for stage in self.stages:
            t = stage(t)
        t = self.norm(t).permute(0, 3, 1, 2)
        return F.pixel_shuffle(self.head(t), self.stride)

    def loss(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean L1 error over the hidden pixels (and channels) only."""
        if x.shape[1] != self.in_chans:          # Swin-Unet keeps a 3-channel embedding for grey input
            x = x.repeat(1, self.in_chans // x.shape[1], 1, 1)
        rec = self(x, mask).float()
        p = self.mask_patch
        m = mask.repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1).to(rec.dtype)
        return ((rec - x.float()).abs() * m).sum() / (m.sum() * x.shape[1] + 1e-5)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights under their Swin-T (Microsoft layout) names, CPU copies."""
        prefixes = {"patch_embed": self.patch_embed, self.stages_name: self.stages, self.norm_name: self.norm}
        out = {}
        for prefix, module in prefixes.items():
            for name, p in module.named_parameters():
                out[self._mapping[f"{prefix}.{name}"]] = p.detach().to("cpu", copy=True)
        return out

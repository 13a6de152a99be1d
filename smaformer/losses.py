"""Segmentation losses used by the presets.

- ``DiceLoss``: soft Dice on softmax probabilities, computed over the whole batch per class, as the
  Swin-Unet/TransUNet utils do (squared denominators, background included, smooth 1e-5 by default).
- ``SegLoss``: weighted sum ``ce * CE + dice * Dice + focal * Focal``. ``ohem_ratio`` keeps only the
  hardest fraction of pixels in the CE term (SMAFormer's CeDiceFocalLoss uses 0.25 with weights
  [0.2, 0.4, 0.4]); Swin-Unet's recipe is ``ce=0.4, dice=0.6``.

Losses are computed in float32 whatever the autocast precision of the logits.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class DiceLoss(nn.Module):
    """``1 - (2|P∩T| + s) / (|P|² + |T|² + s)`` per class, then a (weighted) mean over classes."""

    def __init__(self, num_classes: int, squared: bool = True, include_background: bool = True,
                 smooth: float = 1e-5, class_weights: Sequence[float] | None = None):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + foreground), got {num_classes}")
        self.num_classes = num_classes
        self.squared = squared
        self.first = 0 if include_background else 1
        self.smooth = smooth
        w = torch.ones(num_classes) if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if w.numel() != num_classes:
            raise ValueError(f"class_weights has {w.numel()} entries; the model has {num_classes} classes")
        self.register_buffer("weights", w, persistent=False)

    def per_class(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Dice loss of each class, shape (K,)."""
        probs = logits.float().softmax(dim=1)
        onehot = F.one_hot(target.long(), self.num_classes).permute(0, 3, 1, 2).to(probs.dtype)
        dims = (0, 2, 3)
        inter = (probs * onehot).sum(dims)
        if self.squared:
            denom = (probs * probs).sum(dims) + (onehot * onehot).sum(dims)
        else:
            denom = probs.sum(dims) + onehot.sum(dims)
        return 1 - (2 * inter + self.smooth) / (denom + self.smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.per_class(logits, target)[self.first:]
        w = self.weights[self.first:].to(loss.device)
        return (loss * w).sum() / loss.numel()


class SegLoss(nn.Module):
    """Weighted CE (optionally OHEM) + Dice + focal loss for (B,K,H,W) logits and (B,H,W) labels."""

    def __init__(self, num_classes: int, ce: float = 0.5, dice: float = 0.5, focal: float = 0.0,
                 ohem_ratio: float | None = None, focal_gamma: float = 2.0, dice_squared: bool = True,
                 dice_include_background: bool = True, dice_smooth: float = 1e-5,
                 class_weights: Sequence[float] | None = None):
        super().__init__()
        if ce < 0 or dice < 0 or focal < 0 or ce + dice + focal <= 0:
            raise ValueError(f"loss weights must be >= 0 with a positive sum; got ce={ce}, dice={dice}, focal={focal}")
        if ohem_ratio is not None and not 0 < ohem_ratio <= 1:
            raise ValueError(f"ohem_ratio must be in (0, 1], got {ohem_ratio}")
        self.w_ce, self.w_dice, self.w_focal = float(ce), float(dice), float(focal)
        self.ohem_ratio = ohem_ratio
        self.gamma = float(focal_gamma)
        self.dice = DiceLoss(num_classes, dice_squared, dice_include_background, dice_smooth, class_weights)
        cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("ce_weights", cw, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        target = target.long()
        total = logits.new_zeros(())
        if self.w_ce or self.w_focal:
            nll = F.cross_entropy(logits, target, reduction="none")   # -log p_t, once for CE and focal
            ce_map = nll if self.ce_weights is None else nll * self.ce_weights[target]
        if self.w_ce:
            if self.ohem_ratio is not None and self.ohem_ratio < 1:
                flat = ce_map.flatten()
                k = max(int(self.ohem_ratio * flat.numel()), 1)
                ce = flat.topk(k).values.mean()
            elif self.ce_weights is not None:   # same normalisation as nn.CrossEntropyLoss(weight=...)
                ce = ce_map.sum() / self.ce_weights[target].sum()
            else:
                ce = ce_map.mean()
            total = total + self.w_ce * ce
        if self.w_dice:
            total = total + self.w_dice * self.dice(logits, target)
        if self.w_focal:
            pt = torch.exp(-nll)
            total = total + self.w_focal * ((1 - pt) ** self.gamma * ce_map).mean()
        return total


def build_loss(cfg: dict, num_classes: int) -> SegLoss:
    """``SegLoss`` from the ``loss`` section of a config."""
    c = cfg["loss"]
    return SegLoss(num_classes, ce=float(c["ce"]), dice=float(c["dice"]), focal=float(c["focal"]),
                   ohem_ratio=c["ohem_ratio"], focal_gamma=float(c["focal_gamma"]),
                   dice_squared=bool(c["dice_squared"]), dice_include_background=bool(c["dice_include_background"]),
                   dice_smooth=float(c["dice_smooth"]), class_weights=c["class_weights"])

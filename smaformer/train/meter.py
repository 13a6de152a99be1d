"""What the training step keeps on the device, so that it makes no host sync (issue 23).

``DeviceLoss`` sums the step losses and records the first non-finite one with its iteration, all with
device ops; ``read`` is the one host sync, done at the log cadence, at the epoch end and before a
checkpoint. ``memory_format`` says where channels-last pays: the convolutional models (their class's
``convolution``).
"""
from __future__ import annotations

import torch

from smaformer.errors import DivergedError


def memory_format(model: torch.nn.Module, cfg: dict, device: torch.device) -> torch.memory_format:
    """``train.channels_last``; null: on for an all-convolution model (``convolution == "all"``, the U-Net:
    its CPU step takes 0.88x the time), and on CUDA also for one with a CNN part ("part": TransUNet's R50, the
    HBFormer decoders), where NHWC is cuDNN's fast layout (unverified; their CPU step took 1.10x)."""
    on = cfg["train"]["channels_last"]
    if on is None:
        kind = getattr(model, "convolution", "none")
        on = kind == "all" or (kind == "part" and device.type == "cuda")
    return torch.channels_last if on else torch.contiguous_format


class DeviceLoss:
    """The epoch's loss sum, the first non-finite step (-1: none) and its loss, on ``device``."""

    def __init__(self, device: torch.device, value: float = 0.0):
        self.dtype = torch.float32 if device.type == "mps" else torch.float64     # MPS has no float64
        self.sum = torch.full((), value, dtype=self.dtype, device=device)
        self.bad_at = torch.full((), -1.0, dtype=self.dtype, device=device)
        self.bad_loss = torch.zeros((), dtype=self.dtype, device=device)

    def add(self, loss: torch.Tensor, iteration: int) -> None:
        """Add a step's loss (a 0-d tensor of ``dtype``); remember it and ``iteration`` if it is the first bad one."""
        first_bad = torch.isfinite(loss).logical_not_().logical_and_(self.bad_at < 0)
        self.bad_at = torch.where(first_bad, float(iteration), self.bad_at)
        self.bad_loss = torch.where(first_bad, loss, self.bad_loss)
        self.sum += loss

    def read(self) -> float:
        """The sum, read to the host (the sync); a non-finite loss since the start raises DivergedError."""
        total, bad_at, bad_loss = torch.stack([self.sum, self.bad_at, self.bad_loss]).tolist()
        if bad_at >= 0:
            raise DivergedError(f"loss is {bad_loss} at iteration {int(bad_at)}; lower optim.lr or use fp32")
        return total

    def reset(self, value: float = 0.0) -> None:
        self.sum.fill_(value)

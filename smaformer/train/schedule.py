"""Optimizers and per-iteration learning-rate schedules (linear warm-up, then poly or cosine).

The schedule is a pure function of the optimizer-step count, so its state is one integer and a resumed
run sets exactly the same learning rates as an uninterrupted one.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from smaformer.config import effective_lr


def build_optimizer(cfg: dict, model: nn.Module, device: torch.device | None = None) -> torch.optim.Optimizer:
    """SGD / Adam / AdamW from the ``optim`` section, over the trainable parameters.

    On CUDA the fused kernels update every parameter in a few launches (``fused=True``); elsewhere torch's
    default implementation runs, so CPU runs keep their bit-exact history."""
    o = cfg["optim"]
    lr, wd = effective_lr(cfg), float(o["weight_decay"])
    params = [p for p in model.parameters() if p.requires_grad]
    fast = {"fused": True} if device is not None and device.type == "cuda" else {}
    if o["name"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(o["momentum"]), weight_decay=wd, **fast)
    cls = torch.optim.AdamW if o["name"] == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=wd, betas=tuple(float(b) for b in o["betas"]), **fast)


def lr_factor(step: int, total: int, name: str, warmup: int = 0, warmup_start: float = 1e-3,
              min_ratio: float = 0.0, power: float = 0.9) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based) of ``total``.

    - poly: ``(1 - t/T) ** power`` (Swin-Unet/TransUNet, per iteration);
    - cosine: ``min + (1 - min) * (1 + cos(pi t/T)) / 2`` down to ``min_ratio``;
    - constant: 1.
    During the first ``warmup`` steps the factor rises linearly from ``warmup_start`` to its value at the
    end of warm-up; ``t`` and ``T`` count the steps after warm-up.
    """
    if warmup > 0 and step < warmup:
        end = lr_factor(warmup, total, name, warmup, warmup_start, min_ratio, power)
        return warmup_start + (end - warmup_start) * step / warmup
    t, span = step - warmup, max(total - warmup, 1)
    frac = min(t / span, 1.0)
    if name == "poly":
        return max(1.0 - frac, 0.0) ** power
    if name == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
    return 1.0


class IterScheduler:
    """Sets every param group's lr from the step count; ``state_dict`` is just that count."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: dict, total_steps: int):
        s = cfg["schedule"]
        self.optimizer, self.total = optimizer, int(total_steps)
        self.base = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        for g, b in zip(optimizer.param_groups, self.base, strict=True):
            g["initial_lr"] = b
        self.name, self.warmup, self.power = s["name"], int(s["warmup_iters"]), float(s["power"])
        self.warmup_start = float(s["warmup_start_factor"])
        self.min_ratio = float(s["min_lr"]) / self.base[0] if self.base[0] > 0 else 0.0
        self.step_count = 0
        self._apply()

    def factor(self, step: int) -> float:
        return lr_factor(step, self.total, self.name, self.warmup, self.warmup_start, self.min_ratio, self.power)

    def _apply(self) -> None:
        f = self.factor(self.step_count)
        for g, b in zip(self.optimizer.param_groups, self.base, strict=True):
            g["lr"] = b * f

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self._apply()

"""What the training step minimises: the supervised loss, or that loss plus distillation from a frozen teacher.

``build_objective(cfg, ...)`` returns an ``Objective``; the Trainer calls ``objective(net, x, y, iteration)``
and never knows whether a teacher is there. With ``distill.teachers`` set (``smaformer train --teacher``):

    loss = (1 - a) * supervised + a * (soft * KL_T + hard * Hard + dice * SoftDice),  a = weight * ramp(iteration)

- ``soft``: Hinton's per-pixel ``T² · KL(softmax(t/T) ‖ softmax(s/T))``, averaged over pixels, or with
  ``balanced: true`` averaged within each teacher class and then over the classes present (background pixels
  no longer outweigh a 4% foreground);
- ``hard``: DeiT's hard label, the recipe's own supervised loss (its CE and Dice terms) against the teacher's
  argmax;
- ``dice``: a soft Dice of the student's probabilities against the teacher's, per class (class-balanced by
  construction).

The teacher is one smaformer checkpoint or several (their softmax averaged, as ``predict`` does). It runs
frozen, under ``inference_mode``, on the student's augmented batch: its own size (bilinear, logits resized
back), channel mode and class list come from its checkpoint; its intensity normalisation must equal the
student's. Nothing here reads a tensor to the host.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from smaformer.checkpoint import load_checkpoint
from smaformer.data.preprocess import make_channels
from smaformer.errors import InputError
from smaformer.io_utils import file_sha256
from smaformer.losses import SegLoss, build_loss


class Teacher(nn.Module):
    """Frozen teacher checkpoints; ``forward(x)`` gives each member's logits at ``x``'s size."""

    def __init__(self, paths: list[str], classes: list[str], preprocessing: dict, device: torch.device):
        super().__init__()
        members, self.specs = [], []
        for path in paths:
            if not Path(path).is_file():
                raise InputError(path, "teacher checkpoint not found")
            model, info = load_checkpoint(path, device)
            if list(info["classes"]) != list(classes):
                raise InputError(path, f"teacher classes {info['classes']} differ from the student's {classes}; "
                                       "a teacher must be trained on the same labels")
            pre = info["preprocessing"]
            if pre["intensity"] != preprocessing["intensity"]:
                raise InputError(path, f"teacher intensity {pre['intensity']} differs from the student's "
                                       f"{preprocessing['intensity']}; train the teacher with the same data.intensity")
            mine = (pre["channel_mode"], pre["in_chans"])
            theirs = (preprocessing["channel_mode"], preprocessing["in_chans"])
            if "none" in (mine[0], theirs[0]) and mine != theirs:
                raise InputError(path, "teacher and student must share channel_mode 'none' and in_chans")
            model.requires_grad_(False)
            members.append(model)
            self.specs.append(pre)
        self.members = nn.ModuleList(members)
        self.student_pre = preprocessing

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)      # always eval: frozen statistics, no dropout

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        size = tuple(x.shape[-2:])
        out = []
        for model, pre in zip(self.members, self.specs, strict=True):
            xt = x
            if (pre["channel_mode"], pre["in_chans"]) != (self.student_pre["channel_mode"],
                                                          self.student_pre["in_chans"]):
                xt = make_channels(x[:, :1], pre["channel_mode"], int(pre["in_chans"]))   # channel 0 is the grey image
            if tuple(pre["img_size"]) != size:
                xt = F.interpolate(xt, size=tuple(pre["img_size"]), mode="bilinear", align_corners=False)
            logits = model(xt).float()
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            out.append(logits)
        return out


def soft_kl(student: torch.Tensor, teacher_probs: torch.Tensor, temperature: float,
            balance_by: torch.Tensor | None = None) -> torch.Tensor:
    """``T² · KL(teacher_probs ‖ softmax(student/T))`` per pixel, then the mean over pixels; with ``balance_by``
    (B,H,W class ids) the mean within each class first, then over the classes present."""
    kl = (torch.xlogy(teacher_probs, teacher_probs) - teacher_probs * F.log_softmax(student / temperature, 1)).sum(1)
    kl = kl * temperature ** 2
    if balance_by is None:
        return kl.mean()
    onehot = F.one_hot(balance_by, teacher_probs.shape[1]).to(kl.dtype)        # (B,H,W,K)
    count = onehot.sum((0, 1, 2))
    per_class = (kl.unsqueeze(-1) * onehot).sum((0, 1, 2)) / count.clamp_min(1)
    present = (count > 0).to(kl.dtype)
    return (per_class * present).sum() / present.sum()


def soft_dice(student: torch.Tensor, teacher_probs: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Mean over classes of ``1 - (2 Σ p_s p_t + s) / (Σ p_s² + Σ p_t² + s)`` over the batch."""
    p = student.softmax(1)
    dims = (0, 2, 3)
    inter = (p * teacher_probs).sum(dims)
    denom = (p * p).sum(dims) + (teacher_probs * teacher_probs).sum(dims)
    return (1 - (2 * inter + smooth) / (denom + smooth)).mean()


class Objective(nn.Module):
    """The supervised loss of the recipe: ``loss(net(x), y)``."""

    def __init__(self, loss: SegLoss):
        super().__init__()
        self.loss = loss

    def forward(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, iteration: int) -> torch.Tensor:
        return self.loss(net(x), y)


class DistillObjective(Objective):
    """The supervised loss blended with distillation from ``teacher`` (see the module docstring)."""

    def __init__(self, loss: SegLoss, teacher: Teacher, spec: dict):
        super().__init__(loss)
        self.teacher = teacher
        self.weight, self.ramp = float(spec["weight"]), int(spec["ramp_iters"])
        self.w_soft, self.w_hard, self.w_dice = float(spec["soft"]), float(spec["hard"]), float(spec["dice"])
        self.temperature, self.balanced = float(spec["temperature"]), bool(spec["balanced"])

    def blend(self, iteration: int) -> float:
        """``a``: the distillation share at this optimizer step (a Python number: no sync)."""
        return self.weight * (min(1.0, iteration / self.ramp) if self.ramp > 0 else 1.0)

    def distill_terms(self, logits: torch.Tensor, teacher_logits: list[torch.Tensor]) -> torch.Tensor:
        """``soft * KL_T + hard * Hard + dice * SoftDice`` against the (averaged) teacher."""
        t = self.temperature
        # clone(): tensors made under inference_mode cannot be saved for the student's backward
        probs = torch.stack([tl.softmax(1) for tl in teacher_logits]).mean(0).clone()
        hard = probs.argmax(1)
        total = logits.new_zeros(())
        if self.w_soft:
            probs_t = probs if t == 1 else torch.stack([(tl / t).softmax(1) for tl in teacher_logits]).mean(0).clone()
            total = total + self.w_soft * soft_kl(logits, probs_t, t, hard if self.balanced else None)
        if self.w_hard:
            total = total + self.w_hard * self.loss(logits, hard)
        if self.w_dice:
            total = total + self.w_dice * soft_dice(logits, probs)
        return total

    def forward(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, iteration: int) -> torch.Tensor:
        teacher_logits = self.teacher(x)
        logits = net(x).float()
        a = self.blend(iteration)
        return (1 - a) * self.loss(logits, y) + a * self.distill_terms(logits, teacher_logits)


def build_objective(cfg: dict, classes: list[str], preprocessing: dict, device: torch.device) -> Objective:
    """The supervised ``Objective``, or a ``DistillObjective`` when ``distill.teachers`` is set. The teachers'
    SHA-256 are recorded in ``cfg['distill']['teacher_sha256']`` (a resumed run must find the same files)."""
    loss = build_loss(cfg, len(classes)).to(device)
    spec = cfg["distill"]
    if not spec["teachers"]:
        return Objective(loss)
    sha = [file_sha256(p) if Path(p).is_file() else "" for p in spec["teachers"]]
    recorded = spec.get("teacher_sha256") or []
    for path, old, new in zip(spec["teachers"], recorded, sha, strict=False):
        if old and old != new:
            raise InputError(path, f"teacher changed since the run started (sha256 {old[:12]}, now {new[:12]}); "
                                   "resume needs the same teacher file")
    teacher = Teacher(spec["teachers"], classes, preprocessing, device)
    spec["teacher_sha256"] = sha
    return DistillObjective(loss, teacher, spec)

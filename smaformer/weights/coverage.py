"""What a pretrained loader put where: per-part coverage, and the one copy loop every loader shares
(Swin-T in ``pretrained``, Google's R50+ViT-B/16 npz in ``google_npz``)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn


@dataclass
class PartCoverage:
    """Matched/total parameter tensors and parameter elements of one model part."""

    tensors_loaded: int = 0
    tensors_total: int = 0
    params_loaded: int = 0
    params_total: int = 0


@dataclass
class CoverageReport:
    """What ``load_pretrained`` put where; ``str()`` prints a table."""

    layout: str
    parts: dict[str, PartCoverage] = field(default_factory=dict)
    loaded: list[str] = field(default_factory=list)
    interpolated: list[str] = field(default_factory=list)
    not_loaded: dict[str, str] = field(default_factory=dict)
    buffers_matched: list[str] = field(default_factory=list)
    unused_checkpoint_keys: list[str] = field(default_factory=list)
    source: str = "Swin-T"  # what was loaded ("R50+ViT-B/16" for Google's npz)

    @property
    def params_loaded(self) -> int:
        return sum(p.params_loaded for p in self.parts.values())

    @property
    def params_total(self) -> int:
        return sum(p.params_total for p in self.parts.values())

    @property
    def tensors_loaded(self) -> int:
        """Parameter tensors loaded plus computed buffers that agree with the checkpoint's."""
        return len(self.loaded) + len(self.buffers_matched)

    @property
    def coverage(self) -> float:
        return self.params_loaded / max(self.params_total, 1)

    def __str__(self) -> str:
        rows = [f"pretrained {self.source} ({self.layout} layout)",
                f"{'part':<10}{'tensors':>14}{'params loaded':>18}{'params total':>16}{'%':>9}"]
        for name, p in self.parts.items():
            pct = 100.0 * p.params_loaded / max(p.params_total, 1)
            rows.append(f"{name:<10}{f'{p.tensors_loaded}/{p.tensors_total}':>14}"
                        f"{p.params_loaded:>18,}{p.params_total:>16,}{pct:>8.2f}%")
        rows.append(f"{'total':<10}{len(self.loaded):>14}{self.params_loaded:>18,}{self.params_total:>16,}"
                    f"{100.0 * self.coverage:>8.2f}%")
        rows.append(f"tensors loaded: {self.tensors_loaded} ({len(self.loaded)} parameters + "
                    f"{len(self.buffers_matched)} computed buffers equal to the checkpoint's)")
        if self.interpolated:
            what = "bias tables" if self.source == "Swin-T" else "position embeddings"
            rows.append(f"{what} interpolated to the model's window or grid: {len(self.interpolated)}")
        if self.not_loaded:
            rows.append(f"not loaded ({len(self.not_loaded)}):")
            reasons: dict[str, list[str]] = {}
            for key, why in self.not_loaded.items():
                reasons.setdefault(why, []).append(key)
            for why, keys in reasons.items():
                rows.append(f"  {why}: {len(keys)} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})")
        if self.unused_checkpoint_keys:
            rows.append(f"checkpoint keys not used: {len(self.unused_checkpoint_keys)}")
        return "\n".join(rows)


def _part_of(name: str, parts: dict[str, tuple[str, ...]]) -> str:
    for part, prefixes in parts.items():
        if name.startswith(prefixes):
            return part
    return "other"


def copy_mapped(model: nn.Module, mapping: dict[str, str], source: dict, report: CoverageReport,
                adapt: Callable[[str, str, object, torch.Tensor], tuple[torch.Tensor, bool]],
                names: tuple[str, str]) -> set[str]:
    """Copy ``adapt(source[mapping[name]])`` into each mapped parameter and fill ``report`` per part (the one
    loop of every pretrained loader); returns the source keys used. ``adapt`` returns the tensor in our
    layout and whether it was resized; ``names`` = (what the source is, what holds it), for the reasons."""
    parts = getattr(model, "parts", {"model": ("",)})
    for p in parts:
        report.parts.setdefault(p, PartCoverage())
    used: set[str] = set()
    with torch.no_grad():
        for name, param in model.named_parameters():
            part = report.parts.setdefault(_part_of(name, parts), PartCoverage())
            part.tensors_total += 1
            part.params_total += param.numel()
            key = mapping.get(name)
            if key is None:
                report.not_loaded[name] = f"no {names[0]} counterpart"
                continue
            if key not in source:
                report.not_loaded[name] = f"missing in {names[1]}"
                continue
            used.add(key)
            value, resized = adapt(name, key, source[key], param)
            if resized:
                report.interpolated.append(name)
            if value.shape != param.shape:
                report.not_loaded[name] = "shape mismatch"
                continue
            param.copy_(value.to(param.dtype))
            report.loaded.append(name)
            part.tensors_loaded += 1
            part.params_loaded += param.numel()
    return used

"""``smaformer info MODEL|CHECKPOINT``: params per part, FLOPs at the configured size, input size,
the pretrained coverage (``--pretrained``) and an architecture page (``--html``).

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts matmuls, convolutions and
attention (2 FLOPs per multiply-accumulate) and ignores element-wise work; both GFLOP and GMAC are printed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from smaformer.errors import InputError, did_you_mean
from smaformer.models import create_model, list_models
from smaformer.models.layers.window_attention import attention_path
from smaformer.models.registry import tiny_kwargs


@dataclass
class ModelInfo:
    """What ``info`` knows about a model: its name, kwargs, input shape and, for checkpoints, metadata."""

    name: str
    kwargs: dict
    input_shape: tuple[int, int, int, int]
    source: str = "registry"
    checkpoint: dict = field(default_factory=dict)


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return int(v[0]), int(v[-1])
    return int(v), int(v)


def input_shape_of(model: nn.Module, preprocessing: dict | None = None,
                   img_size=None, batch: int = 1) -> tuple[int, int, int, int]:
    """(B, C, H, W) the model runs at: explicit ``img_size``, else the checkpoint's preprocessing, else the
    model's configured ``img_size`` (attribute or kwarg), else 224."""
    pre = preprocessing or {}
    kw = getattr(model, "model_kwargs", {})
    size = img_size or pre.get("img_size") or getattr(model, "img_size", None) or kw.get("img_size") or 224
    chans = pre.get("in_chans") or getattr(model, "in_chans", None) or kw.get("in_chans") or 3
    return (batch, int(chans), *_pair(size))


def resolve(target: str, *, tiny: bool = False, img_size=None, num_classes: int | None = None,
            in_chans: int | None = None, model_args: dict | None = None) -> tuple[nn.Module, ModelInfo]:
    """Build the model named by ``target`` (a registered name or a checkpoint path) in eval mode.

    ``model_args`` are further constructor keywords (e.g. ``resize_to=224``), for model names only."""
    path = Path(target)
    if path.suffix in (".pt", ".pth", ".ckpt", ".safetensors", ".json") or path.is_file():
        from smaformer.checkpoint import load_checkpoint

        model, ck = load_checkpoint(path)
        shape = input_shape_of(model, ck.get("preprocessing"), img_size)
        return model, ModelInfo(ck["model"]["name"], dict(ck["model"]["kwargs"]), shape, str(path), ck)
    if target not in list_models():
        raise InputError(target, f"neither a checkpoint file nor a registered model"
                                 f"{did_you_mean(target, list_models())}; models: {', '.join(list_models())}")
    kwargs = tiny_kwargs(target) if tiny else {}
    for key, val in (("img_size", img_size), ("num_classes", num_classes), ("in_chans", in_chans)):
        if val is not None:
            kwargs[key] = val
    kwargs.update(model_args or {})
    try:
        model = create_model(target, **kwargs).eval()
    except ValueError as e:  # a size or argument the model does not take: one line, not a traceback
        raise InputError(None, str(e)) from None
    return model, ModelInfo(target, kwargs, input_shape_of(model, None, img_size))


def params_per_part(model: nn.Module) -> list[tuple[str, int]]:
    """Parameter counts per entry of the model's ``parts``; parameters no prefix covers go to ``(other)``."""
    parts: dict[str, tuple[str, ...]] = getattr(model, "parts", {}) or {}
    counts = dict.fromkeys(parts, 0)
    other = 0
    for name, p in model.named_parameters():
        part = next((k for k, prefixes in parts.items()
                     if any(name == pre or name.startswith(pre.rstrip(".") + ".") for pre in prefixes)), None)
        if part is None:
            other += p.numel()
        else:
            counts[part] += p.numel()
    rows = list(counts.items())
    if other or not rows:
        rows.append(("(other)", other))
    return rows


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass at ``input_shape`` (2 FLOPs per multiply-accumulate)."""
    device = next(model.parameters(), torch.empty(0)).device
    x = torch.zeros(input_shape, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), attention_path("explicit"), counter:  # the fused SDPA kernel has no FLOP formula
        model(x)
    return int(counter.get_total_flops())


def _fmt(n: float) -> str:
    return f"{n / 1e6:,.3f} M" if n < 1e9 else f"{n / 1e9:,.3f} G"


def format_info(model: nn.Module, meta: ModelInfo, flops: int | None) -> str:
    """The text report: model, input, params per part, FLOPs, and checkpoint metadata when present."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines = [f"model      {meta.name}  ({meta.source})",
             f"kwargs     {meta.kwargs}",
             f"input      {tuple(meta.input_shape)}  (B, C, H, W)",
             "", f"{'part':<16}{'params':>14}{'share':>9}"]
    for part, n in params_per_part(model):
        lines.append(f"{part:<16}{n:>14,}{(100.0 * n / total if total else 0):>8.1f}%")
    lines.append(f"{'total':<16}{total:>14,}   ({_fmt(total)}; trainable {trainable:,})")
    if flops is not None:
        lines += ["", f"FLOPs      {flops / 1e9:.4g} GFLOP per image at {meta.input_shape[2]}x{meta.input_shape[3]}"
                      f"  = {flops / 2e9:.4g} GMAC  (1 MAC = 2 FLOP; matmul/conv/attention only)"]
    ck = meta.checkpoint
    if ck:
        lines += ["", f"classes    {ck.get('classes')}", f"preprocess {ck.get('preprocessing')}"]
        if ck.get("metrics"):
            lines.append(f"metrics    {ck['metrics']}")
    flags = getattr(model, "export_flags", None)
    if flags:
        lines.append(f"export     {flags}")
    return "\n".join(lines)


def pretrained_coverage(model: nn.Module, path: str) -> str:
    """``str()`` of the CoverageReport from ``smaformer.weights.load_pretrained``."""
    try:
        from smaformer.weights import load_pretrained
    except ImportError:
        raise InputError(path, "this build has no smaformer.weights.load_pretrained") from None
    return str(load_pretrained(model, path))

"""Load ImageNet Swin-T weights (Microsoft or timm layout) into a model, with a coverage report.

Protocol (one method per model):

    model.pretrained_mapping() -> dict[str, str]

maps each of the model's *parameter* names that has a Swin-T counterpart to that counterpart's name in
the canonical **Microsoft layout** (microsoft/Swin-Transformer ``SwinTransformer``)::

    patch_embed.proj.{weight,bias}   patch_embed.norm.{weight,bias}
    layers.{i}.blocks.{j}.{norm1,norm2}.{weight,bias}
    layers.{i}.blocks.{j}.attn.{qkv,proj}.{weight,bias}
    layers.{i}.blocks.{j}.attn.relative_position_bias_table
    layers.{i}.blocks.{j}.mlp.{fc1,fc2}.{weight,bias}
    layers.{i}.downsample.{norm.weight,norm.bias,reduction.weight}   (PatchMerging at the END of stage i, i=0..2)
    norm.{weight,bias}   head.{weight,bias}

Several model names may map to the same Swin-T name (a mirrored decoder reuses encoder blocks). Parameters
left out of the mapping are reported as "no Swin-T counterpart". ``load_pretrained`` then:

1. reads the checkpoint (path or dict; unwraps ``model``/``state_dict`` containers and ``module.``) and
   normalises timm's layout to Microsoft's (timm puts PatchMerging at the START of the next stage,
   ``layers.{i+1}.downsample`` -> ``layers.{i}.downsample``, and names the classifier ``head.fc``);
2. copies each mapped tensor whose shape matches; a ``relative_position_bias_table`` whose window differs
   (e.g. 7 -> 8 for 256 inputs) is interpolated bicubically; any other mismatch is not loaded (reason given);
3. counts the computed buffers (``relative_position_index``, ``attn_mask``) that the checkpoint holds for a
   mapped block and that equal the values the block computes itself; they are never loaded (ours are
   computed), but the official loaders copy them, so counting them makes tensor totals comparable
   (Swin-Unet at 224: 197 parameters + 20 buffers = 217 tensors, as ``SwinUnet.load_from`` reports).

Per-part totals come from the model's ``parts`` attribute (part -> parameter-name prefixes).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn as nn

from smaformer.errors import InputError
from smaformer.models.layers.window_attention import interpolate_rel_pos_table
from smaformer.weights.coverage import CoverageReport, copy_mapped
from smaformer.weights.google_npz import is_google_npz, load_google_npz
from smaformer.weights.official import COMPUTED_BUFFERS, read_state_dict

_TABLE = "relative_position_bias_table"


def to_microsoft_layout(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Normalise a Swin-T state dict to the Microsoft layout; returns (state_dict, detected layout name)."""
    downs = {int(m.group(1)) for k in state_dict if (m := re.match(r"layers\.(\d+)\.downsample\.", k))}
    timm = "head.fc.weight" in state_dict or (bool(downs) and 0 not in downs)
    if not timm:
        return dict(state_dict), "microsoft"
    out = {}
    for key, value in state_dict.items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        if m:
            key = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
        elif key.startswith("head.fc."):
            key = "head." + key[len("head.fc."):]
        out[key] = value
    return out, "timm"


def _count_buffers(model: nn.Module, mapping: dict[str, str], ckpt: dict[str, torch.Tensor]) -> list[str]:
    """Checkpoint buffers of mapped blocks that equal what our blocks compute (see the module docstring)."""
    matched = []
    suffix = "attn.qkv.weight"
    for ours, src in mapping.items():
        if not (ours.endswith(suffix) and src.endswith(suffix)):
            continue
        ours_block, src_block = ours[: -len(suffix)], src[: -len(suffix)]
        block = model.get_submodule(ours_block.rstrip("."))
        index = ckpt.get(src_block + "attn.relative_position_index")
        own_index = getattr(block.attn, "relative_position_index", None)
        if index is not None and own_index is not None and index.shape == own_index.shape \
                and torch.equal(index.to(own_index), own_index):
            matched.append(ours_block + "attn.relative_position_index")
        mask = ckpt.get(src_block + "attn_mask")
        if mask is not None and hasattr(block, "window_mask") and mask.dim() == 3:
            side = math.isqrt(mask.shape[0]) * math.isqrt(mask.shape[1])
            own = block.window_mask(side, side, torch.device("cpu"))
            if own is not None and own.shape == mask.shape and torch.equal(own, mask.float()):
                matched.append(ours_block + "attn_mask")
    return matched


def load_pretrained(model: nn.Module, path_or_state_dict: str | Path | dict) -> CoverageReport:
    """Load ImageNet Swin-T weights into ``model`` via its ``pretrained_mapping()``; returns the coverage.
    A ``.npz`` path or a dict of Google ViT keys goes to ``google_npz.load_google_npz`` (TransUNet)."""
    if is_google_npz(path_or_state_dict):
        return load_google_npz(model, path_or_state_dict)
    mapping_fn = getattr(model, "pretrained_mapping", None)
    if mapping_fn is None:
        raise InputError(None, f"{type(model).__name__} defines no pretrained_mapping(); it cannot take Swin-T "
                               "weights")
    ckpt, layout = to_microsoft_layout(read_state_dict(path_or_state_dict))
    mapping = mapping_fn()
    report = CoverageReport(layout=layout)

    def adapt(name: str, key: str, value: torch.Tensor, param: torch.Tensor) -> tuple[torch.Tensor, bool]:
        if value.shape != param.shape and name.endswith(_TABLE) and value.dim() == 2 \
                and value.shape[1] == param.shape[1]:
            return interpolate_rel_pos_table(value, (math.isqrt(param.shape[0]) + 1) // 2), True
        return value, False

    used = copy_mapped(model, mapping, ckpt, report, adapt, ("Swin-T", "checkpoint"))
    report.buffers_matched = _count_buffers(model, mapping, ckpt)
    report.unused_checkpoint_keys = sorted(k for k in ckpt if k not in used and not k.endswith(COMPUTED_BUFFERS))
    return report

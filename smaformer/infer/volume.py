"""Slice-wise volume inference: the one protocol used by validation, evaluation and prediction (DESIGN.md §4).

Each slice along axis 0 is normalised with the checkpoint's intensity spec, resized to the model input,
turned into the model's channels and run through the model; the **logits** are resized back to the slice
size (bilinear, ``align_corners=False``) and only then argmaxed, which avoids the mosaic edges of
zooming an argmax with nearest neighbour.

Input resizing (our choice): torch bicubic (``align_corners=False``), the GPU-friendly equivalent of the
official ``scipy.ndimage.zoom(order=3)``. ``legacy_resize=True`` reproduces the official TransUNet /
Swin-Unet / SMAFormer test scripts instead: ``zoom(order=3)`` in, argmax at model size, ``zoom(order=0)``
of the labels back.

Memory stays bounded, whatever the volume: there is one loop over batches of slices. Each batch is
normalised on its own (whole-volume statistics are fixed first, ``fix_volume_statistics``, which for
zscore/minmax takes one float32 pass over the volume), so the raw volume keeps its stored type (int16 CT
stays int16); only one batch of logits exists at a time; the output is a uint8 label volume and, when
asked, float16 probabilities.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage

from smaformer.data.preprocess import fix_volume_statistics, make_channels, normalize_intensity
from smaformer.runtime import PRECISIONS, autocast


def as_stack(volume: np.ndarray) -> np.ndarray:
    """A (D,H,W) or (D,C,H,W) volume as (D,C,H,W), in its stored dtype (a view, no copy)."""
    vol = np.asarray(volume)
    if vol.ndim == 3:
        vol = vol[:, None]
    if vol.ndim != 4:
        raise ValueError(f"volume must be (D,H,W) or (D,C,H,W), got shape {tuple(np.shape(volume))}")
    return vol


def _legacy_zoom_in(batch: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The official scripts' ``zoom(slice, (h/H, w/W), order=3)``, for a (B,C,H,W) batch."""
    h, w = batch.shape[-2:]
    if (h, w) == size:
        return batch
    return np.stack([ndimage.zoom(s, (1, size[0] / h, size[1] / w), order=3) for s in batch]).astype(np.float32)


def _legacy_zoom_out(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The official scripts' ``zoom(prediction, (H/h, W/w), order=0)`` for a (B,h,w) label batch."""
    h, w = labels.shape[-2:]
    if (h, w) == size:
        return labels
    return np.stack([ndimage.zoom(s, (size[0] / h, size[1] / w), order=0) for s in labels])


@contextlib.contextmanager
def _eval_mode(model: Callable):
    """Put an ``nn.Module`` in eval mode for the duration and restore its previous mode after."""
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def infer_volume(model: Callable[[torch.Tensor], torch.Tensor], volume: np.ndarray, preprocessing: dict, *,
                 batch_size: int = 16, device: str | torch.device = "cpu", precision: str = "fp32",
                 legacy_resize: bool = False, return_probabilities: bool = False, progress: bool = False,
                 ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Segment a volume slice by slice along axis 0.

    ``model`` maps a float (B,C,h,w) tensor to logits (B,K,h,w); an ``nn.Module`` is moved to ``device``
    and run in eval mode (its previous mode is restored). ``volume`` holds raw intensities (D,H,W) or
    (D,C,H,W); ``preprocessing`` is a checkpoint's preprocessing block. Returns uint8 labels (D,H,W), and
    with ``return_probabilities`` also float16 softmax probabilities (K,D,H,W).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {list(PRECISIONS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if return_probabilities and legacy_resize:
        raise ValueError("return_probabilities needs the logits-resize path; drop legacy_resize")
    device = torch.device(device)
    size = tuple(int(s) for s in preprocessing["img_size"])
    mode, in_chans = preprocessing.get("channel_mode", "repeat"), int(preprocessing.get("in_chans", 1))
    vol = as_stack(volume)
    depth, hw = vol.shape[0], tuple(vol.shape[-2:])
    if depth == 0 or min(hw) == 0:
        raise ValueError(f"volume is empty: shape {tuple(np.shape(volume))}")
    spec = fix_volume_statistics(vol, preprocessing.get("intensity", {"mode": "none"}))
    if isinstance(model, nn.Module):
        model.to(device)

    labels = np.empty((depth, *hw), dtype=np.uint8)
    probs = None
    starts = range(0, depth, batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="slices", unit="batch", leave=False)
    with _eval_mode(model), torch.inference_mode():
        for s in starts:
            chunk = normalize_intensity(vol[s:s + batch_size], spec)
            if legacy_resize:
                x = torch.from_numpy(np.ascontiguousarray(_legacy_zoom_in(chunk, size))).to(device)
            else:
                x = torch.from_numpy(np.ascontiguousarray(chunk)).to(device)
                if hw != size:
                    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
            x = make_channels(x, mode, in_chans)
            with autocast(precision, device):
                logits = model(x)
            logits = torch.as_tensor(logits).to(device).float()
            if logits.ndim != 4 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"model returned shape {tuple(logits.shape)}; expected (B,K,h,w) logits")
            if logits.shape[1] > 256:
                raise ValueError(f"{logits.shape[1]} classes do not fit uint8 labels")
            if legacy_resize:
                lab = logits.argmax(1).to(torch.uint8).cpu().numpy()
                labels[s:s + len(chunk)] = _legacy_zoom_out(lab, hw)
                continue
            if tuple(logits.shape[-2:]) != hw:
                logits = F.interpolate(logits, size=hw, mode="bilinear", align_corners=False)
            labels[s:s + len(chunk)] = logits.argmax(1).to(torch.uint8).cpu().numpy()
            if return_probabilities:
                if probs is None:
                    probs = np.empty((logits.shape[1], depth, *hw), dtype=np.float16)
                probs[:, s:s + len(chunk)] = logits.softmax(1).half().cpu().numpy().transpose(1, 0, 2, 3)
    return (labels, probs) if return_probabilities else labels

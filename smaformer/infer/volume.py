"""Slice-wise volume inference: the one protocol used by validation, evaluation and prediction (DESIGN.md §4).

Each slice along axis 0 is normalised with the checkpoint's intensity spec, resized to the model input,
turned into the model's channels and run through the model; the **logits** are resized back to the slice
size (bilinear, ``align_corners=False``) and only then argmaxed, which avoids the mosaic edges of
zooming an argmax with nearest neighbour.

Input resizing (our choice): torch bicubic (``align_corners=False``), GPU-friendly. It is close to, not
the same as, the official ``scipy.ndimage.zoom(order=3)`` training uses (0.009 apart inside ACDC slices, up
to 0.5 on their borders); swapping in training's operator moved ACDC validation Dice by +0.12 points
(docs/INFERENCE.md, ``benchmarks/bench_resize.py``). ``legacy_resize=True`` reproduces the official TransUNet /
Swin-Unet / SMAFormer test scripts instead: ``zoom(order=3)`` in, argmax at model size, ``zoom(order=0)``
of the labels back.

Ensembles and test-time mirroring (``infer_ensemble``) average softmax probabilities, each member's
taken at the case's grid after its own preprocessing; ``inference="sliding"`` runs model-sized windows at
the slice's own resolution instead of resizing (MONAI's ``sliding_window_inference``, Gaussian blending).

Memory stays bounded, whatever the volume: there is one loop over batches of slices. Each batch is
normalised on its own (whole-volume statistics are fixed first, ``fix_volume_statistics``, which for
zscore/minmax takes one float32 pass over the volume), so the raw volume keeps its stored type (int16 CT
stays int16); only one batch of logits exists at a time; the output is a uint8 label volume and, when
asked, float16 probabilities.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage

from smaformer.data.preprocess import fix_volume_statistics, make_channels, normalize_intensity
from smaformer.runtime import PRECISIONS, autocast

INFERENCE_MODES = ("resize", "sliding")
#: the mirrorings test-time augmentation averages over: none, W, H, both (dims of a (B,C,H,W) batch)
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))
SLIDING_OVERLAP = 0.5


def as_stack(volume: np.ndarray) -> np.ndarray:
    """A (D,H,W) or (D,C,H,W) volume as (D,C,H,W), in its stored dtype (a view, no copy)."""
    vol = np.asarray(volume)
    if vol.ndim == 3:
        vol = vol[:, None]
    if vol.ndim != 4:
        raise ValueError(f"volume must be (D,H,W) or (D,C,H,W), got shape {tuple(np.shape(volume))}")
    return vol


def inference_mode_of(preprocessing: dict, requested: str | None = None) -> str:
    """``requested``, else the mode the checkpoint's training implies (``preprocessing["inference"]``),
    else ``resize``."""
    mode = requested or preprocessing.get("inference") or "resize"
    if mode not in INFERENCE_MODES:
        raise ValueError(f"unknown inference mode {mode!r}; use one of {', '.join(INFERENCE_MODES)}")
    return mode


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
def _eval_mode(models: Sequence[Callable]):
    """Put the ``nn.Module`` members in eval mode for the duration and restore their previous modes after."""
    training = [m for m in models if isinstance(m, nn.Module) and m.training]
    for m in models:
        if isinstance(m, nn.Module):
            m.eval()
    try:
        yield
    finally:
        for m in training:
            m.train()


def placement(model: Callable, device: torch.device, precision: str) -> dict:
    """Where and how one member runs, as it runs (``_Member`` follows it; predict/evaluate record it): a torch
    module on ``device`` at ``precision``; an exported runner on its runtime's own device, in fp32 (its batches
    stay on the host: the runtime takes numpy arrays)."""
    if isinstance(model, nn.Module):
        compiled = getattr(model, "status", "eager")
        return {"engine": "torch", "device": str(device), "precision": precision, "compile": compiled}
    return {"engine": getattr(model, "engine", "callable"), "device": str(getattr(model, "device", "cpu")),
            "precision": "fp32", "compile": "n/a"}


class _Member:
    """One model of an ensemble with what it needs to score a batch of slices at the case's grid."""

    def __init__(self, model: Callable, preprocessing: dict, vol: np.ndarray, *, inference: str | None,
                 device: torch.device, precision: str, batch_size: int):
        self.model, self.batch_size = model, batch_size
        run = placement(model, device, precision)
        self.device = device if run["engine"] == "torch" else torch.device("cpu")    # host arrays for runtimes
        self.precision = run["precision"]
        self.size = tuple(int(s) for s in preprocessing["img_size"])
        self.mode = inference_mode_of(preprocessing, inference)
        self.channel_mode = preprocessing.get("channel_mode", "repeat")
        self.in_chans = int(preprocessing.get("in_chans", 1))
        self.spec = fix_volume_statistics(vol, preprocessing.get("intensity", {"mode": "none"}))
        if isinstance(model, nn.Module):
            model.to(device)

    def inputs(self, raw: np.ndarray) -> torch.Tensor:
        """A (B,C,H,W) batch of raw slices, normalised, at the case's resolution."""
        x = torch.from_numpy(np.ascontiguousarray(normalize_intensity(raw, self.spec))).to(self.device)
        if x.shape[1] > 1 and self.in_chans == 1 and self.channel_mode != "none":
            x = x.mean(1, keepdim=True)      # colour image into a grey model: luminance-style mean
        return x

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a model-sized (B,C,h,w) batch (channels made here)."""
        x = make_channels(x, self.channel_mode, self.in_chans)
        with autocast(self.precision, self.device):
            logits = self.model(x)
        logits = torch.as_tensor(logits).to(self.device).float()
        if logits.ndim != 4 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"model returned shape {tuple(logits.shape)}; expected (B,K,h,w) logits")
        if logits.shape[1] > 256:
            raise ValueError(f"{logits.shape[1]} classes do not fit uint8 labels")
        return logits

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B,K,H,W) logits at the batch's own (H,W): resized in and out, or slid over in model-sized windows."""
        hw = tuple(x.shape[-2:])
        if self.mode == "sliding":
            from monai.inferers import sliding_window_inference

            return sliding_window_inference(x, self.size, self.batch_size, self.run, overlap=SLIDING_OVERLAP,
                                            mode="gaussian", padding_mode="constant", cval=0.0)
        if hw != self.size:
            x = F.interpolate(x, size=self.size, mode="bicubic", align_corners=False)
        logits = self.run(x)
        if tuple(logits.shape[-2:]) != hw:
            logits = F.interpolate(logits, size=hw, mode="bilinear", align_corners=False)
        return logits

    def probabilities(self, x: torch.Tensor, tta: bool) -> torch.Tensor:
        """Softmax probabilities (B,K,H,W), averaged over the mirrorings when ``tta``."""
        if not tta:
            return self.logits(x).softmax(1)
        total = None
        for dims in TTA_FLIPS:
            p = (self.logits(x.flip(dims)).flip(dims) if dims else self.logits(x)).softmax(1)
            total = p if total is None else total + p
        return total / len(TTA_FLIPS)


def infer_volume(model: Callable[[torch.Tensor], torch.Tensor], volume: np.ndarray, preprocessing: dict, *,
                 batch_size: int = 16, device: str | torch.device = "cpu", precision: str = "fp32",
                 legacy_resize: bool = False, return_probabilities: bool = False, progress: bool = False,
                 tta: bool = False, inference: str | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Segment a volume slice by slice along axis 0 with one model (``infer_ensemble`` for several).

    ``model`` maps a float (B,C,h,w) tensor to logits (B,K,h,w); an ``nn.Module`` is moved to ``device``
    and run in eval mode (its previous mode is restored). ``volume`` holds raw intensities (D,H,W) or
    (D,C,H,W); ``preprocessing`` is a checkpoint's preprocessing block. Returns uint8 labels (D,H,W), and
    with ``return_probabilities`` also float16 softmax probabilities (K,D,H,W).
    """
    return infer_ensemble([(model, preprocessing)], volume, batch_size=batch_size, device=device,
                          precision=precision, legacy_resize=legacy_resize, progress=progress, tta=tta,
                          return_probabilities=return_probabilities, inference=inference)


def infer_ensemble(members: Sequence[tuple[Callable, dict]], volume: np.ndarray, *, batch_size: int = 16,
                   device: str | torch.device = "cpu", precision: str = "fp32", legacy_resize: bool = False,
                   return_probabilities: bool = False, progress: bool = False, tta: bool = False,
                   inference: str | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Segment a volume with ``(model, preprocessing)`` members: their softmax probabilities, each at the
    case's grid (each member with its own intensity spec and input size), are averaged, over the
    mirrorings too with ``tta``, and argmaxed. One member without ``tta`` argmaxes its logits directly.

    ``inference`` is ``resize`` (the model input size; the default), ``sliding`` (model-sized windows at
    the image's own resolution, overlap 0.5, Gaussian blending, zero padding where the image is smaller;
    MONAI's ``sliding_window_inference``) or None: each member's checkpoint decides.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {list(PRECISIONS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not members:
        raise ValueError("no model to run")
    if legacy_resize and (return_probabilities or tta or len(members) > 1 or inference == "sliding"):
        raise ValueError("legacy_resize reproduces the official single-model script: no probabilities, "
                         "tta, ensemble or sliding window")
    device = torch.device(device)
    vol = as_stack(volume)
    depth, hw = vol.shape[0], tuple(vol.shape[-2:])
    if depth == 0 or min(hw) == 0:
        raise ValueError(f"volume is empty: shape {tuple(np.shape(volume))}")
    runs = [_Member(m, pre, vol, inference=inference, device=device, precision=precision, batch_size=batch_size)
            for m, pre in members]
    if legacy_resize and runs[0].mode == "sliding":
        raise ValueError("legacy_resize reproduces the official resize script; this checkpoint slides "
                         "(trained on crops): drop legacy_resize or pass inference='resize'")
    averaged = tta or len(runs) > 1

    labels = np.empty((depth, *hw), dtype=np.uint8)
    probs = None
    starts = range(0, depth, batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="slices", unit="batch", leave=False)
    with _eval_mode([m for m, _ in members]), torch.inference_mode():
        for s in starts:
            raw = vol[s:s + batch_size]
            if legacy_resize:
                run = runs[0]
                x = torch.from_numpy(np.ascontiguousarray(_legacy_zoom_in(normalize_intensity(raw, run.spec),
                                                                          run.size))).to(run.device)
                lab = run.run(x).argmax(1).to(torch.uint8).cpu().numpy()
                labels[s:s + len(raw)] = _legacy_zoom_out(lab, hw)
                continue
            if averaged:
                parts = [r.probabilities(r.inputs(raw), tta).to(device) for r in runs]
                if len({p.shape[1] for p in parts}) > 1:
                    raise ValueError(f"ensemble members give {[p.shape[1] for p in parts]} classes; they must agree")
                scores = sum(parts) / len(parts)
            else:
                scores = runs[0].logits(runs[0].inputs(raw))
            labels[s:s + len(raw)] = scores.argmax(1).to(torch.uint8).cpu().numpy()
            if return_probabilities:
                p = scores if averaged else scores.softmax(1)
                if probs is None:
                    probs = np.empty((p.shape[1], depth, *hw), dtype=np.float16)
                probs[:, s:s + len(raw)] = p.half().cpu().numpy().transpose(1, 0, 2, 3)
    return (labels, probs) if return_probabilities else labels

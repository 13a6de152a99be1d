"""INT8 post-training quantization of an OpenVINO IR with NNCF, and the accuracy guard that decides whether
the INT8 file is kept.

Calibration slices come from the volume protocol itself: ``infer_volume`` runs a model that records its
inputs, so the slices are normalised, resized (or windowed) and channel-expanded exactly as ``predict``
feeds the network. Volumes are split by patient (``case_key``) in a fixed shuffled order: the first ones
calibrate, the next ones are held back for the guard, so no patient is in both. Slice-wise splits (ACDC
``train``) are put back together into volumes first.

The guard scores the fp32 IR and the INT8 IR on the held-back volumes: mean foreground Dice in points
(per-class mean over cases, then the mean over classes; standard convention: a class empty in both masks
is left out), and refuses when INT8 loses more than ``max_dice_drop`` points.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smaformer import metrics as M
from smaformer.data.sample import Sample, SampleList, case_key, iter_cases, slice_order, volume_key
from smaformer.errors import InputError
from smaformer.export.exporters import ExportError
from smaformer.export.metadata import ExportMetadata
from smaformer.export.openvino import Quantizer, compile_ir
from smaformer.export.runtimes import FixedBatch
from smaformer.infer.volume import infer_volume

#: models ``auto`` quantizes with NNCF's CNN scheme (every quantizable op: Conv, MatMul, Add, Mul...); the
#: others with its transformer scheme (MatMul/Linear inputs, SmoothQuant, LayerNorm/softmax/GELU left fp32)
CNN_MODELS = ("unet",)
SCHEMES = ("auto", "transformer", "cnn")


@dataclass
class Int8Spec:
    """What INT8 export calibrates on and how much Dice it may lose (points of mean foreground Dice)."""

    data: str | Path | list           # a dataset path for ``open_dataset``, or a list of Samples
    split: str | None = "train"
    cases: int = 8                    # volumes that calibrate
    # volumes held back for the guard (those left, when the split has fewer): 8 under-read a converged
    # SMAFormer's INT8 drop by 0.5-0.7 points against the 20 ACDC val volumes; 20 read it within 0.2
    guard_cases: int = 20
    max_dice_drop: float = 0.5
    layout: str | None = None
    seed: int = 0
    scheme: str = "auto"              # transformer / cnn / auto (cnn for CNN_MODELS, else transformer)


def _reader(spec: Int8Spec):
    from smaformer.data import open_dataset

    if isinstance(spec.data, (list, tuple)):
        return SampleList(list(spec.data), split=spec.split or "train")
    return open_dataset(spec.data, layout=spec.layout, split=spec.split)


def _load_volume(reader, names: list[str]) -> Sample:
    """One volume from its cases: a volume case as it is, slice cases stacked in slice order."""
    parts = []
    for case, sample, fault in iter_cases(reader, names):
        if fault is not None:
            raise InputError(getattr(reader, "root", None), f"calibration case {case}: {fault}")
        if sample.label is None:
            raise InputError(getattr(reader, "root", None), f"calibration case {case} has no label for the guard")
        parts.append(sample.as_volume())
    if len({p.image.shape[1:] for p in parts}) > 1:
        raise InputError(getattr(reader, "root", None), f"the slices of {names[0]} differ in size")
    if len(parts) == 1:
        return parts[0]
    return Sample(np.concatenate([p.image for p in parts]), np.concatenate([p.label for p in parts]),
                  {"case": slice_order(names[0])[0], "is_volume": True})


def split_volumes(spec: Int8Spec) -> tuple[list[Sample], list[Sample]]:
    """``(calibration, held_back)`` volumes, disjoint by patient."""
    if spec.cases < 1 or spec.guard_cases < 1:
        raise InputError(None, "--calibration-cases and --guard-cases must be >= 1")
    reader = _reader(spec)
    volumes: dict[str, list[str]] = {}
    for c in sorted(reader.cases(), key=slice_order):
        volumes.setdefault(volume_key(c), []).append(c)
    patients: dict[str, list[str]] = {}
    for v in volumes:
        patients.setdefault(case_key(v), []).append(v)
    if len(volumes) <= spec.cases or len(patients) < 2:
        raise InputError(getattr(reader, "root", None),
                         f"{len(volumes)} volumes ({len(patients)} patients) in split {spec.split}; INT8 export "
                         f"needs {spec.cases} to calibrate + at least 1 held back, from different patients")
    order = sorted(patients)
    cal: list[str] = []
    held: list[str] = []
    for i in np.random.default_rng(spec.seed).permutation(len(order)):
        (cal if len(cal) < spec.cases else held).extend(patients[order[i]])
    if not held:
        raise InputError(getattr(reader, "root", None), "no patient left to hold back; lower --calibration-cases")
    return ([_load_volume(reader, volumes[v]) for v in cal[:spec.cases]],
            [_load_volume(reader, volumes[v]) for v in held[:spec.guard_cases]])


class _Recorder:
    """A stand-in model for ``infer_volume`` that keeps the batches it is given (zeros as logits)."""

    def __init__(self, num_classes: int):
        self.k, self.batches = num_classes, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.detach().float().cpu().numpy().copy())
        return torch.zeros(x.shape[0], self.k, *x.shape[-2:])


def _num_classes(meta: ExportMetadata) -> int:
    return int(meta.model.get("kwargs", {}).get("num_classes") or len(meta.classes))


def calibration_inputs(volumes: list[Sample], meta: ExportMetadata) -> list[np.ndarray]:
    """The network inputs ``predict`` would make from ``volumes``: single slices (1,C,H,W), or batches of the
    file's fixed batch size."""
    rec = _Recorder(_num_classes(meta))
    for v in volumes:
        infer_volume(rec, v.image, meta.preprocessing)
    slices = np.concatenate(rec.batches)
    n = meta.static_batch or 1
    if len(slices) < n:
        raise InputError(None, f"{len(slices)} calibration slices; the file's fixed batch is {n}")
    return [slices[s:s + n] for s in range(0, len(slices) - n + 1, n)]


def mean_foreground_dice(run, volumes: list[Sample], meta: ExportMetadata) -> float:
    """Mean foreground Dice in points of ``run`` (np -> np logits) on labelled volumes."""
    runner = FixedBatch(run, meta.static_batch)
    k = _num_classes(meta)
    rows = []
    for v in volumes:
        pred = infer_volume(runner, v.image, meta.preprocessing)
        rows.append([M.dice(pred == c, v.label == c) for c in range(1, k)])
    per_class = [np.nanmean(col) for col in np.asarray(rows, dtype=np.float64).T if not np.isnan(col).all()]
    if not per_class:
        raise InputError(None, "the held-back cases have no foreground in their labels; the guard cannot score them")
    return 100.0 * float(np.mean(per_class))


def quantize_guarded(ov_model, meta: ExportMetadata, spec: Int8Spec, path: Path):
    """``(int8_model, report lines)``: NNCF ``quantize`` on the calibration volumes, then the guard; an
    ExportError (nothing written) when INT8 loses more than ``spec.max_dice_drop`` points."""
    if spec.scheme not in SCHEMES:
        raise InputError(None, f"unknown INT8 scheme {spec.scheme!r}; use one of {', '.join(SCHEMES)}")
    try:
        import nncf
    except ImportError:
        raise InputError(None, "--int8 needs NNCF (pip install -e '.[export]')") from None
    logging.getLogger("nncf").setLevel(logging.ERROR)
    cal, held = split_volumes(spec)
    items = calibration_inputs(cal, meta)
    cnn = spec.scheme == "cnn" or (spec.scheme == "auto" and meta.model.get("name") in CNN_MODELS)
    q = nncf.quantize(ov_model, nncf.Dataset(items), subset_size=len(items),
                      model_type=None if cnn else nncf.ModelType.TRANSFORMER,
                      preset=nncf.QuantizationPreset.PERFORMANCE if cnn else nncf.QuantizationPreset.MIXED)
    fp32 = mean_foreground_dice(compile_ir(ov_model), held, meta)
    int8 = mean_foreground_dice(compile_ir(q), held, meta)
    drop = fp32 - int8
    line = (f"accuracy guard: mean foreground Dice on {len(held)} held-back volumes: fp32 {fp32:.2f}, INT8 "
            f"{int8:.2f}, drop {drop:.2f} points (limit {spec.max_dice_drop:g} points of mean foreground Dice)")
    if not drop <= spec.max_dice_drop:
        raise ExportError(f"{path}: INT8 refused, nothing written: {line}")
    report = [f"calibrated on {len(cal)} volumes ({sum(len(i) for i in items)} slices) of split {spec.split}, "
              f"nncf.quantize ({'CNN' if cnn else 'transformer'} scheme)", line]
    if len(held) < spec.guard_cases:
        report.append(f"only {len(held)} of the {spec.guard_cases} guard volumes asked for were left in split "
                      f"{spec.split}: a small guard can misjudge INT8's Dice drop")
    return q, report


def int8_quantizer(spec: Int8Spec) -> Quantizer:
    """The hook ``export_checkpoint(..., quantize=...)`` takes: NNCF INT8 behind the Dice guard of ``spec``."""
    return lambda ov_model, meta, path: quantize_guarded(ov_model, meta, spec, path)

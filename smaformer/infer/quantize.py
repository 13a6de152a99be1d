"""INT8 post-training quantization of an OpenVINO IR with NNCF, and the accuracy guard that decides whether
the INT8 file is kept.

Calibration slices come from the volume protocol itself: ``infer_volume`` runs a model that records its
inputs, so the slices are normalised, resized (or windowed) and channel-expanded exactly as ``predict``
feeds the network. Slice-wise splits (ACDC ``train``) are put back together into volumes first.

The guard scores the fp32 IR and the INT8 IR on volumes the checkpoint never trained on: by default its own
validation volumes (its fold's, its ``val_cases``, or its ``val_split`` of the calibration data), or the
``guard_split`` (of ``guard_data``) asked for. A guard set sharing a patient (``case_key``) with the
checkpoint's training cases is refused; calibration may use the training split, never a guard patient.
The score is the mean foreground Dice in points over the classes present in the guard's reference labels
(the same classes for both runs; per class the mean over cases, standard convention), and the guard refuses
when INT8 loses more than ``max_dice_drop`` points. ``plan_int8`` loads and checks everything before any
export work starts.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smaformer import metrics as M
from smaformer.data.fingerprint import intensity_warnings
from smaformer.data.sample import Sample, SampleList, case_key, group_volumes, stack_volume, volume_key
from smaformer.errors import InputError
from smaformer.export.exporters import ExportError
from smaformer.export.metadata import ExportMetadata
from smaformer.export.openvino import compile_ir
from smaformer.export.runtimes import FixedBatch
from smaformer.infer.volume import infer_volume

SCHEMES = ("auto", "transformer", "cnn")


@dataclass
class Int8Spec:
    """What INT8 export calibrates on, what guards it, and how much Dice it may lose (points of mean
    foreground Dice)."""

    data: str | Path | list           # a dataset path for ``open_dataset``, or a list of Samples
    split: str | None = "train"
    cases: int = 8                    # volumes that calibrate
    # guard volumes (those there are, when fewer): 8 under-read a converged SMAFormer's INT8 drop by 0.5-0.7
    # points against the 20 ACDC val volumes; 20 read it within 0.2
    guard_cases: int = 20
    max_dice_drop: float = 0.5
    layout: str | None = None
    seed: int = 0
    scheme: str = "auto"              # transformer / cnn / auto (cnn for convolutional models, else transformer)
    guard_split: str | None = None    # None: the checkpoint's own validation volumes
    guard_data: str | Path | list | None = None    # where guard_split is read (default: data)

    def check(self) -> None:
        """Ranges, before any work (one-line InputError)."""
        if isinstance(self.cases, bool) or self.cases < 1:
            raise InputError(None, f"--calibration-cases {self.cases}: give a number of volumes >= 1")
        if isinstance(self.guard_cases, bool) or self.guard_cases < 1:
            raise InputError(None, f"--guard-cases {self.guard_cases}: give a number of volumes >= 1")
        if not math.isfinite(self.max_dice_drop) or self.max_dice_drop < 0:
            raise InputError(None, f"--max-dice-drop {self.max_dice_drop}: give a finite number of points >= 0")
        if self.scheme not in SCHEMES:
            raise InputError(None, f"unknown INT8 scheme {self.scheme!r}; use one of {', '.join(SCHEMES)}")


@dataclass
class Int8Plan:
    """The loaded calibration and guard volumes, and where the guard's come from."""

    calibration: list[Sample]
    guard: list[Sample]
    guard_source: str
    classes_scored: list[int]


def _reader(data, split: str | None, layout: str | None):
    from smaformer.data import open_dataset

    if isinstance(data, (list, tuple)):
        return SampleList(list(data), split=split or "train")
    return open_dataset(data, layout=layout, split=split)


def _load_volume(reader, names: list[str]) -> Sample:
    """One labelled volume from its cases (``data.sample.stack_volume``); a fault names the case."""
    try:
        volume = stack_volume(reader, names)
    except InputError as e:
        raise InputError(getattr(reader, "root", None), f"calibration case {volume_key(names[0])}: {e}") from None
    if volume.label is None:
        raise InputError(getattr(reader, "root", None), f"calibration case {volume.case} has no label for the guard")
    return volume


def _volumes(reader, cases: list[str] | None = None) -> dict[str, list[str]]:
    """volume name -> its cases (slices in order), of ``cases`` or of all the reader's."""
    return group_volumes(reader.cases() if cases is None else cases)


def _seeded(names: list[str], seed: int) -> list[str]:
    order = sorted(names)
    return [order[i] for i in np.random.default_rng(seed).permutation(len(order))]


def _guard_set(spec: Int8Spec, info: dict) -> tuple[object, dict[str, list[str]], str, set[str]]:
    """``(reader, volumes, description, training patients)`` of the guard (see the module docstring)."""
    cfg = (info.get("config") or {}).get("data") or {}
    data = spec.guard_data if spec.guard_data is not None else spec.data
    train_split = cfg.get("train_split") or "train"
    splits = info.get("splits") or {}
    if splits.get("splits") and splits.get("fold") is not None:
        fold = splits["splits"][int(splits["fold"])]
        trained = {case_key(c) for c in fold["train"]}
    else:
        fold, trained = None, None
    if spec.guard_split is not None:
        reader = _reader(data, spec.guard_split, spec.layout)
        volumes, where = _volumes(reader), f"split {spec.guard_split} (asked for)"
    elif fold is not None:
        reader = _reader(data, train_split, spec.layout)
        have = set(reader.cases())
        volumes = _volumes(reader, [c for c in fold["val"] if c in have])
        where = f"the checkpoint's validation fold {splits['fold']} of split {train_split}"
    elif cfg.get("val_cases"):
        reader = _reader(data, train_split, spec.layout)
        want = {str(c) for c in cfg["val_cases"]}
        volumes = _volumes(reader, [c for c in reader.cases() if c in want or case_key(c) in want])
        where = f"the checkpoint's val_cases of split {train_split}"
    elif cfg.get("val_split"):
        reader = _reader(data, cfg["val_split"], spec.layout)
        volumes, where = _volumes(reader), f"the checkpoint's validation split {cfg['val_split']}"
    else:
        raise InputError(None, "the checkpoint records no validation cases to guard INT8 with; give --guard-split "
                               "(volumes it never trained on)")
    if not volumes:
        raise InputError(getattr(reader, "root", None), f"no guard volumes in {where}")
    if trained is None:   # the checkpoint's training split (its data.root if still there), minus its val_cases
        held = {str(c) for c in cfg.get("val_cases") or []}
        root = cfg.get("root")
        source = root if isinstance(root, str) and Path(root).is_dir() else spec.data
        try:
            train_cases = _reader(source, train_split, spec.layout).cases()
        except InputError:          # the data has no such split: nothing there was trained on
            train_cases = []
        trained = {case_key(c) for c in train_cases if c not in held and case_key(c) not in held}
    return reader, volumes, where, trained


def plan_int8(spec: Int8Spec, info: dict) -> Int8Plan:
    """Load and check the calibration and guard volumes for the checkpoint ``info`` describes, before any
    export work: ranges, a guard patient the checkpoint trained on, label values against the model's classes,
    and calibration images far outside the training fingerprint are each refused in one line."""
    spec.check()
    g_reader, g_volumes, where, trained = _guard_set(spec, info)
    shared = sorted({case_key(v) for v in g_volumes} & trained)
    if shared:
        raise InputError(getattr(g_reader, "root", None),
                         f"guard volumes of {where} share {len(shared)} patient(s) with the checkpoint's training "
                         f"cases ({', '.join(shared[:3])}); the guard must score patients the model never saw")
    guard_patients = {case_key(v) for v in g_volumes}
    c_reader = _reader(spec.data, spec.split, spec.layout)
    c_volumes = {v: c for v, c in _volumes(c_reader).items() if case_key(v) not in guard_patients}
    if len(c_volumes) < spec.cases:
        raise InputError(getattr(c_reader, "root", None),
                         f"{len(c_volumes)} volumes of split {spec.split} outside the guard's patients; INT8 "
                         f"export needs {spec.cases} to calibrate (lower --calibration-cases)")
    cal = [_load_volume(c_reader, c_volumes[v]) for v in _seeded(list(c_volumes), spec.seed)[:spec.cases]]
    guard = [_load_volume(g_reader, g_volumes[v]) for v in _seeded(list(g_volumes), spec.seed)[:spec.guard_cases]]
    k = len(info["classes"])
    for v in cal + guard:
        top = int(np.max(v.label))
        if top >= k:
            raise InputError(v.case, f"label value {top} outside the model's classes 0..{k - 1} "
                                     f"({', '.join(info['classes'])}); calibrate on data with the model's labels")
    present = sorted(set().union(*(np.unique(v.label).tolist() for v in cal + guard)) - {0})
    missing = [info["classes"][c] for c in range(1, k) if c not in present]
    if missing:
        raise InputError(getattr(c_reader, "root", None), f"the calibration and guard labels hold none of the model's "
                                                           f"classes {missing}; calibrate on its own kind of data")
    for v in cal:
        far = intensity_warnings(info.get("fingerprint"), v.image, None, v.case, info.get("preprocessing"))
        if far:
            raise InputError(getattr(c_reader, "root", None), f"calibration {far[0]}")
    scored = sorted(set().union(*(np.unique(v.label).tolist() for v in guard)) - {0})
    return Int8Plan(cal, guard, where, scored)


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


def mean_foreground_dice(run, volumes: list[Sample], meta: ExportMetadata, classes: list[int]) -> float:
    """Mean foreground Dice in points of ``run`` (np -> np logits) on labelled volumes, over ``classes``
    (fixed by the caller from the reference labels, so two runs average the same classes): per class the
    mean over the cases (standard convention: a case where both masks are empty is left out)."""
    if not classes:
        raise InputError(None, "the guard volumes have no foreground in their labels; the guard cannot score them")
    runner = FixedBatch(run, meta.static_batch)
    rows = []
    for v in volumes:
        pred = infer_volume(runner, v.image, meta.preprocessing)
        rows.append([M.dice(pred == c, v.label == c) for c in classes])
    return 100.0 * float(np.mean(np.nanmean(np.asarray(rows, dtype=np.float64), axis=0)))


def quantize_guarded(ov_model, meta: ExportMetadata, spec: Int8Spec, plan: Int8Plan, path: Path, *, cnn: bool):
    """``(int8_model, report lines)``: NNCF ``quantize`` on the plan's calibration volumes, then the guard on
    its guard volumes; an ExportError (nothing written) when INT8 loses more than ``spec.max_dice_drop`` points."""
    try:
        import nncf
    except ImportError:
        raise InputError(None, "--int8 needs NNCF (pip install -e '.[export]')") from None
    logging.getLogger("nncf").setLevel(logging.ERROR)
    cal, held = plan.calibration, plan.guard
    items = calibration_inputs(cal, meta)
    q = nncf.quantize(ov_model, nncf.Dataset(items), subset_size=len(items),
                      model_type=None if cnn else nncf.ModelType.TRANSFORMER,
                      preset=nncf.QuantizationPreset.PERFORMANCE if cnn else nncf.QuantizationPreset.MIXED)
    fp32 = mean_foreground_dice(compile_ir(ov_model), held, meta, plan.classes_scored)
    int8 = mean_foreground_dice(compile_ir(q), held, meta, plan.classes_scored)
    drop = fp32 - int8
    line = (f"accuracy guard: mean foreground Dice on {len(held)} volumes of {plan.guard_source} (never trained "
            f"on): fp32 {fp32:.2f}, INT8 {int8:.2f}, drop {drop:.2f} points (limit {spec.max_dice_drop:g} points "
            "of mean foreground Dice)")
    if not drop <= spec.max_dice_drop:
        raise ExportError(f"{path}: INT8 refused, nothing written: {line}")
    report = [f"calibrated on {len(cal)} volumes ({sum(len(i) for i in items)} slices) of split {spec.split}, "
              f"nncf.quantize ({'CNN' if cnn else 'transformer'} scheme)", line]
    if len(held) < spec.guard_cases:
        report.append(f"only {len(held)} of the {spec.guard_cases} guard volumes asked for are in "
                      f"{plan.guard_source}: a small guard can misjudge INT8's Dice drop")
    return q, report


class Int8Quantizer:
    """The hook ``export_checkpoint(..., quantize=...)`` takes: NNCF INT8 behind the Dice guard of ``spec``.
    ``inputs`` are the folders it reads (no output may land there); ``prepare(model, info)`` loads and checks
    the volumes (``plan_int8``) before any export work; calling it quantizes and guards."""

    def __init__(self, spec: Int8Spec):
        spec.check()
        self.spec, self.plan = spec, None
        self.inputs = [d for d in (spec.data, spec.guard_data) if isinstance(d, (str, Path))]

    def prepare(self, model: torch.nn.Module, info: dict) -> None:
        self.plan = plan_int8(self.spec, info)
        convolutional = getattr(model, "convolution", "none") == "all"
        self.cnn = self.spec.scheme == "cnn" or (self.spec.scheme == "auto" and convolutional)

    def __call__(self, ov_model, meta: ExportMetadata, path: Path):
        if self.plan is None:
            raise RuntimeError("Int8Quantizer.prepare(model, info) must run before quantizing")
        return quantize_guarded(ov_model, meta, self.spec, self.plan, path, cnn=self.cnn)

"""Training data from a config: the slice dataset, the validation volumes, the classes and preprocessing.

Validation always comes from the validation split (or from training cases held out by name, or, with
``data.fold``, from a cross-validation fold of the training split: ``train.folds``), and only
the *names* of the test cases are ever listed, to refuse a config whose validation or training cases
overlap the test split. Validation Dice is volume-level: each validation case is segmented slice by slice
with ``infer_volume`` and scored per class in 3D.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from smaformer.checkpoint import default_preprocessing
from smaformer.data.fingerprint import dataset_fingerprint
from smaformer.data.sample import (
    SLICE_NAME,
    Reader,
    Sample,
    case_key,
    group_volumes,
    iter_cases,
    stack_volume,
)
from smaformer.errors import InputError
from smaformer.infer.evaluate import volume_dice
from smaformer.train.distributed import Dist, all_reduce_sum, gather_objects
from smaformer.train.sampling import SeededItems

log = logging.getLogger(__name__)


@dataclass
class TrainData:
    """``train`` yields ``{"image": (C,H,W), "label": (H,W)}``; ``val`` is a Reader or a list of Samples."""

    train: Dataset
    val: Any
    classes: list[str]
    preprocessing: dict
    splits: Any = None   # a train.folds.FoldSplit when data.fold is set (cross-validation), else None


class CaseSubset(Reader):
    """A reader restricted to some of its cases (hold-out validation from the training split)."""

    def __init__(self, reader: Reader, cases: list[str]):
        self.reader, self._cases, self.layout, self.split = reader, list(cases), reader.layout, reader.split
        self.classes, self.root, self.skipped = reader.classes, getattr(reader, "root", None), []

    def cases(self) -> list[str]:
        return list(self._cases)

    def num_slices(self, case: str) -> int:
        return self.reader.num_slices(case)

    def load_case(self, case: str) -> Sample:
        return self.reader.load_case(case)


class StackedCases(Reader):
    """Held-out 2D training slices (``case0005_slice012``...) regrouped into one volume per stored volume
    (the name without its slice suffix), so that validation stays volume-level on layouts whose training
    split holds slices (Synapse npz, ACDC h5). An ACDC patient's two frames are two volumes
    (``patient001_frame01``, ``patient001_frame12``): stacking them into one would pool Dice over both
    frames and let HD95 and connected components cross a fake z-junction. ``case_key`` (the patient)
    still groups folds and leak checks."""

    def __init__(self, reader: Reader, names: list[str]):
        self.reader, self.layout, self.split = reader, reader.layout, "val"
        self.classes, self.root, self.skipped = reader.classes, getattr(reader, "root", None), []
        self.groups = group_volumes(names)

    def cases(self) -> list[str]:
        return list(self.groups)

    def load_case(self, case: str) -> Sample:
        return stack_volume(self.reader, self.groups[case], case)


def preprocessing_of(cfg: dict) -> dict:
    """The checkpoint's preprocessing block; ``inference`` records how prediction should see the images:
    a model trained on native-resolution crops (``data.patches: crop``) predicts with a sliding window."""
    d = cfg["data"]
    prep = default_preprocessing(d["img_size"], d["in_chans"], d["channel_mode"], d["intensity"])
    prep["inference"] = "sliding" if d["patches"] == "crop" else "resize"
    return prep


def _names(source) -> list[str]:
    return list(source.cases()) if hasattr(source, "cases") else [s.case for s in source]


def check_no_leak(train_cases: list[str], val_cases: list[str], test_cases: list[str], where: Any) -> None:
    """Refuse validation or training cases whose case (patient) is also in the test split (DESIGN.md §4)."""
    test = {case_key(c) for c in test_cases}
    for what, cases in (("validation", val_cases), ("training", train_cases)):
        both = sorted(test.intersection(case_key(c) for c in cases))
        if both:
            raise InputError(where, f"{len(both)} {what} case(s) are also in the test split "
                                    f"({', '.join(both[:5])}); the test split is never used for training "
                                    "or model selection")


def build_data(cfg: dict) -> TrainData:
    """Readers and the slice dataset the config describes (synthetic phantoms or any known layout)."""
    from smaformer.data import SliceDataset, SyntheticReader, open_dataset

    d = cfg["data"]
    prep = preprocessing_of(cfg)
    test_names: list[str] = []
    if d["layout"] == "synthetic":
        s = d["synthetic"]
        k = len(d["classes"]) if d["classes"] else int(cfg["model"]["kwargs"].get("num_classes", 5))
        train_reader = SyntheticReader(int(s["train_volumes"]), tuple(s["shape"]), k, seed=int(s["seed"]))
        val = SyntheticReader(int(s["val_volumes"]), tuple(s["shape"]), k, seed=int(s["seed"]) + 10_000, split="val")
    else:
        if not d["root"]:
            raise InputError(None, "data.root is not set (e.g. --set data.root=/path/to/dataset)")
        layout = None if d["layout"] in (None, "auto") else d["layout"]
        train_reader = open_dataset(d["root"], layout=layout, split=d["train_split"])
        if d["test_split"]:
            try:
                test_names = _names(open_dataset(d["root"], layout=layout, split=d["test_split"]))
            except InputError:   # this dataset has no test split here: nothing can leak into it
                test_names = []
        if d.get("fold") is not None:
            val = []         # fold K of the training split, below
        elif d["val_cases"]:
            want = {str(c) for c in d["val_cases"]}
            names = train_reader.cases()
            held = [n for n in names if n in want or case_key(n) in want]
            missing = sorted(want - {n for n in held} - {case_key(n) for n in held})
            if missing:
                raise InputError(d["root"], f"data.val_cases not in the training split: {', '.join(missing[:5])}")
            val, train_reader = _hold_out(train_reader, held)
        elif d["val_split"]:
            val = open_dataset(d["root"], layout=layout, split=d["val_split"])
        else:
            val = []
    split = None
    if d.get("fold") is not None:     # cross-validation: fold K of the training split is the validation set
        from smaformer.train.folds import fold_split

        split = fold_split(d, int(cfg["train"]["seed"]), train_reader.cases(), test_names)
        val, train_reader = _hold_out(train_reader, split.val, split.train)
    check_no_leak(_names(train_reader), _names(val) if val else [], test_names, d["root"] or "synthetic data")
    classes = list(d["classes"] or getattr(train_reader, "classes", None) or [])
    if not classes:
        k = int(cfg["model"]["kwargs"].get("num_classes", 2))
        classes = ["background"] + [f"class{i}" for i in range(1, k)]
    train = SliceDataset(train_reader, preprocessing=prep, augment=bool(d["augment"]), crop=d["patches"] == "crop")
    return TrainData(train, val, classes, prep, split)


def _hold_out(reader: Reader, held: list[str], keep: list[str] | None = None) -> tuple[Reader, Reader]:
    """(validation reader of the ``held`` names, training reader of ``keep`` or of all the others): held-out
    slices are regrouped into volumes (``StackedCases``), held-out volumes kept as they are."""
    slices = any(SLICE_NAME.search(n) for n in held)
    val = StackedCases(reader, held) if slices else CaseSubset(reader, held)
    if keep is None:
        drop = set(held)
        keep = [n for n in reader.cases() if n not in drop]
    return val, CaseSubset(reader, keep)


def training_fingerprint(data: TrainData) -> dict | None:
    """The training set's ``data.fingerprint`` (checkpoints store it), slices grouped into cases by
    ``case_key``; None when the training set is not read through a reader. Its label values are checked
    against the classes (``check_label_values``) before any training step."""
    reader = getattr(data.train, "reader", None)
    if reader is None:
        return None
    fingerprint = dataset_fingerprint(reader, group=case_key)
    check_label_values(fingerprint, list(data.classes), reader)
    return fingerprint


def checked_fingerprint(data: TrainData, dist: Dist, log) -> dict | None:
    """Rank 0's ``training_fingerprint`` (timed in the log), before the run folder is written; a training label
    it refuses fails every rank with the same one line, so no rank goes on into a collective alone."""
    fingerprint, fault = None, None
    if dist.main:
        t0 = time.perf_counter()
        try:
            fingerprint = training_fingerprint(data)
        except InputError as e:
            fault = e
        if fingerprint:
            log(f"fingerprint of {fingerprint['num_cases']} training cases: {time.perf_counter() - t0:.1f} s")
    message = gather_objects(str(fault) if fault else None, dist)[0]
    if fault is not None:
        raise fault
    if message:
        raise InputError(None, message)
    return fingerprint


def check_label_values(fingerprint: dict | None, classes: list[str], reader) -> None:
    """Refuse, before training, a training case whose labels hold a value outside ``0..len(classes)-1`` (the
    loss would fail with an IndexError mid-run), naming its label file where the reader knows it."""
    k = len(classes)
    for case in (fingerprint or {}).get("cases", []):
        bad = sorted(v for v in map(int, case.get("label_voxels") or {}) if not 0 <= v < k)
        if bad:
            pairs = reader.pairs() if hasattr(reader, "pairs") else {}
            label = next((lab for name, (_, lab) in pairs.items() if case_key(name) == case["case"] and lab), None)
            raise InputError(label or getattr(reader, "root", None),
                             f"{'' if label else 'training case ' + case['case'] + ': '}label value {bad[-1]} "
                             f"outside the model's classes 0..{k - 1} ({', '.join(classes)}); fix the labels or "
                             "set data.classes")


def val_samples(source, rank: int = 0, world_size: int = 1):
    """Every ``world_size``-th validation case from ``rank`` on, from a reader (bad cases skipped, with a
    warning) or a list of samples."""
    if not hasattr(source, "cases"):
        yield from list(source)[rank::world_size]
        return
    for case, sample, fault in iter_cases(source, source.cases()[rank::world_size]):
        if fault is not None:
            log.warning("validation: skipping case %s: %s", case, fault)
        else:
            yield sample


def validation_dice(model: torch.nn.Module, source, preprocessing: dict, num_classes: int, *, device: torch.device,
             precision: str = "fp32", batch_size: int = 16, dist: Dist | None = None) -> np.ndarray:
    """Mean volume-level Dice per foreground class over the validation cases (NaN-aware, reduced across ranks).

    Each rank scores its share of the cases with the evaluation code (``infer.evaluate.volume_dice``); the
    per-class sums and counts are all-reduced.
    """
    dist = dist or Dist()
    rows = volume_dice(model, val_samples(source, dist.rank, dist.world_size), preprocessing, num_classes,
                       device=device, batch_size=batch_size, precision=precision)
    local = np.stack([np.nansum(rows, axis=0), (~np.isnan(rows)).sum(axis=0)])
    both = all_reduce_sum(torch.tensor(local, dtype=torch.float64), dist).numpy()
    with np.errstate(invalid="ignore"):
        return np.where(both[1] > 0, both[0] / np.maximum(both[1], 1), np.nan)


# batches each loader worker keeps ready. 2,000 slices/s at batch 24 is one batch every 12 ms; a worker
# needs ~50-150 ms to load and augment one, so ~8+ workers keep up on average and 4 batches each (32 in
# flight, ~0.4 s of steps) absorb the slow ones (a volume-cache miss) without starving the GPU.
PREFETCH_FACTOR = 4


def usable_cpus() -> int:
    """CPUs this process may run on (affinity, e.g. a batch scheduler's share), the cap on loader workers."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # not on Linux
        return os.cpu_count() or 1


def build_loader(train, sampler, batch_size: int, num_workers: int, seed: int, rank: int,
                 device: torch.device) -> DataLoader:
    """The training loader: items seeded per (seed, epoch, index), workers that persist across epochs (and
    keep their volume caches), pinned memory on CUDA and ``PREFETCH_FACTOR`` batches ready per worker."""
    from smaformer.data import seed_worker

    nw = min(num_workers, usable_cpus())
    # the loader's own generator: starting an iterator must not draw from the global torch RNG, or a
    # resumed run (which starts one mid-epoch) would shift the dropout stream
    gen = torch.Generator().manual_seed(seed * 7_919 + rank)
    return DataLoader(SeededItems(train, seed), batch_size=batch_size, sampler=sampler, drop_last=True,
                      num_workers=nw, worker_init_fn=seed_worker, generator=gen, pin_memory=device.type == "cuda",
                      persistent_workers=nw > 0, prefetch_factor=PREFETCH_FACTOR if nw > 0 else None)

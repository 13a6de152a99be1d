"""Training data from a config: the slice dataset, the validation volumes, the classes and preprocessing.

Validation always comes from the validation split (or from training cases held out by name), and only
the *names* of the test cases are ever listed, to refuse a config whose validation or training cases
overlap the test split. Validation Dice is volume-level: each validation case is segmented slice by slice
with ``infer_volume`` and scored per class in 3D.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from smaformer.checkpoint import default_preprocessing
from smaformer.engine.distributed import Dist, all_reduce_sum
from smaformer.errors import InputError

log = logging.getLogger(__name__)


@dataclass
class TrainData:
    """``train`` yields ``{"image": (C,H,W), "label": (H,W)}``; ``val`` is a Reader or a list of Samples."""

    train: Dataset
    val: Any
    classes: list[str]
    preprocessing: dict


class CaseSubset:
    """A reader restricted to some of its cases (hold-out validation from the training split)."""

    def __init__(self, reader, cases: list[str]):
        self.reader, self._cases = reader, list(cases)
        self.classes, self.root, self.skipped = reader.classes, getattr(reader, "root", None), []

    def cases(self) -> list[str]:
        return list(self._cases)

    def num_slices(self, case: str) -> int:
        return self.reader.num_slices(case)

    def load_case(self, case: str):
        return self.reader.load_case(case)


def preprocessing_of(cfg: dict) -> dict:
    d = cfg["data"]
    return default_preprocessing(d["img_size"], d["in_chans"], d["channel_mode"], d["intensity"])


def _names(source) -> list[str]:
    return list(source.cases()) if hasattr(source, "cases") else [s.case for s in source]


def check_no_leak(train_cases: list[str], val_cases: list[str], test_cases: list[str], where: Any) -> None:
    """Refuse validation or training cases that are also test cases (DESIGN.md §4, no leakage)."""
    test = set(test_cases)
    for what, cases in (("validation", val_cases), ("training", train_cases)):
        both = sorted(test.intersection(cases))
        if both:
            raise InputError(where, f"{len(both)} {what} case(s) are also in the test split "
                                    f"({', '.join(both[:5])}); the test split is never used for training "
                                    "or model selection")


def build_data(cfg: dict) -> TrainData:
    """Readers and the slice dataset the config describes (synthetic phantoms or any known layout)."""
    from smaformer.data import SliceDataset, SyntheticReader, open_dataset

    d = cfg["data"]
    prep = preprocessing_of(cfg)
    if d["layout"] == "synthetic":
        s = d["synthetic"]
        k = len(d["classes"]) if d["classes"] else int(cfg["model"]["kwargs"].get("num_classes", 5))
        train_reader = SyntheticReader(int(s["train_volumes"]), tuple(s["shape"]), k, seed=int(s["seed"]))
        val = SyntheticReader(int(s["val_volumes"]), tuple(s["shape"]), k, seed=int(s["seed"]) + 10_000)
        test_names: list[str] = []
    else:
        if not d["root"]:
            raise InputError(None, "data.root is not set (e.g. --set data.root=/path/to/dataset)")
        layout = None if d["layout"] in (None, "auto") else d["layout"]
        train_reader = open_dataset(d["root"], layout=layout, split=d["train_split"])
        if d["val_cases"]:
            missing = sorted(set(d["val_cases"]) - set(train_reader.cases()))
            if missing:
                raise InputError(d["root"], f"data.val_cases not in the training split: {', '.join(missing[:5])}")
            held = [c for c in train_reader.cases() if c not in set(d["val_cases"])]
            val = CaseSubset(train_reader, list(d["val_cases"]))
            train_reader = CaseSubset(train_reader, held)
        elif d["val_split"]:
            val = open_dataset(d["root"], layout=layout, split=d["val_split"])
        else:
            val = []
        test_names = []
        if d["test_split"]:
            try:
                test_names = _names(open_dataset(d["root"], layout=layout, split=d["test_split"]))
            except InputError:   # this dataset has no test split here: nothing can leak into it
                test_names = []
    check_no_leak(_names(train_reader), _names(val) if val else [], test_names, d["root"] or "synthetic data")
    classes = list(d["classes"] or getattr(train_reader, "classes", None) or [])
    if not classes:
        k = int(cfg["model"]["kwargs"].get("num_classes", 2))
        classes = ["background"] + [f"class{i}" for i in range(1, k)]
    train = SliceDataset(train_reader, preprocessing=prep, augment=bool(d["augment"]))
    return TrainData(train, val, classes, prep)


def iter_val(source, rank: int = 0, world_size: int = 1):
    """Yield ``(case, image, label)`` for every ``world_size``-th case from ``rank`` on, from a reader (bad
    cases skipped) or a list of samples."""
    cases = source.cases() if hasattr(source, "cases") else None
    items = cases if cases is not None else list(source)
    for item in items[rank::world_size]:
        try:
            s = source.load_case(item) if cases is not None else item
        except InputError as e:
            log.warning("validation: skipping case %s: %s", item, e)
            continue
        image, label = s.image, s.label
        if not s.is_volume:          # a 2D image is a volume of one slice
            image, label = image[None], label[None]
        yield s.case, image, label


def validate(model: torch.nn.Module, source, preprocessing: dict, num_classes: int, *, device: torch.device,
             precision: str = "fp32", batch_size: int = 16, dist: Dist | None = None) -> np.ndarray:
    """Mean volume-level Dice per foreground class over the validation cases (NaN-aware, reduced across ranks).

    Each rank scores every ``world_size``-th case with the evaluation code (``validate_volumes``, standard
    convention: NaN when both masks are empty); per-class sums and counts are all-reduced.
    """
    from smaformer.engine.evaluate import validate_volumes

    dist = dist or Dist()
    sums = np.zeros(num_classes - 1)
    counts = np.zeros(num_classes - 1)
    for _, image, label in iter_val(source, dist.rank, dist.world_size):
        r = validate_volumes(model, [(image, label)], preprocessing, num_classes, device=device,
                             batch_size=batch_size, precision=precision)
        dice = np.asarray(r["dice_per_class"], dtype=np.float64)
        ok = ~np.isnan(dice)
        sums[ok] += dice[ok]
        counts[ok] += 1
    both = all_reduce_sum(torch.tensor(np.stack([sums, counts]), dtype=torch.float64), dist).numpy()
    with np.errstate(invalid="ignore"):
        return np.where(both[1] > 0, both[0] / np.maximum(both[1], 1), np.nan)

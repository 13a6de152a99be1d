"""The one sample model every reader yields, and the reader interface (one small class per layout).

A :class:`Sample` is either a 3D volume (image and label ``(D,H,W)``, slices along axis 0) or a 2D image
(image ``(C,H,W)``, label ``(H,W)``); ``label.ndim`` tells which. ``meta`` holds ``case``, ``path``,
``spacing`` (mm, one entry per spatial array axis), ``affine`` (4x4, when known), ``classes`` and, for
readers built on :mod:`smaformer.data.io`, ``props`` (what ``write_labels`` needs to restore geometry).
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from smaformer.errors import InputError


@dataclass
class Sample:
    """Image float32 (D,H,W) or (C,H,W), label int64 (D,H,W) or (H,W) (or None), and metadata."""

    image: np.ndarray
    label: np.ndarray | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_volume(self) -> bool:
        """True for (D,H,W) volumes, False for 2D (C,H,W) images."""
        if "is_volume" in self.meta:
            return bool(self.meta["is_volume"])
        return (self.label.ndim if self.label is not None else self.image.ndim) == 3

    @property
    def case(self) -> str:
        return str(self.meta.get("case", ""))

    def num_slices(self) -> int:
        """Number of 2D training slices this sample holds."""
        return int(self.image.shape[0]) if self.is_volume else 1

    def as_volume(self) -> Sample:
        """This sample as a volume: a 2D image (C,H,W) becomes one slice (1,C,H,W), its label (1,H,W)."""
        if self.is_volume:
            return self
        label = None if self.label is None else self.label[None]
        return Sample(self.image[None], label, {**self.meta, "is_volume": True})

    def slice(self, index: int) -> Sample:
        """The ``index``-th axial slice as a 2D sample (image (1,H,W)); 2D samples return themselves."""
        if not self.is_volume:
            return self
        meta = {k: v for k, v in self.meta.items() if k not in ("affine", "props")}
        spacing = self.meta.get("spacing")
        meta.update(is_volume=False, slice=int(index), spacing=None if spacing is None else tuple(spacing)[1:])
        label = None if self.label is None else self.label[index]
        return Sample(self.image[index][None], label, meta)


def check_sample(sample: Sample, path: str | Path, num_classes: int | None = None) -> Sample:
    """Validate shapes, finiteness and label range; raise a one-line InputError naming the fault."""
    img, lab = sample.image, sample.label
    if not np.issubdtype(img.dtype, np.floating):
        img = sample.image = img.astype(np.float32)
    if not np.isfinite(img).all():
        bad = int((~np.isfinite(img)).sum())
        raise InputError(path, f"image has {bad} NaN/inf values")
    if lab is None:
        return sample
    spatial = img.shape if sample.is_volume else img.shape[1:]
    if tuple(lab.shape) != tuple(spatial):
        raise InputError(path, f"shape mismatch: image {tuple(spatial)} vs label {tuple(lab.shape)}")
    if np.issubdtype(lab.dtype, np.floating):
        if not np.isfinite(lab).all():
            raise InputError(path, "label has NaN/inf values")
        if not np.array_equal(lab, np.round(lab)):
            raise InputError(path, "label has non-integer values")
    lab = sample.label = lab.astype(np.int64, copy=False)
    if lab.size:
        lo, hi = int(lab.min()), int(lab.max())
        if lo < 0 or (num_classes is not None and hi >= num_classes):
            top = "" if num_classes is None else f"..{num_classes - 1}"
            raise InputError(path, f"label values {lo}..{hi} outside the class range 0{top}")
    return sample


class Reader:
    """One dataset layout. Subclasses set ``layout``, implement ``detect``, ``cases`` and ``load_case``.

    ``split`` picks a part of the dataset where the layout has one (``train``/``val``/``test``).
    Batch consumers iterate ``iter_cases(reader)``, which yields each bad case's fault instead of stopping;
    ``skipped`` holds the faults found while listing the cases (e.g. an image without its label).
    """

    layout: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ("train",)
    default_classes: ClassVar[list[str] | None] = None
    detect_priority: ClassVar[int] = 50  # lower is tried first by open_dataset's auto-detection

    def __init__(self, root: str | Path, split: str | None = None, classes: list[str] | None = None):
        self.root = Path(root)
        if not self.root.exists():
            raise InputError(self.root, "dataset folder not found")
        self.split = split or self.splits[0]
        if self.split not in self.splits:
            raise InputError(self.root, f"layout {self.layout!r} has no split {self.split!r}; "
                                        f"use one of {', '.join(self.splits)}")
        self.classes = list(classes or self.default_classes or [])
        self.skipped: list[tuple[str, str]] = []

    @classmethod
    def detect(cls, root: Path) -> bool:
        """True when ``root`` looks like this layout (cheap: file names only)."""
        raise NotImplementedError

    def cases(self) -> list[str]:
        raise NotImplementedError

    def load_case(self, case: str) -> Sample:
        raise NotImplementedError

    def num_slices(self, case: str) -> int:
        """Number of 2D slices of ``case``; readers override this with a header-only read."""
        return self.load_case(case).num_slices()

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) or None

    def _finish(self, sample: Sample, path: str | Path) -> Sample:
        """Fill common meta fields and validate the sample."""
        sample.meta.setdefault("classes", self.classes)
        sample.meta.setdefault("path", str(path))
        return check_sample(sample, path, self.num_classes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r})"


def iter_cases(reader: Reader, cases: list[str] | None = None) -> Iterator[tuple[str, Sample | None, str | None]]:
    """``(case, sample, None)`` for each case that loads, ``(case, None, fault)`` for each that does not.

    The one loop for batch jobs (evaluation, validation, checks, conversion): a bad case is reported to
    the caller, which records it and goes on with the others.
    """
    known = reader.cases()
    names = set(known)
    for case in known if cases is None else cases:
        if case not in names:
            yield case, None, f"no case {case!r} in this dataset (cases: {', '.join(known[:5])}...)"
            continue
        try:
            sample = reader.load_case(case)
        except InputError as e:
            yield case, None, str(e)
            continue
        yield case, sample, None


class SampleList(Reader):
    """Samples held in memory (e.g. validation volumes passed to ``train``) behind the Reader interface;
    cases are the samples' names, or ``case000``... for unnamed ones."""

    layout = "samples"

    def __init__(self, samples: list[Sample], split: str = "val"):
        self.root, self.split, self.classes, self.skipped = None, split, [], []
        self._samples = {s.case or f"case{i:03d}": s for i, s in enumerate(samples)}
        if len(self._samples) < len(samples):
            names = [s.case for s in samples]
            twice = sorted({n for n in names if n and names.count(n) > 1})
            raise InputError(None, f"samples share case names ({', '.join(twice[:5])}); name each case once")

    def __repr__(self) -> str:
        return f"{len(self._samples)} in-memory samples"

    def cases(self) -> list[str]:
        return list(self._samples)

    def load_case(self, case: str) -> Sample:
        return self._samples[case]


#: the slice suffix of 2D training names: ``case0005_slice012``, ``patient001_frame01_slice_3``
SLICE_NAME = re.compile(r"_slice_?(\d+)$")


def slice_order(name: str) -> tuple[str, int]:
    """Sort key putting a case's slices in slice order (``_slice_2`` before ``_slice_10``)."""
    m = SLICE_NAME.search(name)
    return (name[: m.start()], int(m.group(1))) if m else (name, 0)


def volume_key(name: str) -> str:
    """The stored volume a slice name belongs to: ``patient001_frame01_slice_3`` -> ``patient001_frame01``
    (one ACDC frame); the name itself for a volume."""
    return SLICE_NAME.sub("", name)


def case_key(name: str) -> str:
    """The case (for ACDC: the patient) a slice or volume name belongs to: ``case0005_slice012`` ->
    ``case0005``, ``patient001_frame01_slice_3`` -> ``patient001``; used for hold-outs, folds, leak checks
    and the fingerprint's grouping."""
    base = volume_key(name)
    m = re.match(r"(patient\d+)_frame\d+$", base)
    return m.group(1) if m else base


def group_volumes(names: list[str]) -> dict[str, list[str]]:
    """Stored volume name -> its cases in slice order (``volume_key``; a volume case is its own group)."""
    groups: dict[str, list[str]] = {}
    for n in sorted(names, key=slice_order):
        groups.setdefault(volume_key(n), []).append(n)
    return groups


def stack_volume(reader: Reader, names: list[str], case: str | None = None) -> Sample:
    """One volume from its stored cases: a volume case as it is; 2D slice cases (``..._slice_3``) stacked in
    slice order, all channels kept ((D,H,W) for one channel, else (D,C,H,W)), with their labels. Slices of
    different sizes are a one-line InputError. The one regrouping of slices into volumes (validation of
    slice-wise splits, INT8 calibration)."""
    parts = [reader.load_case(n).as_volume() for n in sorted(names, key=slice_order)]
    name = case or volume_key(names[0])
    if len({p.image.shape[1:] for p in parts}) > 1:
        raise InputError(getattr(reader, "root", None), f"the slices of {name} differ in size")
    image = np.concatenate([p.image for p in parts])
    if image.ndim == 4 and image.shape[1] == 1:
        image = image[:, 0]
    label = None if any(p.label is None for p in parts) else np.concatenate([p.label for p in parts])
    return Sample(image, label, {**parts[0].meta, "case": name, "is_volume": True})


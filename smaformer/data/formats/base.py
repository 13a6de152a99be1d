"""Shared pieces of the layout readers: a reader for layouts of listed npz/h5 array files, and one for layouts
made of (image file, label file) pairs, which most layouts are."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from smaformer.data.arrays import array_shape
from smaformer.data.io import is_nifti, nifti_header_props, read_image
from smaformer.data.sample import Reader, Sample
from smaformer.errors import InputError

log = logging.getLogger(__name__)

LAYOUTS: dict[str, type[Reader]] = {}   # layout name -> reader, in registration order (most specific first)


def register_layout(cls: type[Reader]) -> type[Reader]:
    """Class decorator: make a reader available to ``open_dataset`` under ``cls.layout``."""
    LAYOUTS[cls.layout] = cls
    return cls


def list_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Sorted files in ``folder`` whose names end with one of ``suffixes`` (case-insensitive)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(suffixes))


def stem(path: Path) -> str:
    """File name without its (possibly double, e.g. ``.nii.gz``) extension."""
    name = path.name
    for ext in (".nii.gz", ".npy.h5"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _fmt(spacing) -> str:
    return "x".join(f"{v:.3g}" for v in spacing)


class PairedReader(Reader):
    """Base for layouts whose cases are (image file, label file) pairs.

    Subclasses implement ``_find_pairs() -> {case: (image_path, label_path or None)}`` and may override
    ``_map_label`` (mask value coding) and ``_meta_extra``. Images without their label (and labels
    without their image) are reported in ``skipped`` as "missing pair" and left out of ``cases()``.
    """

    labeled = True

    def __init__(self, root, split=None, classes=None, frame: int | None = None):
        super().__init__(root, split, classes)
        self.frame = frame
        self._pairs: dict[str, tuple[Path, Path | None]] | None = None

    def _find_pairs(self) -> dict[str, tuple[Path | None, Path | None]]:
        raise NotImplementedError

    def pairs(self) -> dict[str, tuple[Path, Path | None]]:
        if self._pairs is None:
            found = self._find_pairs()
            if not found:
                raise InputError(self.root, f"no {self.layout} cases found for split {self.split!r}")
            self._pairs = {}
            for case, (img, lab) in found.items():
                if img is None:
                    self.skipped.append((case, str(InputError(lab, "missing pair: label without image"))))
                elif lab is None and self.labeled:
                    self.skipped.append((case, str(InputError(img, "missing pair: image without label"))))
                else:
                    self._pairs[case] = (img, lab)
            for case, fault in self.skipped:
                log.warning("skipping case %s: %s", case, fault)
        return self._pairs

    def cases(self) -> list[str]:
        return list(self.pairs())

    def num_slices(self, case: str) -> int:
        img, _ = self.pairs()[case]
        if is_nifti(img):
            return int(nifti_header_props(img)["shape"][0])
        return self.load_case(case).num_slices()

    def _map_label(self, label: np.ndarray, path: Path) -> np.ndarray:
        """Turn stored mask values into class ids (default: as stored)."""
        return label

    def _meta_extra(self, case: str) -> dict:
        return {}

    def load_case(self, case: str) -> Sample:
        img_path, lab_path = self.pairs()[case]
        image, props = read_image(img_path, frame=self.frame)
        label, warnings = None, []
        if lab_path is not None:
            lab, lab_props = read_image(lab_path, frame=self.frame, dtype=None)
            if lab_props["is_volume"] != props["is_volume"]:
                raise InputError(lab_path, "label is a volume but the image is 2D (or the other way round)")
            if not props["is_volume"]:  # 2D masks: one channel (colour masks carry the same value thrice)
                lab = lab[0]
            label = self._map_label(lab, lab_path)
            if props.get("affine") is not None and lab_props.get("affine") is not None \
                    and not np.allclose(props["affine"], lab_props["affine"], atol=1e-3):
                warnings.append(f"{lab_path}: label affine differs from the image's (spacing "
                                f"{_fmt(lab_props['spacing'])} vs {_fmt(props['spacing'])}); using the image geometry")
                log.warning(warnings[-1])
        meta = {"case": case, "path": str(img_path), "label_path": str(lab_path) if lab_path else None,
                "spacing": props["spacing"], "affine": props.get("affine"), "props": props,
                "is_volume": props["is_volume"], "warnings": warnings, **self._meta_extra(case)}
        return self._finish(Sample(image, label, meta), lab_path or img_path)


class ListedArrayReader(Reader):
    """A layout of npz/h5 array files named by a list (``_names``, set by the subclass): its training split
    holds one 2D slice per file, its other splits one volume per file (Synapse, ACDC h5)."""

    _names: list[str]

    def _path(self, case: str) -> Path:
        raise NotImplementedError

    def cases(self) -> list[str]:
        return list(self._names)

    def num_slices(self, case: str) -> int:
        return 1 if self.split == "train" else int(array_shape(self._path(case))[0])


def match_by_stem(images, masks, strip=("_mask", "_seg", "_label", "_gt"), key=None):
    """Pair image and mask files by ``key`` (default: the stem; a mask may carry one of the ``strip`` suffixes).
    Returns ``{case: (image or None, mask or None)}``."""
    key = key or stem
    by_key = {}
    for m in masks:
        k = key(m)
        for suf in strip:
            if k.endswith(suf) and len(k) > len(suf):
                k = k[: -len(suf)]
                break
        by_key[k] = m
    found = {key(p): (p, by_key.pop(key(p), None)) for p in images}
    found.update({c: (None, m) for c, m in by_key.items()})
    return found


def split_dir(reader: PairedReader, marker: str):
    """``root`` when it holds ``marker`` (and the default split is asked for), else ``root/<split>``."""
    if (reader.root / marker).is_dir() and reader.split == reader.splits[0]:
        return reader.root
    base = reader.root / reader.split
    if not (base / marker).is_dir():
        raise InputError(base / marker, f"folder for split {reader.split!r} not found")
    return base

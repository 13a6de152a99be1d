"""ACDC cardiac MRI: the SSL4MIS h5 layout (2D training slices, 3D validation volumes) and the raw
challenge layout (``patientXXX/patientXXX_frameYY.nii.gz`` + ``_gt.nii.gz``, with spacing).

Labels: 0 background, 1 RV, 2 myocardium, 3 LV. The h5 files store no spacing, so ``meta["spacing"]``
is None there (metrics in voxels unless a spacing is given).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from smaformer.data.arrays import read_arrays
from smaformer.data.formats.base import ListedArrayReader, PairedReader, register_layout
from smaformer.data.sample import Sample
from smaformer.errors import InputError

ACDC_CLASSES = ["background", "RV", "Myo", "LV"]


@register_layout
class ACDCH5Reader(ListedArrayReader):
    """SSL4MIS layout: ``train_slices.list`` names ``slices/<name>.h5`` (image/label (H,W)); ``val.list``
    and ``test.list`` name volumes (image/label (D,H,W)) in ``volumes/``, ``data/`` or the root."""

    layout = "acdc_h5"
    splits = ("train", "val", "test")
    default_classes = ACDC_CLASSES
    LISTS = {"train": "train_slices.list", "val": "val.list", "test": "test.list"}

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "train_slices.list").is_file() or (root / "val.list").is_file() and \
            any((root / d).is_dir() for d in ("volumes", "data"))

    def __init__(self, root, split=None, classes=None):
        super().__init__(root, split, classes)
        lst = self.root / self.LISTS[self.split]
        if not lst.is_file():
            raise InputError(lst, f"list file for split {self.split!r} not found")
        self._names = [ln.strip() for ln in lst.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not self._names:
            raise InputError(lst, "list file is empty")
        self._dirs = ([self.root / "slices", self.root / "data" / "slices"] if self.split == "train"
                      else [self.root / "volumes", self.root / "data", self.root])

    def _path(self, case: str) -> Path:
        for d in self._dirs:
            if (d / f"{case}.h5").exists():
                return d / f"{case}.h5"
        raise InputError(self._dirs[0] / f"{case}.h5", "file listed but not found")

    def load_case(self, case: str) -> Sample:
        path = self._path(case)
        arr = read_arrays(path)
        image, label = arr["image"].astype(np.float32), arr["label"]
        is_volume = self.split != "train"
        want = 3 if is_volume else 2
        if image.ndim != want:
            raise InputError(path, f"expected a {want}D image in this split, got shape {image.shape}")
        if not is_volume:
            image = image[None]
        meta = {"case": case, "path": str(path), "spacing": None, "affine": None, "is_volume": is_volume,
                "patient": case.split("_")[0]}
        return self._finish(Sample(image, label, meta), path)


@register_layout
class ACDCRawReader(PairedReader):
    """Raw challenge layout: ``[training/|testing/]patientXXX/patientXXX_frameYY[_gt].nii.gz``.

    Cases are ``patientXXX_frameYY`` (the ED and ES frames that have ground truth).
    """

    layout = "acdc_raw"
    default_classes = ACDC_CLASSES
    PATTERN = re.compile(r"^(patient\d+_frame\d+)(_gt)?\.nii(\.gz)?$")

    @classmethod
    def _patient_dirs(cls, root: Path) -> list[Path]:
        dirs = [d for sub in (root, root / "training", root / "testing") if sub.is_dir()
                for d in sorted(sub.iterdir()) if d.is_dir() and re.fullmatch(r"patient\d+", d.name)]
        return dirs

    @classmethod
    def detect(cls, root: Path) -> bool:
        dirs = cls._patient_dirs(root) if root.is_dir() else []
        return any(cls.PATTERN.match(p.name) for d in dirs[:3] for p in d.iterdir())

    def _find_pairs(self):
        found: dict[str, list] = {}
        for d in self._patient_dirs(self.root):
            for p in sorted(d.iterdir()):
                m = self.PATTERN.match(p.name)
                if m:
                    found.setdefault(m.group(1), [None, None])[1 if m.group(2) else 0] = p
        return {c: tuple(v) for c, v in found.items()}

    def _meta_extra(self, case: str) -> dict:
        """Patient id, and from ``Info.cfg`` the cardiac phase (ED/ES) of the frame and the patient group."""
        patient, frame = case.split("_")
        meta = {"patient": patient}
        cfg = self.pairs()[case][0].parent / "Info.cfg"
        if cfg.is_file():
            info = dict(ln.split(":", 1) for ln in cfg.read_text(encoding="utf-8").splitlines() if ":" in ln)
            info = {k.strip(): v.strip() for k, v in info.items()}
            num = int(frame.removeprefix("frame"))
            meta["phase"] = next((ph for ph in ("ED", "ES") if info.get(ph, "").isdigit() and int(info[ph]) == num),
                                 None)
            meta["group"] = info.get("Group")
        return meta

"""Synapse multi-organ CT in the TransUNet release layout.

``train_npz/caseXXXX_sliceYYY.npz`` (image/label (512,512)), ``test_vol_h5/caseXXXX.npy.h5`` (image/label
(D,512,512)), and the lists ``train.txt`` / ``test_vol.txt`` in ``lists_Synapse/`` (the root,
``root/lists/lists_Synapse`` or ``list_dir``). Images are already windowed to [0, 1]. Files written by
``smaformer convert`` also hold a ``spacing`` array, which the official loaders ignore.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from smaformer.data.arrays import read_arrays
from smaformer.data.formats.base import ListedArrayReader, list_files, register_layout, stem
from smaformer.data.sample import Sample
from smaformer.errors import InputError

# DESIGN.md order (paper tables, SMAFormer's test script)
SYNAPSE_CLASSES = ["background", "aorta", "gallbladder", "kidney_left", "kidney_right", "liver", "pancreas",
                   "spleen", "stomach"]


@register_layout
class SynapseReader(ListedArrayReader):
    """``split="train"``: 2D npz slices; ``split="test"``: 3D h5 volumes."""

    layout = "synapse"
    splits = ("train", "test")
    default_classes = SYNAPSE_CLASSES
    FOLDERS = {"train": ("train_npz", ".npz", "train.txt"), "test": ("test_vol_h5", ".npy.h5", "test_vol.txt")}

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "train_npz").is_dir() or (root / "test_vol_h5").is_dir()

    def __init__(self, root, split=None, classes=None, list_dir: str | Path | None = None):
        super().__init__(root, split, classes)
        folder, self._suffix, list_name = self.FOLDERS[self.split]
        self._folder = self.root / folder
        if not self._folder.is_dir():
            raise InputError(self._folder, f"folder for split {self.split!r} not found")
        dirs = [Path(list_dir)] if list_dir else [self.root / "lists_Synapse", self.root / "lists" / "lists_Synapse"]
        lst = next((d / list_name for d in dirs if (d / list_name).is_file()), None)
        if list_dir and lst is None:
            raise InputError(Path(list_dir) / list_name, "list file not found")
        if lst is not None:
            self._names = [ln.strip() for ln in lst.read_text(encoding="utf-8").splitlines() if ln.strip()]
        else:
            self._names = [stem(p) for p in list_files(self._folder, (self._suffix,))]
        if not self._names:
            raise InputError(lst or self._folder, f"no {self._suffix} files for split {self.split!r}")

    def _path(self, case: str) -> Path:
        return self._folder / f"{case}{self._suffix}"

    def load_case(self, case: str) -> Sample:
        path = self._path(case)
        arr = read_arrays(path, optional=("spacing",))
        image, label = arr["image"].astype(np.float32), arr["label"]
        is_volume = self.split == "test"
        want = 3 if is_volume else 2
        if image.ndim != want:
            raise InputError(path, f"expected a {want}D image in {self._folder.name}, got shape {image.shape}")
        spacing = tuple(float(s) for s in arr["spacing"]) if "spacing" in arr else None
        if spacing is not None and not is_volume:
            spacing = spacing[-2:]
        meta = {"case": case, "path": str(path), "spacing": spacing, "affine": None, "is_volume": is_volume}
        return self._finish(Sample(image if is_volume else image[None], label, meta), path)

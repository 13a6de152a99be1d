"""DRIVE retinal vessels: ``training/`` and ``test/`` with ``images/NN_*.tif`` (RGB), ``1st_manual/
NN_manual1.gif`` (vessels {0,255} -> {0,1}) and ``mask/NN_*_mask.gif`` (field of view, in
``meta["fov"]`` so metrics can be restricted to it)."""
from __future__ import annotations

import numpy as np

from smaformer.data.formats.base import PairedReader, list_files, match_by_stem, register_layout
from smaformer.data.io import read_image
from smaformer.errors import InputError


def _number(path) -> str:
    """The case number DRIVE file names start with (``21_training.tif``, ``21_manual1.gif``)."""
    return path.name.split("_")[0]


@register_layout
class DriveReader(PairedReader):
    layout = "drive"
    splits = ("train", "test")
    default_classes = ["background", "vessel"]
    FOLDER = {"train": "training", "test": "test"}

    @classmethod
    def detect(cls, root) -> bool:
        return any((root / f / "1st_manual").is_dir() and (root / f / "images").is_dir() for f in ("training", "test"))

    def _find_pairs(self):
        base = self.root / self.FOLDER[self.split]
        self._fov = {_number(p): p for p in list_files(base / "mask", (".gif", ".png", ".tif"))}
        return match_by_stem(list_files(base / "images", (".tif", ".tiff", ".png")),
                             list_files(base / "1st_manual", (".gif", ".png", ".tif")), strip=(), key=_number)

    def _map_label(self, label, path):
        if not set(np.unique(label).tolist()) <= {0.0, 255.0}:
            raise InputError(path, "vessel mask values must be 0 or 255")
        return (label > 127).astype(np.int64)

    def _meta_extra(self, case: str) -> dict:
        self.pairs()  # lists the folders once, the FOV masks included
        fov = self._fov.get(case)
        return {"fov": None if fov is None else read_image(fov)[0][0] > 127, "fov_path": str(fov) if fov else None}

"""LiTS2017 liver/tumour CT: the raw challenge files and the PNG-slice layout.

- raw: ``volume-N.nii[.gz]`` + ``segmentation-N.nii[.gz]`` anywhere under the root (e.g. in
  ``Training Batch 1/``); cases ``volume-N``; HU intensities, spacing from the header.
- PNG slices (SMAFormer's preprocessing): ``trainImage_lits2017_png/`` + ``trainMask_lits2017_png/``
  (and ``test*``), same file names; mask values 0/150/255 -> 0/1/2. Images keep their 0..255 values;
  the intensity spec ``{mode: window, lo: 0, hi: 255}`` gives the official /255.
  The official loader splits train/val 80/20 over shuffled *slices*, which mixes patients; here
  ``train`` and ``test`` are the two folders and validation is the caller's (patient-level) choice.
"""
from __future__ import annotations

import re

import numpy as np

from smaformer.data.formats.base import PairedReader, list_files, match_by_stem, register_layout
from smaformer.errors import InputError

LITS_CLASSES = ["background", "liver", "tumor"]
PNG_CODES = {0: 0, 150: 1, 255: 2}


@register_layout
class LiTSRawReader(PairedReader):
    layout = "lits_raw"
    detect_priority = 70  # searches the tree
    default_classes = LITS_CLASSES
    PATTERN = re.compile(r"^(volume|segmentation)-(\d+)\.nii(\.gz)?$")

    @classmethod
    def detect(cls, root) -> bool:
        return root.is_dir() and any(cls.PATTERN.match(p.name) for p in root.rglob("volume-*.nii*"))

    def _find_pairs(self):
        found: dict[str, list] = {}
        for p in sorted(self.root.rglob("*.nii*")):
            m = self.PATTERN.match(p.name)
            if m:
                found.setdefault(f"volume-{int(m.group(2))}", [None, None])[m.group(1) == "segmentation"] = p
        return dict(sorted(((c, tuple(v)) for c, v in found.items()), key=lambda kv: int(kv[0].split("-")[1])))


@register_layout
class LiTSPngReader(PairedReader):
    layout = "lits_png"
    splits = ("train", "test")
    default_classes = LITS_CLASSES

    @classmethod
    def detect(cls, root) -> bool:
        return (root / "trainImage_lits2017_png").is_dir() or (root / "testImage_lits2017_png").is_dir()

    def _find_pairs(self):
        return match_by_stem(list_files(self.root / f"{self.split}Image_lits2017_png", (".png",)),
                             list_files(self.root / f"{self.split}Mask_lits2017_png", (".png",)), strip=())

    def _map_label(self, label, path):
        values = np.unique(label)
        bad = [int(v) for v in values if int(v) not in PNG_CODES]
        if bad:
            raise InputError(path, f"mask value {bad[0]} is not one of 0/150/255 (background/liver/tumour)")
        lut = np.zeros(256, np.int64)
        for v, c in PNG_CODES.items():
            lut[v] = c
        return lut[label.astype(np.int64)]

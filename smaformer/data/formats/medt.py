"""MedT's 2D folder layout (GlaS, MoNuSeg, Brain US): ``img/`` images and ``labelcol/`` masks with the same
stem (``.png``). As MedT's loader does, masks are binarised (> 127 -> 1). ``root`` is the folder holding
``img/``, or its parent with ``train/``, ``val/``, ``test/`` sub-folders."""
from __future__ import annotations

import numpy as np

from smaformer.data.formats.base import PairedReader, list_files, match_by_stem, register_layout, split_dir
from smaformer.data.io import IMAGE_SUFFIXES


@register_layout
class MedTReader(PairedReader):
    layout = "medt"
    detect_priority = 80
    splits = ("train", "val", "test")
    default_classes = ["background", "foreground"]

    @classmethod
    def detect(cls, root) -> bool:
        return any((d / "img").is_dir() and (d / "labelcol").is_dir()
                   for d in (root, root / "train", root / "val", root / "test"))

    def _find_pairs(self):
        base = split_dir(self, "img")
        return match_by_stem(list_files(base / "img", IMAGE_SUFFIXES), list_files(base / "labelcol", IMAGE_SUFFIXES))

    def _map_label(self, label, path):
        return (label > 127).astype(np.int64)

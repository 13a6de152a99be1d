"""MedT's 2D folder layout (GlaS, MoNuSeg, Brain US): ``img/`` images and ``labelcol/`` masks with the same
stem (``.png``). As MedT's loader does, masks are binarised (> 127 -> 1). ``root`` is the folder holding
``img/``, or its parent with ``train/``, ``val/``, ``test/`` sub-folders."""
from __future__ import annotations

import numpy as np

from smaformer.data.formats import register_layout
from smaformer.data.formats.base import PairedReader, list_files, stem
from smaformer.data.io import IMAGE_SUFFIXES
from smaformer.errors import InputError


def split_dir(reader: PairedReader, marker: str):
    """``root`` when it holds ``marker`` (and the default split is asked for), else ``root/<split>``."""
    if (reader.root / marker).is_dir() and reader.split == reader.splits[0]:
        return reader.root
    base = reader.root / reader.split
    if not (base / marker).is_dir():
        raise InputError(base / marker, f"folder for split {reader.split!r} not found")
    return base


def match_by_stem(images, masks, strip=("_mask", "_seg", "_label", "_gt")):
    """Pair image and mask files by stem (a mask may carry one of the ``strip`` suffixes)."""
    by_stem = {}
    for m in masks:
        s = stem(m)
        for suf in strip:
            if s.endswith(suf) and len(s) > len(suf):
                s = s[: -len(suf)]
                break
        by_stem[s] = m
    found = {stem(p): (p, by_stem.pop(stem(p), None)) for p in images}
    found.update({c: (None, m) for c, m in by_stem.items()})
    return found


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

"""Generic ``images/`` + ``masks/`` (or ``labels/``) folders matched by file stem; 2D images or NIfTI volumes.

A mask may end in ``_mask``/``_seg``/``_label``/``_gt``. Masks holding only 0 and 255 are read as binary
{0, 1}; others as stored class ids. ``root`` holds ``images/`` or ``<split>/images/``.
"""
from __future__ import annotations

import numpy as np

from smaformer.data.formats.base import PairedReader, list_files, match_by_stem, register_layout, split_dir
from smaformer.data.io import IMAGE_SUFFIXES, NIFTI_SUFFIXES

SUFFIXES = IMAGE_SUFFIXES + NIFTI_SUFFIXES


@register_layout
class ImageFolderReader(PairedReader):
    layout = "image_folder"
    detect_priority = 90
    splits = ("train", "val", "test")

    @classmethod
    def detect(cls, root) -> bool:
        return any((d / "images").is_dir() and ((d / "masks").is_dir() or (d / "labels").is_dir())
                   for d in (root, root / "train", root / "val", root / "test"))

    def _find_pairs(self):
        base = split_dir(self, "images")
        masks = base / "masks" if (base / "masks").is_dir() else base / "labels"
        return match_by_stem(list_files(base / "images", SUFFIXES), list_files(masks, SUFFIXES))

    def _map_label(self, label, path):
        values = np.unique(label)
        if len(values) == 2 and values[0] == 0 and values[1] == 255:
            return (label > 127).astype(np.int64)
        return label

"""Post-processing of label volumes with 3D connected components (largest component, minimum size)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def postprocess_labels(labels: np.ndarray, mode: str, *, min_size: int = 0, connectivity: int | None = None,
                       classes: list[int] | None = None) -> np.ndarray:
    """Clean a label volume per class with 3D connected components; removed voxels become background 0.

    ``mode="lcc"`` keeps each class's largest component; ``mode="min_size"`` drops components smaller than
    ``min_size`` voxels. Components are found in the full array dimensionality (3D for volumes, unlike the
    official scripts' slice-row version). ``connectivity`` defaults to full (26-neighbourhood in 3D), as in
    nnU-Net. ``classes`` limits which labels are touched (default: all non-zero labels present).
    """
    if mode not in ("lcc", "min_size"):
        raise ValueError(f"unknown post-processing {mode!r}; use 'lcc' or 'min_size'")
    if mode == "min_size" and min_size < 1:
        raise ValueError(f"min_size must be >= 1 voxel, got {min_size}")
    out = np.array(labels, copy=True)
    structure = ndimage.generate_binary_structure(out.ndim, connectivity or out.ndim)
    boxes = ndimage.find_objects(out.astype(np.int64) if out.dtype.kind not in "iu" else out)
    for k, box in enumerate(boxes, start=1):
        if box is None or (classes is not None and k not in classes):
            continue
        view = out[box]
        comp, n = ndimage.label(view == k, structure=structure)
        if n <= 1 and mode == "lcc":
            continue
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        if mode == "lcc":  # exactly one component, the first of any tie
            keep = np.zeros(sizes.shape, dtype=bool)
            keep[int(np.argmax(sizes))] = True
        else:
            keep = sizes >= min_size
        keep[0] = True
        view[(comp > 0) & ~keep[comp]] = 0
    return out

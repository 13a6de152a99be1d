"""Segmentation metrics: Dice, IoU, HD95, ASSD and counts, per case and per class (DESIGN.md §4).

Surface distances follow ``medpy.metric.binary`` exactly: the surface of a mask is the mask XOR its
erosion (``generate_binary_structure(ndim, connectivity)``, voxels on the array border count as surface),
distances are Euclidean in spacing units, and HD95 is ``numpy.percentile`` (linear) at 95 of both directed
distance sets pooled. It is fast because both masks are cropped to the bounding box of their union (+1
voxel, which keeps erosion at the array border identical) and nearest surface points come from a KD-tree
instead of a full-volume distance transform.

Two conventions for empty masks are always reported side by side:

- ``standard``: both empty → NaN (dropped by nanmean); exactly one empty → Dice/IoU 0 and HD95/ASSD = the
  volume's diagonal in spacing units (``sqrt(sum((shape*spacing)**2))``); such cases are counted.
- ``legacy``: the TransUNet / Swin-Unet ``calculate_metric_percase``: both non-empty → (medpy dc, medpy
  hd95 **in voxels**, no spacing, as those scripts call it); prediction non-empty and reference empty →
  (1, 0); otherwise → (0, 0).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

SLICE_DICE_SMOOTH = 1e-5
SLICE_DICE_RULE = ("per slice (2*|P&G| + 1e-5) / (|P| + |G| + 1e-5), averaged over all slices along axis 0; "
                   "a slice where both masks are empty scores 1 (SMAFormer's dice_coef_synapse), which "
                   "inflates the value")


def _spacing(spacing: float | Sequence[float] | None, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim or not np.all(sp > 0):
        raise ValueError(f"spacing {tuple(sp)} must be {ndim} positive numbers")
    return sp


def diagonal(shape: Sequence[int], spacing: float | Sequence[float] | None = None) -> float:
    """Length of the volume's diagonal in spacing units: the worst-case distance of the standard convention."""
    return float(np.sqrt(np.sum((np.asarray(shape, dtype=np.float64) * _spacing(spacing, len(shape))) ** 2)))


def _label_boxes(vol: np.ndarray, labels: Sequence[int]) -> dict[int, tuple[slice, ...] | None]:
    """Bounding box of every label id in one pass (``find_objects``); label 0 gets the whole volume."""
    vol = vol if np.issubdtype(vol.dtype, np.integer) else vol.astype(np.int64)
    top = max([int(lab) for lab in labels] + [0])
    found = ndimage.find_objects(vol, max_label=top) if top > 0 else []
    whole = tuple(slice(0, n) for n in vol.shape)
    return {int(lab): whole if lab == 0 else found[lab - 1] for lab in labels}


def _merge(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None, shape) -> tuple[slice, ...] | None:
    """Union of two boxes grown by one voxel, clipped to the array (see module docstring)."""
    boxes = [bx for bx in (a, b) if bx is not None]
    if not boxes:
        return None
    return tuple(slice(max(min(bx[d].start for bx in boxes) - 1, 0), min(max(bx[d].stop for bx in boxes) + 1, n))
                 for d, n in enumerate(shape))


def _surface_points(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """Integer coordinates (N, ndim) of mask XOR erosion(mask), in C order like medpy's boolean indexing."""
    footprint = ndimage.generate_binary_structure(mask.ndim, connectivity)
    border = mask ^ ndimage.binary_erosion(mask, structure=footprint, iterations=1)
    return np.argwhere(border)


def _directed(src: np.ndarray, dst: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance from each ``src`` surface point to its nearest ``dst`` surface point, in spacing units."""
    tree = cKDTree(dst * spacing)
    _, idx = tree.query(src * spacing, k=1, workers=-1)
    # Recompute from index differences, as scipy's EDT does, so values match medpy to rounding.
    diff = (src - dst[idx]) * spacing
    return np.sqrt(np.sum(diff * diff, axis=1))


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: float | Sequence[float] | None = None,
                      connectivity: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Both directed surface-distance sets (pred→ref, ref→pred); both masks must be non-empty."""
    pred, ref = np.atleast_1d(np.asarray(pred, dtype=bool)), np.atleast_1d(np.asarray(ref, dtype=bool))
    if pred.shape != ref.shape:
        raise ValueError(f"shapes differ: pred {pred.shape} vs ref {ref.shape}")
    box = _merge(_label_boxes(pred.view(np.uint8), [1])[1], _label_boxes(ref.view(np.uint8), [1])[1], pred.shape)
    if not pred.any() or not ref.any():
        raise ValueError("surface distances need two non-empty masks")
    sp = _spacing(spacing, pred.ndim)
    ps, rs = _surface_points(pred[box], connectivity), _surface_points(ref[box], connectivity)
    return _directed(ps, rs, sp), _directed(rs, ps, sp)


def _hd95(d1: np.ndarray, d2: np.ndarray) -> float:
    return float(np.percentile(np.hstack((d1, d2)), 95))


def _assd(d1: np.ndarray, d2: np.ndarray) -> float:
    """Mean of both directed sets pooled, as medpy >= 0.5 computes ASSD (older medpy averaged the two means)."""
    return float(np.concatenate((d1, d2)).mean())


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two binary masks: medpy's ``dc`` when either is non-empty; NaN when both are empty."""
    p, r = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(r))
    return 2.0 * np.count_nonzero(p & r) / float(total) if total else math.nan


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    """Jaccard index of two binary masks (medpy's ``jc``); NaN when both are empty."""
    p, r = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    union = int(np.count_nonzero(p | r))
    return np.count_nonzero(p & r) / float(union) if union else math.nan


def _empty_distance(p_any: bool, r_any: bool, shape, spacing) -> float | None:
    """The standard convention's value when a mask is empty; None when both masks are non-empty."""
    if p_any and r_any:
        return None
    return math.nan if not (p_any or r_any) else diagonal(shape, spacing)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: float | Sequence[float] | None = None,
         connectivity: int = 1) -> float:
    """medpy's ``hd95`` when both masks are non-empty; standard convention otherwise (NaN / diagonal)."""
    p, r = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    empty = _empty_distance(bool(p.any()), bool(r.any()), p.shape, spacing)
    return empty if empty is not None else _hd95(*surface_distances(p, r, spacing, connectivity))


def assd(pred: np.ndarray, ref: np.ndarray, spacing: float | Sequence[float] | None = None,
         connectivity: int = 1) -> float:
    """medpy's ``assd`` when both masks are non-empty; standard convention otherwise (NaN / diagonal)."""
    p, r = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    empty = _empty_distance(bool(p.any()), bool(r.any()), p.shape, spacing)
    return empty if empty is not None else _assd(*surface_distances(p, r, spacing, connectivity))


def slice_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Slice-level Dice of two binary (D,H,W) masks with SMAFormer's smoothing rule (see SLICE_DICE_RULE)."""
    p, r = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    axes = tuple(range(1, p.ndim))
    inter = np.count_nonzero(p & r, axis=axes).astype(np.float64)
    total = np.count_nonzero(p, axis=axes) + np.count_nonzero(r, axis=axes)
    return float(np.mean((2 * inter + SLICE_DICE_SMOOTH) / (total + SLICE_DICE_SMOOTH)))


def case_metrics(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int],
                 spacing: float | Sequence[float] | None = None, connectivity: int = 1) -> dict[int, dict]:
    """All metrics for each label id of one case, from two label volumes of the same shape.

    Per label: counts (``tp``, ``fp``, ``fn``, ``n_pred``, ``n_ref``), ``empty`` (``"none"``, ``"pred"``,
    ``"ref"`` or ``"both"``: which masks are empty), ``standard`` {dice, iou, hd95, assd} (spacing units),
    ``legacy`` {dice, hd95 (voxels)} and, for 3D, ``slice`` {dice} (slices along axis 0, SLICE_DICE_RULE).
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if any(int(lab) < 0 for lab in labels):
        raise ValueError(f"label ids must be >= 0, got {list(labels)}")
    sp = _spacing(spacing, pred.ndim)
    diag = diagonal(pred.shape, sp)
    pboxes, rboxes = _label_boxes(pred, labels), _label_boxes(ref, labels)
    out: dict[int, dict] = {}
    for lab in labels:
        box = _merge(pboxes[int(lab)], rboxes[int(lab)], pred.shape)
        if box is None:
            box = tuple(slice(0, 0) for _ in pred.shape)
        p, r = pred[box] == lab, ref[box] == lab
        tp = int(np.count_nonzero(p & r))
        n_pred, n_ref = int(np.count_nonzero(p)), int(np.count_nonzero(r))
        res = {"tp": tp, "fp": n_pred - tp, "fn": n_ref - tp, "n_pred": n_pred, "n_ref": n_ref,
               "empty": {(True, True): "none", (True, False): "ref", (False, True): "pred"}.get(
                   (n_pred > 0, n_ref > 0), "both")}
        if n_pred and n_ref:
            ps, rs = _surface_points(p, connectivity), _surface_points(r, connectivity)
            d1, d2 = _directed(ps, rs, sp), _directed(rs, ps, sp)
            std_dice = 2.0 * tp / (n_pred + n_ref)
            res["standard"] = {"dice": std_dice, "iou": tp / (n_pred + n_ref - tp),
                               "hd95": _hd95(d1, d2), "assd": _assd(d1, d2)}
            unit = np.ones_like(sp)
            legacy_hd = res["standard"]["hd95"] if np.all(sp == 1) else _hd95(
                _directed(ps, rs, unit), _directed(rs, ps, unit))
            res["legacy"] = {"dice": std_dice, "hd95": legacy_hd}
        elif n_pred or n_ref:
            res["standard"] = {"dice": 0.0, "iou": 0.0, "hd95": diag, "assd": diag}
            res["legacy"] = {"dice": 1.0 if n_pred else 0.0, "hd95": 0.0}
        else:
            res["standard"] = {"dice": math.nan, "iou": math.nan, "hd95": math.nan, "assd": math.nan}
            res["legacy"] = {"dice": 0.0, "hd95": 0.0}
        if pred.ndim == 3:
            # Slices outside the box are empty in both masks and score 1 each.
            inside = slice_dice(p, r) * p.shape[0] if p.size else 0.0
            res["slice"] = {"dice": (inside + pred.shape[0] - p.shape[0]) / pred.shape[0]}
        out[int(lab)] = res
    return out

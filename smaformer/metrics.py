"""Segmentation metrics: Dice, IoU, HD95, ASSD and counts, per case and per class (DESIGN.md §4).

Surface distances follow ``medpy.metric.binary`` exactly: the surface of a mask is the mask XOR its
erosion (``generate_binary_structure(ndim, connectivity)``, voxels on the array border count as surface),
distances are Euclidean in spacing units, and HD95 is ``numpy.percentile`` (linear) at 95 of both directed
distance sets pooled. It is fast because both masks are cropped to the bounding box of their union (+1
voxel, which keeps erosion at the array border identical), surfaces come from shifted ANDs, and nearest
surface points from a local scan of offsets sorted by length (points on both surfaces settle at once),
with a KD-tree or a distance transform of the crop for the few points it leaves (see METHODS).

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
from functools import lru_cache

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


# How the nearest surface points are found. Every method gives medpy's numbers; only the cost differs.
# - "scan": offsets sorted by length are tried in turn against the other surface (vectorised gathers),
#   so a point is settled at its first hit; 56-65% of the points of a ragged pair lie on both surfaces
#   and settle at the zero offset, most others within a few voxels.
# - "kdtree": a KD-tree over the other surface (cost grows with both surfaces).
# - "edt": scipy's EDT of the other surface's complement inside the crop, as medpy does on the whole
#   volume; exact because the crop holds all of that surface (cost grows with the crop).
# "auto" scans until the scan has cost _SCAN_SHARE of what the cheaper fallback would (ski rental), then
# hands the points left to that fallback (far apart surfaces: ~1.3x the fallback alone). Costs are seconds
# per unit on the build machine (docs/bench/metrics.md, the crossover); only their ratios matter.
METHODS = ("auto", "scan", "kdtree", "edt")
_SCAN_OFFSETS = 20_000      # offsets in the scan table: a ball of radius ~17 voxels in isotropic 3D
_SCAN_CHUNK = 1 << 18       # probes per vectorised step
_SCAN_SHARE = 0.3           # auto stops the scan once it has cost this share of the fallback
_COST_PROBE = 3e-9          # one (point, offset) probe of the scan
_COST_KD_POINT = 5e-7       # KD-tree build, per point of the other surface
_COST_KD_QUERY = 2e-6       # KD-tree query, per point (1.5-2 us)
_COST_EDT_VOXEL = 3e-7      # scipy EDT, per crop voxel (0.15 us at 0.5M voxels, 0.46 us at 3.1M)


def _border(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """medpy's surface: mask XOR its erosion by ``generate_binary_structure(ndim, connectivity)``, with
    the outside of the array counting as background (shifted ANDs; ~20x faster than binary_erosion)."""
    padded = np.pad(mask, 1)
    inner = mask.copy()
    for off in np.argwhere(ndimage.generate_binary_structure(mask.ndim, connectivity)) - 1:
        if off.any():
            inner &= padded[tuple(slice(1 + o, 1 + o + n) for o, n in zip(off, mask.shape, strict=True))]
    return mask ^ inner


def _lengths(offsets: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """Lengths of integer offsets (..., ndim) in spacing units, summed axis by axis as scipy's EDT does."""
    scaled = offsets.astype(np.float64) * sp
    return np.sqrt(np.add.reduce(scaled * scaled, axis=-1))


@lru_cache(maxsize=8)
def _offset_table(sp: tuple[float, ...], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets within a ball of about ``size`` voxels, sorted by length; their lengths; per-axis reach.

    The box is one voxel wider than the ball, so every offset no longer than the ball's radius is in it."""
    spa, ndim = np.asarray(sp), len(sp)
    ball = math.pi ** (ndim / 2) / math.gamma(ndim / 2 + 1)
    radius = (size * float(np.prod(spa)) / ball) ** (1 / ndim)
    reach = np.floor(radius / spa).astype(np.int64) + 1
    grid = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), -1).reshape(-1, ndim)
    length = _lengths(grid, spa)
    order = np.argsort(length, kind="stable")
    order = order[length[order] <= radius]
    return grid[order], length[order], reach


def _scan(pos: np.ndarray, todo: np.ndarray, dst: np.ndarray, steps: np.ndarray, lengths: np.ndarray,
          dist: np.ndarray, budget) -> np.ndarray:
    """Settle the points ``pos[todo]`` (flat indices into the padded flat surface ``dst``) at the first
    offset (flat ``steps[1:]``, sorted by ``lengths``) that hits ``dst``, writing ``dist``; return the
    indices of the points left unsettled (all offsets tried, or the scan has cost as much as ``budget``)."""
    q, spent, k = pos[todo], 0.0, 1
    while todo.size and k < steps.size:
        g = min(steps.size - k, max(1, _SCAN_CHUNK // todo.size))
        block = dst[steps[k:k + g, None] + q]  # (g, n): row j probes offset k + j for every point
        found = np.logical_or.reduce(block, axis=0)
        spent += _COST_PROBE * todo.size * g
        if found.any():  # the first hit of a point is its nearest: offsets are sorted by length
            dist[todo[found]] = lengths[k + np.compress(found, block, axis=1).argmax(axis=0)]
            keep = np.flatnonzero(~found)
            todo, q = todo[keep], q[keep]
        k += g
        if budget is not None and spent >= budget(todo.size):
            break
    return todo


def _kdtree_at(dst: np.ndarray, pts: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """Distance from each point (N, ndim) to the nearest True voxel of ``dst``, by a KD-tree."""
    ref = np.argwhere(dst)
    _, idx = cKDTree(ref * sp, balanced_tree=False, compact_nodes=False).query(pts * sp, k=1, workers=-1)
    return _lengths(pts - ref[idx], sp)  # from index differences, as scipy's EDT does


def _edt_at(dst: np.ndarray, pts: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """The same distances read from scipy's EDT of ``~dst`` (exact: ``dst`` holds the whole surface)."""
    return ndimage.distance_transform_edt(~dst, sampling=sp)[tuple(pts.T)]


def _directed(pos: np.ndarray, dst: np.ndarray, dst_crop: np.ndarray, shape: tuple[int, ...],
              reach: np.ndarray, sp: np.ndarray, method: str) -> np.ndarray:
    """Distance from each source surface voxel to the nearest ``dst`` surface voxel, in spacing units.

    ``pos``: the source voxels as flat indices (C order, like medpy's ``dt[border]``) into the crop padded
    by ``reach`` (the scan's reach, 0 without a scan), of padded shape ``shape``; ``dst``: the other
    surface, padded and flat; ``dst_crop``: it unpadded. Voxels on both surfaces are at distance 0."""
    dist = np.zeros(pos.size)
    todo = np.flatnonzero(~dst[pos])  # points not yet settled
    n_dst = int(np.count_nonzero(dst_crop))

    def kd_cost(n: int) -> float:
        return _COST_KD_POINT * n_dst + _COST_KD_QUERY * n

    edt_cost = _COST_EDT_VOXEL * dst_crop.size
    if method in ("auto", "scan") and todo.size:
        steps, lengths, _ = _offset_table(tuple(sp), _SCAN_OFFSETS)
        strides = np.cumprod((shape[1:] + (1,))[::-1])[::-1]
        todo = _scan(pos, todo, dst, steps @ strides, lengths, dist,
                     None if method == "scan" else lambda n: _SCAN_SHARE * min(kd_cost(n), edt_cost))
    if todo.size:
        pts = np.stack(np.unravel_index(pos[todo], shape), axis=1) - reach
        edt = method == "edt" or (method == "auto" and edt_cost < kd_cost(todo.size))
        dist[todo] = (_edt_at if edt else _kdtree_at)(dst_crop, pts, sp)
    return dist


def _distance_pairs(pb: np.ndarray, rb: np.ndarray, spacings: Sequence[np.ndarray],
                    method: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Both directed distance sets (pb→rb, rb→pb) between two non-empty surfaces of one crop, for each
    spacing; the padded surfaces and their voxel lists are made once for all spacings."""
    scan = method in ("auto", "scan")
    reach = (np.max([_offset_table(tuple(sp), _SCAN_OFFSETS)[2] for sp in spacings], axis=0) if scan
             else np.zeros(pb.ndim, np.int64))
    pp, rp = (np.pad(m, [(r, r) for r in reach]) for m in (pb, rb)) if reach.any() else (pb, rb)
    pos_p, pos_r, fp, fr = np.flatnonzero(pp), np.flatnonzero(rp), pp.ravel(), rp.ravel()
    return [(_directed(pos_p, fr, rb, pp.shape, reach, sp, method),
             _directed(pos_r, fp, pb, pp.shape, reach, sp, method)) for sp in spacings]


def _mask_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of a boolean mask (None when empty), from one projection per axis."""
    box = []
    for d in range(mask.ndim):
        nz = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != d)))
        if not nz.size:
            return None
        box.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(box)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: float | Sequence[float] | None = None,
                      connectivity: int = 1, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Both directed surface-distance sets (pred→ref, ref→pred); both masks must be non-empty.

    ``method`` (one of METHODS) only picks how nearest points are found; the values are the same."""
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {METHODS}")
    pred, ref = np.atleast_1d(np.asarray(pred, dtype=bool)), np.atleast_1d(np.asarray(ref, dtype=bool))
    if pred.shape != ref.shape:
        raise ValueError(f"shapes differ: pred {pred.shape} vs ref {ref.shape}")
    pbox, rbox = _mask_box(pred), _mask_box(ref)
    if pbox is None or rbox is None:
        raise ValueError("surface distances need two non-empty masks")
    box = _merge(pbox, rbox, pred.shape)
    sp = _spacing(spacing, pred.ndim)
    return _distance_pairs(_border(pred[box], connectivity), _border(ref[box], connectivity), [sp], method)[0]


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
            pb, rb = _border(p, connectivity), _border(r, connectivity)
            unit = np.ones_like(sp)
            pairs = _distance_pairs(pb, rb, [sp] if np.all(sp == 1) else [sp, unit], "auto")
            d1, d2 = pairs[0]
            std_dice = 2.0 * tp / (n_pred + n_ref)
            res["standard"] = {"dice": std_dice, "iou": tp / (n_pred + n_ref - tp),
                               "hd95": _hd95(d1, d2), "assd": _assd(d1, d2)}
            legacy_hd = res["standard"]["hd95"] if len(pairs) == 1 else _hd95(*pairs[1])  # in voxels
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

"""smaformer.metrics against medpy: equal values (1e-9 relative), both empty-mask conventions, spacing."""
from __future__ import annotations

import math

import numpy as np
import pytest
from medpy.metric import binary as mb
from scipy import ndimage

from smaformer import metrics as M


def _blob(rng: np.random.Generator, shape, thr: float) -> np.ndarray:
    return ndimage.gaussian_filter(rng.random(shape), 2) > thr


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


@pytest.mark.parametrize("shape", [(70, 60), (24, 40, 33)])
@pytest.mark.parametrize("spacing", [None, 1.7, "aniso"])
def test_random_masks_equal_medpy(shape, spacing):
    rng = np.random.default_rng(len(shape) * 10 + (0 if spacing is None else 1))
    sp = rng.uniform(0.3, 5.0, len(shape)) if spacing == "aniso" else spacing
    for _ in range(4):
        a, b = _blob(rng, shape, rng.uniform(0.48, 0.55)), _blob(rng, shape, rng.uniform(0.48, 0.55))
        assert M.dice(a, b) == mb.dc(a, b)
        assert M.iou(a, b) == mb.jc(a, b)
        assert _rel(M.hd95(a, b, sp), mb.hd95(a, b, sp)) <= 1e-9
        assert _rel(M.assd(a, b, sp), mb.assd(a, b, sp)) <= 1e-9


def test_masks_touching_the_array_border_equal_medpy():
    """Mask voxels on the array border are surface (erosion with border 0); cropping must keep that."""
    a = np.zeros((20, 30, 25), bool)
    a[:6, :9, 3:12] = True
    b = np.zeros_like(a)
    b[2:10, 1:5, :4] = True
    b[-3:, -2:, -5:] = True
    for sp in (None, (3.0, 0.7, 1.1)):
        assert _rel(M.hd95(a, b, sp), mb.hd95(a, b, sp)) <= 1e-9
        assert _rel(M.assd(b, a, sp), mb.assd(b, a, sp)) <= 1e-9


def test_real_acdc_masks_equal_medpy(data_dir):
    h5py = pytest.importorskip("h5py")
    vols = sorted((data_dir / "acdc" / "volumes").glob("*.h5"))[:2]
    if not vols:
        pytest.skip(f"no ACDC volumes in {data_dir / 'acdc' / 'volumes'}")
    with h5py.File(vols[0]) as f:
        ref = f["label"][()]
    with h5py.File(vols[1]) as f:
        other = f["label"][()]
    # A realistic imperfect prediction: the reference shifted in-plane and with one class dilated.
    pred = np.roll(ref, (0, 2, -1), axis=(0, 1, 2))
    pred[ndimage.binary_dilation(pred == 3, iterations=1) & (pred == 0)] = 3
    spacing = (8.0, 1.5, 1.5)
    labels = [1, 2, 3]
    ours = M.case_metrics(pred, ref, labels, spacing=spacing)
    for k in labels:
        p, r = pred == k, ref == k
        assert ours[k]["standard"]["dice"] == mb.dc(p, r)
        assert _rel(ours[k]["standard"]["hd95"], mb.hd95(p, r, spacing)) <= 1e-9
        assert _rel(ours[k]["standard"]["assd"], mb.assd(p, r, spacing)) <= 1e-9
        assert _rel(ours[k]["legacy"]["hd95"], mb.hd95(p, r)) <= 1e-9
        assert ours[k]["tp"] == np.count_nonzero(p & r) and ours[k]["n_ref"] == np.count_nonzero(r)
    # 2D real slices of different patients
    z = min(ref.shape[0], other.shape[0]) // 2
    if ref.shape[1:] == other.shape[1:]:
        p, r = other[z] == 3, ref[z] == 3
        if p.any() and r.any():
            assert _rel(M.hd95(p, r, (1.5, 1.2)), mb.hd95(p, r, (1.5, 1.2))) <= 1e-9


def _legacy_restated(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """TransUNet utils.calculate_metric_percase, restated."""
    if pred.sum() > 0 and gt.sum() > 0:
        return mb.dc(pred, gt), mb.hd95(pred, gt)
    if pred.sum() > 0 and gt.sum() == 0:
        return 1, 0
    return 0, 0


@pytest.mark.parametrize("pred_empty", [False, True])
@pytest.mark.parametrize("ref_empty", [False, True])
def test_empty_mask_conventions(pred_empty, ref_empty):
    shape, spacing = (6, 20, 30), (4.0, 1.0, 0.5)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    if not ref_empty:
        ref[1:4, 3:9, 5:15] = 1
    if not pred_empty:
        pred[2:5, 4:10, 6:14] = 1
    res = M.case_metrics(pred, ref, [1], spacing=spacing)[1]
    assert res["empty"] == {(False, False): "none", (True, False): "pred", (False, True): "ref",
                            (True, True): "both"}[(pred_empty, ref_empty)]
    assert (res["legacy"]["dice"], res["legacy"]["hd95"]) == pytest.approx(_legacy_restated(pred == 1, ref == 1))
    std = res["standard"]
    if pred_empty and ref_empty:
        assert all(math.isnan(v) for v in std.values())
        assert math.isnan(M.dice(pred, ref)) and math.isnan(M.hd95(pred, ref, spacing))
    elif pred_empty or ref_empty:
        diag = math.sqrt((6 * 4.0) ** 2 + 20.0 ** 2 + 15.0 ** 2)
        assert std["dice"] == 0.0 and std["iou"] == 0.0
        assert std["hd95"] == pytest.approx(diag) and std["assd"] == pytest.approx(diag)
        assert M.hd95(pred, ref, spacing) == pytest.approx(diag)
    else:
        assert std["dice"] == mb.dc(pred, ref)
        assert _rel(std["hd95"], mb.hd95(pred, ref, spacing)) <= 1e-9


def test_hd95_scales_with_spacing():
    rng = np.random.default_rng(3)
    a, b = _blob(rng, (20, 40, 40), 0.5), _blob(rng, (20, 40, 40), 0.52)
    base = M.hd95(a, b)
    assert M.hd95(a, b, 2.5) == pytest.approx(2.5 * base, rel=1e-12)
    # Two boxes offset only along axis 0: HD95 follows that axis's spacing alone.
    a = np.zeros((30, 20, 20), bool)
    a[5:10, 5:15, 5:15] = True
    b = np.roll(a, 3, axis=0)
    assert M.hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(3.0)
    assert M.hd95(a, b, (2.0, 7.0, 9.0)) == pytest.approx(6.0)


def test_slice_dice_counts_empty_slices_as_one():
    ref = np.zeros((10, 8, 8), np.uint8)
    ref[2:4, 2:6, 2:6] = 1
    pred = ref.copy()
    pred[3] = 0  # one slice missed entirely
    res = M.case_metrics(pred, ref, [1])[1]
    # 9 slices score ~1 (8 empty/empty + 1 perfect), one scores ~0
    assert res["slice"]["dice"] == pytest.approx(0.9, abs=1e-6)
    assert res["standard"]["dice"] == pytest.approx(2 * 16 / (16 + 32))
    assert "empty" in M.SLICE_DICE_RULE


def test_case_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        M.case_metrics(np.zeros((3, 4, 4)), np.zeros((3, 4, 5)), [1])
    with pytest.raises(ValueError, match="spacing"):
        M.hd95(np.ones((3, 3), bool), np.ones((3, 3), bool), spacing=(1.0, 1.0, 1.0))


def _ragged(rng: np.random.Generator, shape, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Two label maps of 4 classes from smooth random fields filling the volume (ragged, dense surfaces)."""
    fields = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) for _ in range(4)])
    wobble = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) for _ in range(4)])
    return np.argmax(fields + noise * wobble, 0), np.argmax(fields, 0)


def _compact(shape) -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoid organ, a shifted and dented copy of it, and a far false-positive blob in the copy."""
    grid = np.indices(shape, dtype=np.float64)
    centre = np.array(shape, dtype=np.float64)[:, None, None, None] / 2
    radii = np.array(shape, dtype=np.float64)[:, None, None, None] / 4
    ref = (((grid - centre) / radii) ** 2).sum(0) < 1
    pred = np.roll(ref, (1, 2, -1), axis=(0, 1, 2))
    pred[tuple(int(n) // 2 for n in shape[:1]) + (slice(None),) * 2] = False
    pred[1:3, -4:-1, -5:-1] = True
    return pred, ref


@pytest.mark.parametrize("family", ["ragged", "compact"])
@pytest.mark.parametrize("spacing", [None, (2.5, 0.78, 0.78), (0.9, 3.1, 1.7)])
def test_every_method_equals_medpy(family, spacing):
    """scan, kdtree, edt and auto give medpy's hd95/assd; their distance sets agree to rounding."""
    rng = np.random.default_rng(7)
    shape = (14, 40, 36)
    pred, ref = _ragged(rng, shape, 0.3) if family == "ragged" else _compact(shape)
    for k in ([0, 1, 2, 3] if family == "ragged" else [1]):
        p, r = pred == k, ref == k
        want_hd, want_assd = mb.hd95(p, r, spacing), mb.assd(p, r, spacing)
        base = None
        for method in M.METHODS:
            d1, d2 = M.surface_distances(p, r, spacing, method=method)
            assert _rel(float(np.percentile(np.hstack((d1, d2)), 95)), want_hd) <= 1e-9, (k, method)
            assert _rel(float(np.concatenate((d1, d2)).mean()), want_assd) <= 1e-9, (k, method)
            if base is None:
                base = (d1, d2)
            np.testing.assert_allclose(d1, base[0], rtol=1e-12, atol=0)
            np.testing.assert_allclose(d2, base[1], rtol=1e-12, atol=0)
        assert _rel(M.hd95(p, r, spacing), want_hd) <= 1e-9
        assert _rel(M.assd(p, r, spacing), want_assd) <= 1e-9


@pytest.mark.parametrize("fallback", ["kdtree", "edt"])
def test_auto_hands_points_to_either_fallback(monkeypatch, fallback):
    """A tiny offset table and a costly scan leave most points to the fallback the cost model picks."""
    monkeypatch.setattr(M, "_SCAN_OFFSETS", 7)
    monkeypatch.setattr(M, "_COST_PROBE", 1.0)
    monkeypatch.setattr(M, "_COST_EDT_VOXEL", 0.0 if fallback == "edt" else 1.0)
    used = []
    for name in ("_edt_at", "_kdtree_at"):
        real = getattr(M, name)
        monkeypatch.setattr(M, name, lambda *a, _real=real, _name=name: used.append(_name) or _real(*a))
    pred, ref = _ragged(np.random.default_rng(3), (12, 30, 34), 0.4)
    spacing = (3.0, 0.7, 1.1)
    res = M.case_metrics(pred, ref, [0, 1, 2, 3], spacing=spacing)
    assert set(used) == {f"_{fallback}_at"}
    for k in range(4):
        p, r = pred == k, ref == k
        assert _rel(res[k]["standard"]["hd95"], mb.hd95(p, r, spacing)) <= 1e-9
        assert _rel(res[k]["standard"]["assd"], mb.assd(p, r, spacing)) <= 1e-9
        assert _rel(res[k]["legacy"]["hd95"], mb.hd95(p, r)) <= 1e-9


@pytest.mark.parametrize("ndim", [2, 3])
def test_border_is_medpy_surface(ndim):
    rng = np.random.default_rng(ndim)
    mask = _blob(rng, (30, 26, 21)[:ndim], 0.5)
    mask[(0,) * ndim] = True  # touches the array border
    for connectivity in range(1, ndim + 1):
        footprint = ndimage.generate_binary_structure(ndim, connectivity)
        want = mask ^ ndimage.binary_erosion(mask, structure=footprint, iterations=1)
        assert np.array_equal(M._border(mask, connectivity), want)


def test_ragged_2d_and_connectivity_2_equal_medpy():
    pred, ref = _ragged(np.random.default_rng(5), (90, 80), 0.3)
    for k in range(4):
        p, r = pred == k, ref == k
        got = M._hd95(*M.surface_distances(p, r, (0.6, 1.4), connectivity=2))
        assert _rel(got, mb.hd95(p, r, (0.6, 1.4), connectivity=2)) <= 1e-9


def test_surface_distances_rejects_unknown_method():
    with pytest.raises(ValueError, match="method"):
        M.surface_distances(np.ones((3, 3), bool), np.ones((3, 3), bool), method="fast")

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
        pytest.skip("no ACDC volumes")
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

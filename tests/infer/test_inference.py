"""Volume inference protocol (logits resize vs legacy label zoom) and 3D post-processing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from smaformer.checkpoint import default_preprocessing
from smaformer.data import Sample, SliceDataset
from smaformer.data.preprocess import fix_volume_statistics, normalize_intensity
from smaformer.data.sample import SampleList
from smaformer.infer.postprocess import postprocess_labels
from smaformer.infer.volume import as_stack, infer_volume


def _threshold_model(x: torch.Tensor) -> torch.Tensor:
    """Two-class logits: background 0, foreground proportional to (x - 0.5) of the first channel."""
    return torch.cat([torch.zeros_like(x[:, :1]), 10 * (x[:, :1] - 0.5)], dim=1)


def _circle(size: int, radius: float, centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Distance from the centre, and an image that is 0.5 exactly on the circle, linear across it."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    r = np.hypot(yy - centre[0], xx - centre[1])
    return r, np.clip(0.5 + (radius - r) / 12.0, 0, 1).astype(np.float32)


def _boundary_error(mask: np.ndarray, r: np.ndarray, radius: float) -> float:
    """Mean |r - R| over the mask's boundary pixels: how far the predicted edge is from the true circle."""
    edge = mask ^ ndimage.binary_erosion(mask)
    return float(np.abs(r[edge] - radius).mean())


def test_logits_resize_gives_smoother_boundary_than_legacy():
    radius, size = 71.3, 256
    r, img = _circle(size, radius, (127.4, 129.1))
    pp = default_preprocessing((48, 48), 1, "repeat", {"mode": "none"})
    smooth = infer_volume(_threshold_model, img[None], pp)[0].astype(bool)
    legacy = infer_volume(_threshold_model, img[None], pp, legacy_resize=True)[0].astype(bool)
    err_smooth, err_legacy = _boundary_error(smooth, r, radius), _boundary_error(legacy, r, radius)
    # Upsampled logits put the edge within about a pixel; zoomed labels leave 5-pixel staircase steps.
    assert err_smooth < 1.0
    assert err_legacy > 2 * err_smooth


def test_legacy_path_restates_official_zoom():
    rng = np.random.default_rng(0)
    vol = ndimage.gaussian_filter(rng.random((3, 50, 70)), (0, 3, 3)).astype(np.float32)
    pp = default_preprocessing((32, 32), 1, "repeat", {"mode": "minmax"})
    got = infer_volume(_threshold_model, vol, pp, legacy_resize=True, batch_size=2)
    norm = (vol - vol.min()) / (vol.max() - vol.min())
    for z in range(3):
        small = ndimage.zoom(norm[z], (32 / 50, 32 / 70), order=3)
        lab = _threshold_model(torch.from_numpy(small)[None, None].float()).argmax(1)[0].numpy()
        assert np.array_equal(got[z], ndimage.zoom(lab, (50 / 32, 70 / 32), order=0))


def test_infer_volume_outputs_batches_and_modes():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 1))
    net.train()
    vol = np.random.default_rng(1).normal(50, 20, (5, 40, 36)).astype(np.float32)
    pp = default_preprocessing((32, 32), 3, "pseudo_hdr", {"mode": "window", "lo": 0, "hi": 100})
    labels, probs = infer_volume(net, vol, pp, batch_size=2, return_probabilities=True)
    assert labels.shape == (5, 40, 36) and labels.dtype == np.uint8
    assert probs.shape == (4, 5, 40, 36) and probs.dtype == np.float16
    assert np.allclose(probs.astype(np.float32).sum(0), 1, atol=5e-3)
    assert net.training, "the caller's train mode must be restored"
    assert np.array_equal(labels, infer_volume(net, vol, pp, batch_size=16))
    assert infer_volume(net, vol, pp, precision="bf16").shape == labels.shape
    # (D,C,H,W) input with per-slice intensity
    pp4 = default_preprocessing((32, 32), 3, "none", {"mode": "minmax", "per_slice": True})
    assert infer_volume(net, np.repeat(vol[:, None], 3, axis=1), pp4).shape == (5, 40, 36)
    with pytest.raises(ValueError, match="precision"):
        infer_volume(net, vol, pp, precision="fp8")
    with pytest.raises(ValueError, match=r"\(D,H,W\)"):
        infer_volume(net, vol[0, 0], pp)


def _normalize(volume: np.ndarray, spec: dict) -> np.ndarray:
    """What inference feeds the model: the whole (D,[C,]H,W) stack normalised at once."""
    return normalize_intensity(as_stack(volume), spec)


@pytest.mark.parametrize("spec", [{"mode": "zscore"}, {"mode": "minmax"}, {"mode": "zscore", "per_slice": True},
                                  {"mode": "window", "lo": -125, "hi": 275}])
def test_batchwise_normalisation_equals_whole_volume(spec):
    """infer_volume normalises one batch at a time (memory bound); with whole-volume statistics fixed first,
    every batch gets exactly the values the whole stack would."""
    vol = np.random.default_rng(5).integers(-1000, 1500, (11, 8, 6)).astype(np.int16)
    fixed = fix_volume_statistics(as_stack(vol), spec)
    batches = np.concatenate([normalize_intensity(as_stack(vol)[s:s + 4], fixed) for s in range(0, 11, 4)])
    assert np.array_equal(batches, _normalize(vol, spec))
    seen = []
    infer_volume(lambda x: seen.append(x[:, :1].clone()) or torch.cat([x[:, :1], -x[:, :1]], 1), vol,
                 default_preprocessing((8, 6), 1, "repeat", spec), batch_size=4)
    assert np.array_equal(torch.cat(seen).numpy(), _normalize(vol, spec))


@pytest.mark.parametrize("spec", [{"mode": "zscore", "per_slice": True}, {"mode": "minmax", "per_slice": True},
                                  {"mode": "zscore"}, {"mode": "window", "lo": 0, "hi": 100}])
def test_training_and_inference_normalise_alike(spec):
    """The slices training sees equal the slices inference feeds the model, volumes and RGB images alike."""
    rng = np.random.default_rng(3)
    vol = rng.normal(50, 20, (4, 12, 10)).astype(np.float32) * np.arange(1, 5, dtype=np.float32)[:, None, None]
    rgb = rng.normal(50, 20, (3, 12, 10)).astype(np.float32) * np.array([1, 2, 3], np.float32)[:, None, None]
    lab3, lab2 = np.zeros((4, 12, 10), np.int64), np.zeros((12, 10), np.int64)
    train_vol = SliceDataset([Sample(vol, lab3, {"case": "v"})], intensity=spec, in_chans=1)
    for k in range(4):
        assert np.allclose(train_vol[k]["image"][0].numpy(), _normalize(vol, spec)[k, 0], atol=1e-6)
    train_rgb = SliceDataset([Sample(rgb, lab2, {"case": "c"})], intensity=spec, in_chans=3, channel_mode="none")
    assert np.allclose(train_rgb[0]["image"].numpy(), _normalize(rgb[None], spec)[0], atol=1e-6)
    if spec.get("per_slice"):  # each slice on its own statistics, over all its channels
        assert np.allclose(_normalize(vol, spec)[3, 0], _normalize(vol[3:], spec)[0, 0], atol=1e-6)


@pytest.mark.parametrize("spec", [{"mode": "zscore"}, {"mode": "minmax"}, {"mode": "zscore", "per_slice": True},
                                  {"mode": "window", "lo": 0, "hi": 100}])
def test_slice_stored_layouts_normalise_as_volume_inference(spec):
    """Slice-stored layouts (ACDC h5, Synapse npz: one 2D file per slice) train on each slice normalised with
    its volume's statistics, which is what inference of that volume (or the validation stack) feeds."""
    rng = np.random.default_rng(4)
    vols = {v: rng.normal(50, 20, (4, 12, 10)).astype(np.float32) * np.arange(1, 5, dtype=np.float32)[:, None, None]
            + 30 * i for i, v in enumerate(("patient001_frame01", "case0005"))}
    sep = {"patient001_frame01": "_slice_", "case0005": "_slice"}
    slices = [Sample(vol[k][None], np.zeros((12, 10), np.int64), {"case": f"{v}{sep[v]}{k:d}"})
              for v, vol in vols.items() for k in range(4)]
    for source in (slices, SampleList(list(reversed(slices)))):     # a list of samples, or a reader
        ds = SliceDataset(source, intensity=spec, in_chans=1)
        got = {(it["case"]): it["image"][0].numpy() for it in (ds[i] for i in range(len(ds)))}
        for v, vol in vols.items():
            for k in range(4):
                assert np.allclose(got[f"{v}{sep[v]}{k}"], _normalize(vol, spec)[k, 0], atol=1e-5), (v, k)


def test_postprocess_lcc_is_3d_and_min_size_drops_small_parts():
    lab = np.zeros((6, 30, 30), np.uint8)
    lab[0:3, 5:10, 5:10] = 1          # big part of class 1 ...
    lab[3:6, 9:12, 9:12] = 1          # ... connected to it only through the slice axis
    lab[1, 25:27, 25:27] = 1          # a small separate blob of class 1
    lab[2:5, 15:22, 0:4] = 2          # class 2, one component
    lab[5, 28, 0] = 2                 # tiny class-2 speck
    out = postprocess_labels(lab, "lcc")
    assert (out[lab == 1] == 1).sum() == (lab == 1).sum() - 4   # the separate blob goes, the 3D part stays
    assert out[1, 25, 25] == 0 and out[4, 10, 10] == 1
    assert out[5, 28, 0] == 0 and (out == 2).sum() == (lab == 2).sum() - 1
    out = postprocess_labels(lab, "min_size", min_size=5)
    assert out[1, 25, 25] == 0 and out[5, 28, 0] == 0 and out[4, 10, 10] == 1
    assert np.array_equal(postprocess_labels(lab, "lcc", classes=[2]) == 1, lab == 1)
    with pytest.raises(ValueError):
        postprocess_labels(lab, "min_size", min_size=0)

"""Synthetic phantoms, SliceDataset, RandomGenerator and worker seeding (no shared data needed)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from smaformer.data import (
    RandomGenerator,
    Sample,
    SliceDataset,
    SyntheticReader,
    make_phantom,
    make_phantom_2d,
    seed_worker,
    window_spec,
)
from smaformer.data.synthetic import INTENSITY


def test_phantom_is_deterministic_and_well_formed():
    a, b, c = make_phantom(3), make_phantom(3), make_phantom(4)
    assert isinstance(a, Sample) and a.is_volume
    assert a.image.shape == a.label.shape == (24, 96, 96)
    assert a.image.dtype == np.float32 and a.label.dtype == np.int64
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.label, c.label)
    assert a.meta["case"] == "phantom0003" and len(a.meta["classes"]) == 5 and len(a.meta["spacing"]) == 3


@pytest.mark.parametrize("num_classes", [2, 5, 9])
def test_phantom_organs_are_present_and_distinct(num_classes):
    s = make_phantom(7, (20, 64, 80), num_classes)
    counts = np.bincount(s.label.ravel(), minlength=num_classes)
    assert len(counts) == num_classes and (counts[1:] > 50).all()
    x = np.clip(s.image, INTENSITY["lo"], INTENSITY["hi"])
    means = sorted(float(x[s.label == k].mean()) for k in range(1, num_classes))
    assert min(np.diff(means), default=100) > 15  # organs differ by more than the noise level (15 HU)
    # deformation: organs are not perfect axis-aligned ellipsoids repeated on every slice
    assert len({s.label[d].sum() for d in range(20)}) > 5


def test_phantom_2d_slice():
    s = make_phantom_2d(1, (48, 40))
    assert s.image.shape == (1, 48, 40) and s.label.shape == (48, 40) and not s.is_volume
    with pytest.raises(ValueError, match="num_classes"):
        make_phantom(0, num_classes=1)


def test_slice_dataset_from_reader_and_samples():
    reader = SyntheticReader(2, shape=(6, 40, 48), num_classes=4, seed=10)
    ds = SliceDataset(reader, preprocessing={"img_size": [32, 32], "in_chans": 3, "channel_mode": "pseudo_hdr",
                                             "intensity": INTENSITY})
    assert len(ds) == 12
    item = ds[7]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["label"].shape == (32, 32) and item["label"].dtype == torch.int64
    assert item["case"] == "phantom0011" and item["slice"] == 1
    same = SliceDataset([reader.load_case(c) for c in reader.cases()], img_size=32, intensity=INTENSITY,
                        channel_mode="pseudo_hdr", in_chans=3)
    assert torch.equal(same[7]["image"], item["image"])
    kept = SliceDataset(reader, skip_empty=True)
    assert 0 < len(kept) <= 12 and all(kept[i]["label"].any() for i in range(len(kept)))


def test_random_generator_keeps_image_and_label_aligned():
    img = np.zeros((1, 40, 50), np.float32)
    img[0, 5:15, 10:30] = 1.0
    lab = (img[0] > 0.5).astype(np.int64)
    aug = RandomGenerator((32, 32))
    random.seed(0)
    np.random.seed(0)
    for _ in range(20):
        x, y = aug(img, lab)
        assert x.shape == (1, 32, 32) and y.shape == (32, 32)
        assert set(np.unique(y)) <= {0, 1}
        assert (x[0][y == 1] > 0.5).mean() > 0.9  # the label moved with the image


@pytest.mark.parametrize("hw, out", [((256, 216), (224, 224)), ((512, 512), (224, 224)), ((40, 70), (64, 48))])
def test_resize_matches_scipy_zoom(hw, out):
    from scipy import ndimage

    from smaformer.data.transforms import resize_pair

    rng = np.random.default_rng(0)
    img = rng.uniform(-100, 300, (2,) + hw).astype(np.float32)
    lab = rng.integers(0, 9, hw)
    x, y = resize_pair(img, lab, out)
    factors = (out[0] / hw[0], out[1] / hw[1])
    ref = np.stack([ndimage.zoom(c, factors, order=3) for c in img])
    assert x.shape == (2,) + out and x.flags.c_contiguous and np.abs(x - ref).max() < 1e-3
    ref_lab = ndimage.zoom(lab, factors, order=0)
    assert np.array_equal(y[:-1, :-1], ref_lab[:-1, :-1])  # scipy may put 0 in the last row/column
    assert set(np.unique(y)) <= set(np.unique(lab))


def _official_reference(image, label, size):
    """The official Swin-Unet RandomGenerator, restated: the same draws in the same order."""
    from scipy import ndimage

    if random.random() > 0.5:
        k = np.random.randint(0, 4)
        image, label = np.rot90(image, k), np.rot90(label, k)
        axis = np.random.randint(0, 2)
        image, label = np.flip(image, axis=axis).copy(), np.flip(label, axis=axis).copy()
    elif random.random() > 0.5:
        angle = np.random.randint(-20, 20)
        image = ndimage.rotate(image, angle, order=0, reshape=False)
        label = ndimage.rotate(label, angle, order=0, reshape=False)
    x, y = image.shape
    return (ndimage.zoom(image, (size / x, size / y), order=3), ndimage.zoom(label, (size / x, size / y), order=0))


def test_random_generator_reproduces_the_official_stream():
    rng = np.random.default_rng(5)
    img = rng.random((40, 30)).astype(np.float32)
    lab = rng.integers(0, 4, (40, 30))
    aug = RandomGenerator(32)
    for seed in range(12):
        random.seed(seed)
        np.random.seed(seed)
        ref_img, ref_lab = _official_reference(img, lab, 32)
        random.seed(seed)
        np.random.seed(seed)
        x, y = aug(img[None], lab)
        assert np.abs(x[0] - ref_img).max() < 1e-5 and np.array_equal(y[:-1, :-1], ref_lab[:-1, :-1])


def test_intensity_augmentations():
    img = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(1, 32, 32)
    lab = np.zeros((32, 32), np.int64)
    aug = RandomGenerator(32, p_rot90=0, p_rotate=0, noise_std=0.1, gamma=(0.5, 2.0))
    random.seed(1)
    np.random.seed(1)
    outs = [aug(img, lab)[0] for _ in range(8)]
    assert sum(not np.allclose(o, img, atol=1e-5) for o in outs) >= 4  # about 3 in 4 change
    assert all(o.dtype == np.float32 and o.shape == (1, 32, 32) for o in outs)


def test_window_presets():
    assert window_spec("synapse") == {"mode": "window", "lo": -125.0, "hi": 275.0}
    assert window_spec("lung")["lo"] == -1350.0
    with pytest.raises(ValueError, match="abdomen"):
        window_spec("brain")


class _Draws(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.tensor([np.random.rand(), random.random()])


def test_seed_worker_gives_each_worker_its_own_reproducible_stream():
    def draw():
        torch.manual_seed(0)
        dl = DataLoader(_Draws(), batch_size=1, num_workers=2, worker_init_fn=seed_worker,
                        multiprocessing_context="fork")
        return torch.cat(list(dl))  # items 0, 2 from worker 0; 1, 3 from worker 1

    draws = draw()
    assert (draws[0] != draws[1]).all()  # workers do not share NumPy or Python streams
    assert torch.equal(draws, draw())


def test_crop_patches_keep_native_resolution_and_imply_sliding_inference():
    import numpy as np

    from smaformer.config import load_config
    from smaformer.data import Sample, SliceDataset
    from smaformer.train.data import preprocessing_of

    rng = np.random.default_rng(0)
    img = rng.random((2, 40, 30)).astype(np.float32)
    lab = (img > 0.5).astype(np.int64)
    ds = SliceDataset([Sample(img, lab, {"case": "a", "is_volume": True})], img_size=(16, 48), crop=True,
                      in_chans=1, channel_mode="repeat")
    item = ds[0]
    assert tuple(item["image"].shape) == (1, 16, 48) and tuple(item["label"].shape) == (16, 48)
    x = item["image"][0].numpy()
    pad = np.r_[0:9, 39:48]                       # 30 < 48: 9 columns each side, centred as MONAI pads
    assert np.all(x[:, pad] == 0) and np.all(item["label"].numpy()[:, pad] == 0)
    rows = [y for y in range(40 - 16 + 1) if np.array_equal(img[0, y:y + 16], x[:, 9:39])]
    assert rows, "the crop is a window of the slice at its own pixels"
    assert preprocessing_of(load_config(None, ["data.patches=crop"]))["inference"] == "sliding"
    assert preprocessing_of(load_config(None, []))["inference"] == "resize"

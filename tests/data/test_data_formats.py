"""Every layout reader on real shared data or realistic files written here; auto-detection; skipped cases."""
from __future__ import annotations

import json

import h5py
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from smaformer.data import SliceDataset, detect_layout, open_dataset
from smaformer.errors import InputError


def _nii(path, data, zooms=(0.8, 0.8, 2.0), dtype=np.int16):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data).astype(dtype), np.diag(list(zooms) + [1.0])), str(path))
    return path


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8)).save(path)
    return path


def _vol(rng, shape=(16, 12, 5), classes=3):
    img = rng.integers(-200, 300, shape)
    lab = rng.integers(0, classes, shape)
    return img, lab


def test_acdc_h5_real(data_dir):
    root = data_dir / "acdc"
    assert detect_layout(root) == "acdc_h5"
    train = open_dataset(root)
    assert len(train.cases()) == 1312 and train.classes == ["background", "RV", "Myo", "LV"]
    s = train.load_case("patient003_frame01_slice_1")
    assert s.image.shape == (1, 256, 256) and s.label.shape == (256, 256) and not s.is_volume
    assert 0.0 <= s.image.min() and s.image.max() <= 1.0 and s.label.max() <= 3
    val = open_dataset(root, split="val")
    assert len(val.cases()) == 20
    v = val.load_case(val.cases()[0])
    assert v.is_volume and v.image.ndim == 3 and v.image.shape == v.label.shape and v.meta["spacing"] is None
    assert val.num_slices(val.cases()[0]) == v.image.shape[0]
    train_patients = {c.split("_")[0] for c in train.cases()}
    assert not train_patients & {c.split("_")[0] for c in val.cases()}
    ds = SliceDataset(val, img_size=224, augment=True, channel_mode="pseudo_hdr", in_chans=3)
    item = ds[3]
    assert item["image"].shape == (3, 224, 224) and item["label"].shape == (224, 224)


def test_drive_real(data_dir):
    root = data_dir / "drive"
    assert detect_layout(root) == "drive"
    r = open_dataset(root, split="test")
    assert len(r.cases()) == 20
    s = r.load_case(r.cases()[0])
    assert s.image.shape == (3, 584, 565) and s.image.max() == 255.0 and set(np.unique(s.label)) == {0, 1}
    assert s.meta["fov"].shape == (584, 565) and 0.5 < s.meta["fov"].mean() < 0.8


def test_acdc_raw_with_spacing_and_missing_gt(tmp_path):
    rng = np.random.default_rng(0)
    for pid in (1, 2):
        d = tmp_path / "training" / f"patient{pid:03d}"
        for frame in (1, 12):
            img, lab = _vol(rng, (20, 18, 6), 4)
            _nii(d / f"patient{pid:03d}_frame{frame:02d}.nii.gz", img, (1.5, 1.5, 10.0))
            if (pid, frame) != (2, 12):
                _nii(d / f"patient{pid:03d}_frame{frame:02d}_gt.nii.gz", lab, (1.5, 1.5, 10.0), np.uint8)
        _nii(d / f"patient{pid:03d}_4d.nii.gz", np.zeros((20, 18, 6, 3)))
        (d / "Info.cfg").write_text("ED: 1\nES: 12\nGroup: DCM\nNbFrame: 30\n", encoding="utf-8")
    assert detect_layout(tmp_path) == "acdc_raw"
    r = open_dataset(tmp_path)
    assert r.cases() == ["patient001_frame01", "patient001_frame12", "patient002_frame01"]
    assert len(r.skipped) == 1 and "patient002_frame12.nii.gz: missing pair" in r.skipped[0][1]
    s = r.load_case("patient001_frame12")
    assert s.image.shape == (6, 18, 20) and s.meta["spacing"] == (10.0, 1.5, 1.5) and s.meta["patient"] == "patient001"
    assert s.meta["phase"] == "ES" and s.meta["group"] == "DCM"
    assert r.load_case("patient002_frame01").meta["phase"] == "ED"


def test_lits_raw_and_png(tmp_path):
    rng = np.random.default_rng(1)
    for n in (0, 10, 2):
        img, lab = _vol(rng)
        _nii(tmp_path / "raw" / "Training Batch 1" / f"volume-{n}.nii", img)
        _nii(tmp_path / "raw" / "Training Batch 1" / f"segmentation-{n}.nii", lab, dtype=np.uint8)
    assert detect_layout(tmp_path / "raw") == "lits_raw"
    r = open_dataset(tmp_path / "raw")
    assert r.cases() == ["volume-0", "volume-2", "volume-10"] and r.classes == ["background", "liver", "tumor"]
    assert r.load_case("volume-2").image.shape == (5, 12, 16) and r.num_slices("volume-2") == 5

    png = tmp_path / "png"
    mask = np.zeros((30, 40), np.uint8)
    mask[5:20, 5:30], mask[8:12, 8:12] = 150, 255
    for name in ("12_40", "12_41"):
        _png(png / "trainImage_lits2017_png" / f"{name}.png", rng.integers(0, 255, (30, 40)))
        _png(png / "trainMask_lits2017_png" / f"{name}.png", mask)
    _png(png / "trainImage_lits2017_png" / "13_0.png", np.zeros((30, 40)))
    assert detect_layout(png) == "lits_png"
    r = open_dataset(png)
    assert r.cases() == ["12_40", "12_41"] and "13_0.png: missing pair" in r.skipped[0][1]
    s = r.load_case("12_40")
    assert np.bincount(s.label.ravel()).tolist() == [1200 - 375, 375 - 16, 16] and 1.0 < s.image.max() <= 255.0
    _png(png / "trainMask_lits2017_png" / "12_41.png", mask // 2 + 1)
    with pytest.raises(InputError, match="12_41.png: mask value 1 is not one of 0/150/255"):
        r.load_case("12_41")


def test_medt_and_image_folder(tmp_path):
    rng = np.random.default_rng(2)
    for split in ("train", "val"):
        for i in range(3):
            _png(tmp_path / "medt" / split / "img" / f"{split}_{i}.png", rng.integers(0, 255, (32, 48, 3)))
            _png(tmp_path / "medt" / split / "labelcol" / f"{split}_{i}.png", (rng.random((32, 48)) > 0.5) * 255)
    assert detect_layout(tmp_path / "medt") == "medt"
    r = open_dataset(tmp_path / "medt", split="val")
    s = r.load_case("val_1")
    assert r.cases() == ["val_0", "val_1", "val_2"] and s.image.shape == (3, 32, 48) and s.label.max() == 1
    assert detect_layout(tmp_path / "medt" / "train") == "medt"

    gen = tmp_path / "gen"
    _png(gen / "images" / "a.png", rng.integers(0, 255, (20, 20)))
    _png(gen / "masks" / "a_mask.png", np.eye(20) * 2)
    _nii(gen / "images" / "vol.nii.gz", rng.integers(0, 100, (8, 8, 3)))
    _nii(gen / "masks" / "vol.nii.gz", np.ones((8, 8, 3)), dtype=np.uint8)
    assert detect_layout(gen) == "image_folder"
    r = open_dataset(gen)
    assert r.cases() == ["a", "vol"]
    assert r.load_case("a").label.max() == 2 and r.load_case("vol").is_volume
    ds = SliceDataset(r, img_size=16)  # a 2D image and a 3-slice volume: 4 slices, any input size
    assert len(ds) == 4 and all(ds[i]["image"].shape == (1, 16, 16) for i in range(4))


def test_nnunet_raw(tmp_path):
    rng = np.random.default_rng(3)
    info = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "spleen": 2},
            "numTraining": 3, "file_ending": ".nii.gz"}
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps(info), encoding="utf-8")
    for case in ("abd_001", "abd_002", "abd_003"):
        img, lab = _vol(rng)
        _nii(tmp_path / "imagesTr" / f"{case}_0000.nii.gz", img)
        if case != "abd_003":
            _nii(tmp_path / "labelsTr" / f"{case}.nii.gz", lab, dtype=np.uint8)
    _nii(tmp_path / "imagesTs" / "abd_100_0000.nii.gz", np.zeros((4, 4, 2)))
    assert detect_layout(tmp_path) == "nnunet"
    r = open_dataset(tmp_path)
    assert r.classes == ["background", "liver", "spleen"] and r.cases() == ["abd_001", "abd_002"]
    assert "abd_003_0000.nii.gz: missing pair" in r.skipped[0][1]
    assert r.load_case("abd_002").label.max() == 2
    test = open_dataset(tmp_path, split="test")
    assert test.cases() == ["abd_100"] and test.load_case("abd_100").label is None
    info["labels"]["liver"] = 5
    (tmp_path / "dataset.json").write_text(json.dumps(info), encoding="utf-8")
    with pytest.raises(InputError, match="without gaps"):
        open_dataset(tmp_path)


def test_nnunet_2d_png_channels(tmp_path):
    info = {"channel_names": {"0": "R", "1": "G"}, "labels": {"background": 0, "cell": 1}, "file_ending": ".png"}
    (tmp_path / "dataset.json").write_text(json.dumps(info), encoding="utf-8")
    for c in (0, 1):
        _png(tmp_path / "imagesTr" / f"img_001_{c:04d}.png", np.full((10, 14), 50 * (c + 1)))
    _png(tmp_path / "labelsTr" / "img_001.png", np.eye(10, 14))
    r = open_dataset(tmp_path, channel=None)
    s = r.load_case("img_001")
    assert s.image.shape == (2, 10, 14) and s.image[:, 0, 0].tolist() == [50.0, 100.0] and s.label.sum() == 10
    assert open_dataset(tmp_path).load_case("img_001").image.shape == (1, 10, 14)  # channel 0 only


def test_synapse_layout_files(tmp_path):
    rng = np.random.default_rng(4)
    (tmp_path / "train_npz").mkdir()
    (tmp_path / "test_vol_h5").mkdir()
    for k in range(2):
        np.savez(tmp_path / "train_npz" / f"case0005_slice{k:03d}.npz", image=rng.random((64, 64), np.float32),
                 label=rng.integers(0, 9, (64, 64)).astype(np.float32))
    with h5py.File(tmp_path / "test_vol_h5" / "case0001.npy.h5", "w") as f:
        f["image"] = rng.random((3, 64, 64), np.float32)
        f["label"] = rng.integers(0, 9, (3, 64, 64)).astype(np.float32)
    assert detect_layout(tmp_path) == "synapse"
    r = open_dataset(tmp_path)
    assert r.cases() == ["case0005_slice000", "case0005_slice001"] and len(r.classes) == 9
    s = r.load_case("case0005_slice001")
    assert s.image.shape == (1, 64, 64) and s.label.dtype == np.int64
    t = open_dataset(tmp_path, split="test")
    assert t.load_case("case0001").image.shape == (3, 64, 64) and t.num_slices("case0001") == 3


def test_unknown_and_empty_folders(tmp_path):
    with pytest.raises(InputError, match="empty folder"):
        open_dataset(tmp_path)
    (tmp_path / "x.txt").write_text("x", encoding="utf-8")
    with pytest.raises(InputError, match="unrecognised dataset layout"):
        open_dataset(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(InputError, match="no image_folder cases found"):
        open_dataset(tmp_path).cases()

"""Bad input: each fault is one line naming the file; batch jobs (check-data, convert, SliceDataset) skip the
case, report it and go on."""
from __future__ import annotations

import gzip
import json

import h5py
import nibabel as nib
import numpy as np
import pytest

from smaformer.cli import main
from smaformer.data import SliceDataset, open_dataset
from smaformer.data.sample import iter_cases
from smaformer.errors import InputError
from smaformer.tools.check_data import check_dataset
from smaformer.tools.convert import convert_to_synapse

SHAPE = (12, 10, 4)


def _nii(path, data, dtype=np.int16):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data).astype(dtype), np.eye(4)), str(path))
    return path


@pytest.fixture
def bad_nnunet(tmp_path):
    """An nnU-Net raw dataset with one good case and one case per fault."""
    rng = np.random.default_rng(0)
    root = tmp_path / "Dataset001_Bad"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                                   "labels": {"background": 0, "a": 1, "b": 2}}), encoding="utf-8")
    img, lab = root / "imagesTr", root / "labelsTr"
    for case in ("good", "mismatch", "range", "nan", "trunc", "zero", "nolabel", "notnifti"):
        _nii(img / f"{case}_0000.nii.gz", rng.integers(-100, 100, SHAPE))
        if case != "nolabel":
            _nii(lab / f"{case}.nii.gz", rng.integers(0, 3, SHAPE), np.uint8)
    _nii(lab / "mismatch.nii.gz", np.zeros((12, 9, 4)), np.uint8)
    _nii(lab / "range.nii.gz", np.full(SHAPE, 7), np.uint8)
    nan = rng.random(SHAPE).astype(np.float32)
    nan[0, 0, 0] = np.inf
    _nii(img / "nan_0000.nii.gz", nan, np.float32)
    raw = gzip.decompress((img / "trunc_0000.nii.gz").read_bytes())
    (img / "trunc_0000.nii.gz").write_bytes(gzip.compress(raw[:400]))
    (img / "zero_0000.nii.gz").write_bytes(b"")
    (img / "notnifti_0000.nii.gz").write_bytes(gzip.compress(b"<html>not a scan</html>" * 30))
    return root


EXPECTED = {
    "mismatch": ("mismatch.nii.gz", "shape mismatch: image (4, 10, 12) vs label (4, 9, 12)"),
    "range": ("range.nii.gz", "label values 7..7 outside the class range 0..2"),
    "nan": ("nan_0000.nii.gz", "image has 1 NaN/inf values"),
    "trunc": ("trunc_0000.nii.gz", "truncated"),
    "zero": ("zero_0000.nii.gz", "empty file (0 bytes)"),
    "nolabel": ("nolabel_0000.nii.gz", "missing pair: image without label"),
    "notnifti": ("notnifti_0000.nii.gz", "not a readable NIfTI"),
}


def test_each_fault_is_one_line_naming_the_file(bad_nnunet):
    r = open_dataset(bad_nnunet)
    assert r.load_case("good").label.max() <= 2
    faults = dict(r.skipped)
    for case, (fname, fault) in EXPECTED.items():
        if case in faults:
            msg = faults[case]
        else:
            with pytest.raises(InputError) as e:
                r.load_case(case)
            msg = str(e.value)
        assert fname in msg and fault in msg and "\n" not in msg, (case, msg)


def test_iter_cases_reports_each_fault_and_goes_on(bad_nnunet):
    r = open_dataset(bad_nnunet)
    got = list(iter_cases(r))
    assert [s.case for _, s, _ in got if s is not None] == ["good"]
    faults = {c: e for c, s, e in got if s is None}
    assert set(faults) | {c for c, _ in r.skipped} == set(EXPECTED)   # unpaired files are found while listing
    assert all(e and "\n" not in e for e in faults.values())


def test_check_data_reports_every_fault_and_fails(bad_nnunet, capsys):
    report = check_dataset(bad_nnunet, split="train")
    assert report.layout == "nnunet" and report.num_faults == len(EXPECTED)
    assert {c for c, _ in report.splits[0].faults} == set(EXPECTED)
    assert main(["check-data", str(bad_nnunet), "--split", "train"]) == 1
    out = capsys.readouterr().out
    assert "good" in out and out.count("FAULT ") == len(EXPECTED) and "7 fault(s)" in out


def test_convert_and_slice_dataset_skip_bad_cases(bad_nnunet, tmp_path):
    rec = convert_to_synapse(bad_nnunet, tmp_path / "out", test_fraction=0.0)
    assert list(rec["cases"]) == ["case0001"] and len(rec["failed"]) == len(EXPECTED)
    ds = SliceDataset(open_dataset(bad_nnunet), img_size=8)
    seen = {ds[i]["case"] for i in range(len(ds))}  # bad cases are replaced by good slices, never raised
    assert seen == {"good"} and {c for c, _ in ds.skipped} == set(EXPECTED)


def test_check_data_warns_on_affine_mismatch(tmp_path):
    _nii(tmp_path / "images" / "a.nii.gz", np.zeros(SHAPE))
    (tmp_path / "labels").mkdir()
    label = nib.Nifti1Image(np.zeros(SHAPE, np.uint8), np.diag([2.0, 1.0, 1.0, 1.0]))
    nib.save(label, str(tmp_path / "labels" / "a.nii.gz"))
    report = check_dataset(tmp_path, split="train")
    assert report.num_faults == 0
    assert any("a.nii.gz: label affine differs from the image's (spacing 1x1x2 vs 1x1x1)" in w
               for w in report.warnings)


def test_npz_h5_missing_key_zero_byte_and_wrong_ndim(tmp_path):
    (tmp_path / "train_npz").mkdir()
    (tmp_path / "test_vol_h5").mkdir()
    np.savez(tmp_path / "train_npz" / "case0005_slice000.npz", image=np.zeros((8, 8), np.float32))
    np.savez(tmp_path / "train_npz" / "case0005_slice001.npz", image=np.zeros((2, 8, 8)), label=np.zeros((2, 8, 8)))
    (tmp_path / "train_npz" / "case0005_slice002.npz").write_bytes(b"")
    with h5py.File(tmp_path / "test_vol_h5" / "case0001.npy.h5", "w") as f:
        f["img"] = np.zeros((2, 8, 8))
    r = open_dataset(tmp_path)
    with pytest.raises(InputError, match=r"case0005_slice000.npz: missing key 'label' \(has: image\)"):
        r.load_case("case0005_slice000")
    with pytest.raises(InputError, match="case0005_slice001.npz: expected a 2D image in train_npz"):
        r.load_case("case0005_slice001")
    with pytest.raises(InputError, match=r"case0005_slice002.npz: empty file \(0 bytes\)"):
        r.load_case("case0005_slice002")
    t = open_dataset(tmp_path, split="test")
    with pytest.raises(InputError, match=r"case0001.npy.h5: missing key 'image' \(has: img\)"):
        t.load_case("case0001")
    with pytest.raises(InputError, match="missing key 'image'"):
        t.num_slices("case0001")
    report = check_dataset(tmp_path)
    assert report.num_faults == 4


def test_iter_cases_reports_an_unknown_case_name(bad_nnunet):
    got = list(iter_cases(open_dataset(bad_nnunet), ["good", "nope"]))
    assert got[0][1] is not None and got[1][1] is None and "no case 'nope'" in got[1][2]


def test_unknown_layout_is_a_one_line_input_error(tmp_path):
    with pytest.raises(InputError, match=r"unknown layout 'nifti'.*use one of"):
        open_dataset(tmp_path, layout="nifti")
    with pytest.raises(InputError, match=r"did you mean 'synapse'"):
        open_dataset(tmp_path, layout="synapze")

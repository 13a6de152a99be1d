"""``smaformer convert``: TotalSegmentator CT -> Synapse layout end to end, read back by the Synapse reader."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from smaformer.cli import main
from smaformer.data import open_dataset
from smaformer.data.formats.synapse import SYNAPSE_CLASSES
from smaformer.errors import InputError
from smaformer.tools.convert import PairsReader, convert_to_synapse, parse_label_map, split_cases

# TotalSegmentator v2 ids of the 8 Synapse organs, by Synapse id (DESIGN.md order)
TOTALSEG_ID = {"aorta": 52, "gallbladder": 4, "kidney_left": 3, "kidney_right": 2, "liver": 5, "pancreas": 7,
               "spleen": 1, "stomach": 6}


def test_totalseg_to_synapse_round_trip(data_dir, tmp_path):
    ct, seg = data_dir / "totalseg_sample" / "example_ct_sm.nii.gz", data_dir / "totalseg_sample" / "example_seg.nii.gz"
    hu = np.asarray(nib.load(str(ct)).dataobj, np.float32).transpose(2, 1, 0)  # (z, y, x)
    ts = np.asarray(nib.load(str(seg)).dataobj).transpose(2, 1, 0)
    expected = np.zeros(ts.shape, np.int64)
    for syn_id, name in enumerate(SYNAPSE_CLASSES[1:], 1):
        expected[ts == TOTALSEG_ID[name]] = syn_id
    assert set(np.unique(expected)) == set(range(9))  # all eight organs occur in the sample

    # the one case as a training case (npz slices) and, in a second output, as a test case (h5 volume)
    for out, kw in (("tr", {"test_fraction": 0.0}), ("te", {"test_cases": ["example_ct_sm"]})):
        rec = convert_to_synapse(PairsReader([(ct, seg)]), tmp_path / out, label_map=parse_label_map("totalseg"),
                                 **kw)
        assert rec["failed"] == [] and rec["cases"]["case0001"]["spacing"] == [3.0, 3.0, 3.0]
    train = open_dataset(tmp_path / "tr")
    assert train.layout == "synapse" and len(train.cases()) == 30 and train.classes == SYNAPSE_CLASSES
    s = train.load_case("case0001_slice017")
    assert s.image.shape == (1, 101, 122) and s.meta["spacing"] == (3.0, 3.0)
    np.testing.assert_array_equal(s.label, expected[17])
    np.testing.assert_allclose(s.image[0], (np.clip(hu[17], -125, 275) + 125) / 400, atol=1e-6)
    test = open_dataset(tmp_path / "te", split="test")
    assert test.cases() == ["case0001"]
    with pytest.raises(InputError, match="no .npz files for split 'train'"):
        open_dataset(tmp_path / "te")
    v = test.load_case("case0001")
    assert v.image.shape == (30, 101, 122) and v.meta["spacing"] == (3.0, 3.0, 3.0)
    np.testing.assert_array_equal(v.label, expected)
    np.testing.assert_allclose(v.image, (np.clip(hu, -125, 275) + 125) / 400, atol=1e-6)


def _nii(path, data, dtype):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(dtype), np.diag([0.7, 0.7, 2.0, 1.0])), str(path))


def test_cli_folder_source_split_label_json_and_bad_case(tmp_path, capsys):
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    for i in range(5):
        _nii(src / "images" / f"p{i}.nii.gz", rng.integers(-500, 500, (16, 16, 4)), np.int16)
        _nii(src / "labels" / f"p{i}.nii.gz", rng.integers(0, 4, (16, 16, 4)), np.uint8)
    _nii(src / "labels" / "p4.nii.gz", rng.integers(0, 4, (16, 12, 4)), np.uint8)  # shape mismatch
    (tmp_path / "map.json").write_text(json.dumps({"1": 5, "2": 7}), encoding="utf-8")
    rc = main(["convert", str(src), "-o", str(tmp_path / "out"), "--labels", str(tmp_path / "map.json"),
               "--test", "p0,p3", "--window", "abdomen", "--keep-names"])
    out = capsys.readouterr().out
    assert rc == 1 and "3 train" not in out and "2 train cases (8 slices), 2 test volumes" in out
    assert "skipped p4:" in out and "shape mismatch" in out
    rec = json.loads((tmp_path / "out" / "convert.json").read_text(encoding="utf-8"))
    assert rec["cases"]["p0"]["split"] == "test" and rec["intensity"]["lo"] == -160.0
    test = open_dataset(tmp_path / "out", split="test")
    assert test.cases() == ["p0", "p3"]
    lab = np.asarray(nib.load(str(src / "labels" / "p3.nii.gz")).dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(test.load_case("p3").label, np.select([lab == 1, lab == 2], [5, 7], 0))
    assert main(["convert", "-o", str(tmp_path / "x")]) == 2  # neither a source nor pairs


def test_label_map_parsing_and_split():
    assert parse_label_map("1:7, 2:4") == {1: 7, 2: 4}
    assert parse_label_map("totalseg")[52] == 1
    with pytest.raises(InputError, match="use 'src:dst"):
        parse_label_map("liver=5")
    cases = [f"c{i}" for i in range(30)]
    test = split_cases(cases, None, 0.4, seed=0)
    assert len(test) == 12 and test == split_cases(cases, None, 0.4, seed=0)
    assert len(split_cases(cases[:2], None, 0.1, 0)) == 1 and split_cases(cases[:1], None, 0.4, 0) == set()
    with pytest.raises(InputError, match="not in the source"):
        split_cases(cases, ["nope"], 0.4, 0)

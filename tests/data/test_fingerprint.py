"""Dataset fingerprints and the intensity/spacing guard: grouped cases, bounded memory, the guard firing on
raw CT HU into an MRI-like [0, 1] model and silent on every training case; check-data writes them."""
import json

import numpy as np
import pytest

from smaformer.data import Reader, Sample, open_dataset
from smaformer.data.fingerprint import FingerprintBuilder, _voxels, dataset_fingerprint, intensity_warnings
from smaformer.train.data import StackedCases, case_key


class Volumes(Reader):
    """In-memory volumes ``name -> (image, label, spacing)``."""

    layout = "memory"

    def __init__(self, items: dict):
        self.items, self.classes, self.skipped, self.split, self.root = items, ["bg", "a", "b"], [], "train", None

    def cases(self):
        return list(self.items)

    def load_case(self, case):
        img, lab, sp = self.items[case]
        return Sample(img, lab, {"case": case, "spacing": sp, "is_volume": img.ndim == 3 and lab.ndim == 3})


def mri_like(n=6, seed=0, spacing=(8.0, 1.5, 1.5)):
    g = np.random.default_rng(seed)
    items = {}
    for i in range(n):
        img = np.clip(g.gamma(2.0, 0.08 + 0.03 * i, (6, 40, 40)), 0, 1).astype(np.float32)
        lab = (g.random((6, 40, 40)) * 3).astype(np.int64)
        items[f"patient{i:03d}_frame01"] = (img, lab, spacing)
    return Volumes(items)


def test_fingerprint_contents_and_grouping():
    r = mri_like(4)
    fp = dataset_fingerprint(r)
    assert fp["num_cases"] == 4 and fp["percentiles"] == [0.5, 50.0, 99.5]
    c = fp["cases"][0]
    assert c["shape"] == [6, 40, 40] and c["spacing"] == [8.0, 1.5, 1.5] and c["items"] == 1
    assert abs(sum(c["class_frequencies"].values()) - 1) < 1e-9
    img = r.load_case(c["case"]).image
    assert c["intensity"]["p50"] == pytest.approx(float(np.percentile(img, 50)))
    s = fp["summary"]
    assert s["intensity"]["p99.5"]["max"] <= 1.0 and s["spacing"]["min"] == [8.0, 1.5, 1.5]
    assert set(s["class_frequencies"]) == {"0", "1", "2"}
    # 2D slices of one patient (two frames) make one case, whatever order they come in
    sl = {f"patient007_frame{f}_slice_{k}": (np.full((1, 8, 8), k, np.float32), np.zeros((8, 8), np.int64), None)
          for f in ("12", "01") for k in range(3)}
    sl["patient002_frame01_slice_0"] = (np.ones((1, 8, 8), np.float32), np.ones((8, 8), np.int64), None)
    fp2 = dataset_fingerprint(Volumes(dict(reversed(list(sl.items())))), group=case_key)
    assert [c["case"] for c in fp2["cases"]] == ["patient002", "patient007"]
    assert fp2["cases"][1]["shape"] == [6, 8, 8] and fp2["cases"][1]["intensity"]["p99.5"] == pytest.approx(2.0)
    assert fp2["summary"]["spacing"] is None
    b = FingerprintBuilder(case_key)
    b.add("patient001_slice_0", Sample(np.zeros((1, 4, 4), np.float32), None))
    b.add("patient002_slice_0", Sample(np.zeros((1, 4, 4), np.float32), None))
    with pytest.raises(ValueError, match="not contiguous"):
        b.add("patient001_slice_1", Sample(np.zeros((1, 4, 4), np.float32), None))
    json.dumps(b.result())      # plain JSON: no NaN, no numpy types


def test_percentiles_use_a_bounded_deterministic_sample():
    big = np.arange(10_000, dtype=np.float32)
    a, b = _voxels(big, cap=1000), _voxels(big, cap=1000)
    assert a.size == 1000 and np.array_equal(a, b) and abs(np.median(a) - 5000) < 600
    assert _voxels(big[:500], cap=1000).size == 500


def test_sample_of_a_many_item_case_is_uniform_over_all_its_items(monkeypatch):
    """64 slices with value = slice index, 1,024 voxels each, under a cap of 4,096: the median is 31.5, not
    the last slices' (an earlier running sample let the last items dominate: p50 59)."""
    import smaformer.data.fingerprint as fpm

    monkeypatch.setattr(fpm, "MAX_VOXELS", 4096)
    monkeypatch.setattr(fpm._voxels, "__defaults__", (4096,))    # the cap everywhere, _voxels' default too
    items = {f"case001_slice{z:03d}": (np.full((1, 32, 32), z, np.float32), np.zeros((32, 32), np.int64), None)
             for z in range(64)}
    b = FingerprintBuilder(case_key)
    for name in items:
        b.add(name, Volumes(items).load_case(name))
    case = b._open
    values = np.concatenate(case.values)
    assert values.size == 4096 and case.seen == 64 * 1024
    quarters = np.bincount((values // 16).astype(int), minlength=4) / values.size
    assert np.abs(quarters - 0.25).max() < 0.03             # each quarter of the slices holds a quarter
    p = b.result()["cases"][0]["intensity"]
    assert abs(p["p50"] - 31.5) <= 1.5 and p["p0.5"] == 0.0 and p["p99.5"] == 63.0
    again = FingerprintBuilder(case_key)                   # a fixed seed: the same data, the same numbers
    for name in items:
        again.add(name, Volumes(items).load_case(name))
    assert again.result()["cases"][0]["intensity"] == p


def test_guard_fires_on_hu_into_an_mri_model_and_stays_silent_on_training_cases():
    r = mri_like(6)
    fp = dataset_fingerprint(r)
    for case in r.cases():
        s = r.load_case(case)
        assert intensity_warnings(fp, s.image, s.meta["spacing"], case) == []
    ct = np.random.default_rng(1).uniform(-1024, 3000, (8, 40, 40)).astype(np.float32)
    w = intensity_warnings(fp, ct, (2.5, 0.8, 0.8), "ct001")
    assert len(w) == 1 and w[0].startswith("case ct001: intensities") and "\n" not in w[0]
    assert intensity_warnings(fp, ct, None, "ct001", {"intensity": {"mode": "zscore"}}) == []   # scale-free
    # spacing far outside (4x) fires, normal variation does not
    img = r.load_case(r.cases()[0]).image
    assert intensity_warnings(fp, img, (5.0, 1.2, 1.9), "x") == []
    assert "x spacing 7 mm" in intensity_warnings(fp, img, (5.0, 1.5, 7.0), "x")[0]
    assert intensity_warnings(None, ct, None, "old checkpoint") == []
    # the mirror mistake: a [0, 1] image into a model trained on HU
    hu = Volumes({f"c{i}": (np.random.default_rng(i).uniform(-1000, 1500, (4, 16, 16)).astype(np.float32),
                            np.zeros((4, 16, 16), np.int64), (3.0, 0.8, 0.8)) for i in range(3)})
    w = intensity_warnings(dataset_fingerprint(hu), img, None, "mr")
    assert len(w) == 1 and "intensity span" in w[0]


@pytest.fixture(scope="module")
def acdc_fingerprint(shared_data_dir):
    root = shared_data_dir / "acdc"
    if not (root / "train_slices.list").is_file():
        pytest.skip(f"{root} has no ACDC h5 training split")
    reader = open_dataset(root, split="train")
    return reader, dataset_fingerprint(reader, group=case_key)


def test_guard_on_real_acdc_and_ct(acdc_fingerprint, data_dir):
    from smaformer.data.io import read_image

    reader, fp = acdc_fingerprint
    assert fp["num_cases"] == 70 and not fp["failed"] and fp["summary"]["intensity"]["p99.5"]["max"] <= 1.0
    stacked = StackedCases(reader, reader.cases())
    for case in stacked.cases():
        assert intensity_warnings(fp, stacked.load_case(case).image, None, case) == [], case
    val = open_dataset(data_dir / "acdc", split="val")
    for case in val.cases():
        assert intensity_warnings(fp, val.load_case(case).image, None, case) == [], case
    ct_path = data_dir / "totalseg_sample" / "example_ct_sm.nii.gz"
    if not ct_path.is_file():
        pytest.skip(f"{ct_path} is absent")
    ct, props = read_image(ct_path)
    w = intensity_warnings(fp, ct, props.get("spacing"), "example_ct_sm")
    assert len(w) == 1 and "far outside" in w[0] and "example_ct_sm" in w[0]


def test_check_data_writes_the_fingerprint(data_dir, tmp_path, capsys):
    from smaformer.cli import main

    root = data_dir / "acdc"
    out = tmp_path / "fp.json"
    assert main(["check-data", str(root), "--split", "val", "--fingerprint", str(out)]) == 0
    assert "intensity percentiles 0.5 / 50 / 99.5" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    fp = doc["splits"]["val"]
    assert doc["layout"] == "acdc_h5" and fp["num_cases"] == 10          # 20 frames of 10 patients
    assert all(c["items"] == 2 and len(c["shape"]) == 3 for c in fp["cases"])
    assert set(fp["summary"]["class_frequencies"]) == {"0", "1", "2", "3"}

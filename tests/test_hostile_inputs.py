"""A hostile-input sweep of the features of the cross-validation/ensemble round: each fault gets a one-line
error naming the file (exit 2 from the CLI) or a correct result, never a traceback."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from tiny_models import nifti_cases, tiny_unet_checkpoint

from smaformer.checkpoint import default_preprocessing, read_checkpoint, save_checkpoint
from smaformer.cli import main
from smaformer.data.fingerprint import intensity_warnings
from smaformer.errors import InputError
from smaformer.export import export_onnx
from smaformer.infer.volume import infer_volume
from smaformer.train.folds import fold_split

CLASSES = ["background", "a", "b"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    minmax = {"mode": "minmax"}
    return {"a": tiny_unet_checkpoint(root / "a.pt", CLASSES, intensity=minmax),
            "b": tiny_unet_checkpoint(root / "b.pt", CLASSES, size=48, in_chans=3, intensity=minmax, seed=1),
            "other": tiny_unet_checkpoint(root / "other.pt", ["background", "x"], intensity=minmax, seed=2)}


@pytest.fixture
def scans(tmp_path) -> Path:
    return nifti_cases(tmp_path / "scans", ("c1", "c2"), (20, 24, 3), np.diag([0.8, 0.8, 2.5, 1]))


def _one_line(argv: list[str], capsys, match: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err, err
    return err


def _labels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


# ------------------------------------------------------------------------------------------ folds
NAMES = [f"patient{p:03d}_frame01_slice_{s}" for p in range(1, 5) for s in range(2)]


@pytest.mark.parametrize(("splits", "fault"), [
    ([{"train": ["patient001", "patient002"], "val": ["patient003"]},
      {"train": ["patient001", "patient004"], "val": ["patient003"]}], "validates in folds 0 and 1"),
    ([{"train": ["patient001"], "val": ["patient077"]}], "not in the training split"),
    ([{"train": ["patient001"], "val": ["patient002"]}, {"train": ["patient002"], "val": ["patient030"]}],
     "test split"),
])
def test_bad_splits_files(tmp_path, splits, fault):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(splits))
    with pytest.raises(InputError, match=fault) as e:
        fold_split({"fold": 0, "folds": 5, "splits_file": str(path)}, 0, NAMES, test_names=["patient030_frame01"])
    assert "\n" not in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize(("args", "fault"), [(["--fold", "5"], "out of range"), (["--fold", "-1"], "fold index"),
                                             (["--fold", "0", "--folds", "1"], "data.folds")])
def test_fold_arguments_from_the_cli(args, fault, capsys):
    _one_line(["train", "--config", "acdc_swin_unet", *args, "--dry-run"], capsys, fault)


# --------------------------------------------------------------------------------------- ensembles
def test_the_same_member_twice_equals_the_member(models, scans, tmp_path):
    assert main(["predict", "-i", str(scans), "-o", str(tmp_path / "one"), "-c", str(models["a"]), "--quiet"]) == 0
    assert main(["predict", "-i", str(scans), "-o", str(tmp_path / "two"), "-c", str(models["a"]), str(models["a"]),
                 "--quiet"]) == 0
    for case in ("c1", "c2"):
        one, two = (_labels(tmp_path / run / f"{case}.nii.gz") for run in ("one", "two"))
        assert np.array_equal(one, two)


def test_members_of_other_sizes_and_channel_counts_work(models, scans, tmp_path):
    out = tmp_path / "ens"
    assert main(["predict", "-i", str(scans), "-o", str(out), "-c", str(models["a"]), str(models["b"]), "--quiet"]) == 0
    seg = nib.load(str(out / "c1.nii.gz"))
    assert seg.shape == (20, 24, 3) and np.array_equal(seg.affine, nib.load(str(scans / "c1.nii.gz")).affine)


def test_an_onnx_member_of_another_model_is_refused(models, scans, tmp_path, capsys):
    from smaformer.checkpoint import load_checkpoint

    model, info = load_checkpoint(models["other"])
    onnx = export_onnx(model, info, tmp_path / "other.onnx").path
    out = tmp_path / "out"
    _one_line(["predict", "-i", str(scans), "-o", str(out), "-c", str(models["a"]), str(onnx)], capsys, "other.onnx")
    assert not out.exists()


# -------------------------------------------------------------------------------- cross-validation
def _fold_run(root: Path, classes: list[str], splits: list[dict]) -> Path:
    (root / "validation").mkdir(parents=True)
    rows = [{"case": c, "metrics": {}} for c in splits[0]["val"]]
    (root / "validation" / "metrics.json").write_text(json.dumps(
        {"classes": {str(i): n for i, n in enumerate(classes) if i}, "metric_per_case": rows}))
    (root / "splits.json").write_text(json.dumps(splits))
    return root


def test_cross_validation_refuses_runs_that_are_not_folds_of_one_split(tmp_path, capsys):
    s1 = [{"train": ["p1"], "val": ["p0"]}, {"train": ["p0"], "val": ["p1"]}]
    s2 = [{"train": ["p2"], "val": ["p0"]}, {"train": ["p0"], "val": ["p2"]}]
    f0 = _fold_run(tmp_path / "f0", CLASSES, s1)
    other_split = _fold_run(tmp_path / "g1", CLASSES, s2)
    other_classes = _fold_run(tmp_path / "h1", ["background", "x"], s1)
    bare = tmp_path / "bare"
    bare.mkdir()
    out = str(tmp_path / "cv")
    _one_line(["evaluate", "--cross-validation", str(f0), str(other_split), "-o", out], capsys, "splits.json")
    _one_line(["evaluate", "--cross-validation", str(f0), str(other_classes), "-o", out], capsys, "classes")
    _one_line(["evaluate", "--cross-validation", str(f0), str(bare), "-o", out], capsys, "metrics.json: not found")


# ------------------------------------------------------------------------------------------ sliding
@pytest.mark.parametrize("shape", [(2, 10, 12), (2, 1, 40), (2, 40, 1), (1, 1, 1)])
def test_sliding_on_images_smaller_than_the_model_or_one_pixel_wide(shape):
    net = torch.nn.Conv2d(1, 3, 1)
    vol = np.random.default_rng(0).random(shape).astype(np.float32)
    pre = default_preprocessing((32, 32), 1, "repeat", {"mode": "none"})
    labels = infer_volume(net, vol, pre, inference="sliding")
    assert labels.shape == shape
    # a 1x1 convolution sees each pixel alone: sliding must give the per-pixel argmax, padding or not
    with torch.no_grad():
        expected = net(torch.from_numpy(vol[:, None])).argmax(1).numpy()
    assert np.array_equal(labels, expected)


# ---------------------------------------------------------------------------------- post-processing
CORRUPT = [("postprocessing", rule, "stored post-processing is corrupt") for rule in (
    {"per_class": {"1": {"mode": "bogus"}}}, {"per_class": {"1": {"mode": "min_size", "min_size": -3}}},
    {"per_class": ["lcc"]}, "lcc", {"per_class": {"x": {"mode": "lcc"}}})] + \
    [("fingerprint", fingerprint, "stored training fingerprint is corrupt") for fingerprint in (
        {"summary": {"intensity": {"p0.5": [1, 2]}}}, ["x"],
        {"summary": {"intensity": {"p0.5": {"min": "a"}, "p99.5": {"max": 1}}}},
        {"summary": {"intensity": {"p0.5": {"min": 1e6}, "p99.5": {"max": 1.5e6}}, "span": {"min": "x"}}},
        {"summary": {"spacing": {"min": [1.0, "a"], "max": [2.0, 2.0]}}})]


@pytest.mark.parametrize(("key", "value", "fault"), CORRUPT)
def test_a_corrupt_stored_rule_or_fingerprint_is_one_line_before_any_case(models, scans, tmp_path, capsys, key, value,
                                                                           fault):
    ck = read_checkpoint(models["a"])
    ck[key] = value
    bad = save_checkpoint(ck, tmp_path / "bad.pt")
    out = tmp_path / "out"
    _one_line(["predict", "-i", str(scans), "-o", str(out), "-c", str(bad)], capsys, f"bad.pt: {fault}")
    assert not out.exists()
    if key == "postprocessing":     # the stored rule can be set aside
        assert main(["predict", "-i", str(scans), "-o", str(out), "-c", str(bad), "--postprocess", "none",
                     "--quiet"]) == 0


@pytest.mark.parametrize("value", ["0", "-5", "abc", "2.5"])
def test_min_size_must_be_a_positive_count(models, scans, tmp_path, capsys, value):
    _one_line(["predict", "-i", str(scans), "-o", str(tmp_path / "o"), "-c", str(models["a"]), "--postprocess",
               "min-size", value], capsys, "positive voxel count")


# -------------------------------------------------------------------------------- intensity guard
def _fingerprint() -> dict:
    from smaformer.data.fingerprint import summarise

    rng = np.random.default_rng(0)
    cases = []
    for i in range(3):
        v = rng.random((4, 16, 16)).astype(np.float32)
        p = np.percentile(v, (0.5, 50, 99.5))
        cases.append({"case": f"c{i}", "shape": list(v.shape), "spacing": [2.0, 1.0, 1.0],
                      "intensity": {"p0.5": float(p[0]), "p50": float(p[1]), "p99.5": float(p[2])}})
    return {"version": 1, "cases": cases, "summary": summarise(cases)}


@pytest.mark.parametrize(("fill", "expect"), [(np.nan, "no finite intensity"), (0.5, "intensity span"),
                                              (np.inf, "no finite intensity"), (-np.inf, "no finite intensity")])
def test_intensity_guard_on_degenerate_volumes(fill, expect):
    image = np.full((3, 16, 16), fill, np.float32)
    warnings = intensity_warnings(_fingerprint(), image, (2.0, 1.0, 1.0), "odd")
    assert len(warnings) == 1 and expect in warnings[0] and warnings[0].startswith("case odd:"), warnings


def test_guard_ignores_a_few_non_finite_voxels():
    image = np.random.default_rng(1).random((3, 16, 16)).astype(np.float32)
    image[0, 0, :3] = (np.nan, np.inf, -np.inf)
    assert intensity_warnings(_fingerprint(), image, (2.0, 1.0, 1.0), "ok") == []



"""``smaformer predict``: geometry kept exactly (RAS, LPS, oblique, DICOM), 2D masks, engines, failures."""
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import CT_WINDOW, tiny_unet_checkpoint

from smaformer.checkpoint import (
    build_checkpoint,
    default_preprocessing,
    read_checkpoint,
    save_checkpoint,
    save_safetensors_pair,
)
from smaformer.cli import main
from smaformer.data.io import read_label_names
from smaformer.errors import InputError
from smaformer.infer.predict import check_geometry, list_cases, predict
from smaformer.models import create_model
from smaformer.models.registry import tiny_kwargs

CLASSES = ["background", "liver", "spleen"]
CT = "totalseg_sample/example_ct_sm.nii.gz"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny untrained U-Net checkpoint at 32x32 with the Synapse CT window."""
    return tiny_unet_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.pt", CLASSES, in_chans=3, intensity=CT_WINDOW)


def _same_geometry(src, out):
    a, b = nib.load(str(src)), nib.load(str(out))
    assert b.shape == a.shape
    assert np.array_equal(b.affine, a.affine)
    for key in ("qform_code", "sform_code", "pixdim", "srow_x", "srow_y", "srow_z", "quatern_b", "quatern_c"):
        assert np.array_equal(b.header[key], a.header[key]), key
    assert b.get_data_dtype() == np.uint8
    assert read_label_names(out) == CLASSES


def _reoriented(src, tmp_path, kind):
    img = nib.load(str(src))
    if kind == "lps":
        ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                               nib.orientations.axcodes2ornt("LPS"))
        out = img.as_reoriented(ornt)
        assert nib.aff2axcodes(out.affine) == ("L", "P", "S")
    else:  # oblique: rotate 20 degrees about x and 10 about z
        a, b = math.radians(20), math.radians(10)
        rx = np.array([[1, 0, 0, 0], [0, math.cos(a), -math.sin(a), 0], [0, math.sin(a), math.cos(a), 0], [0, 0, 0, 1]])
        rz = np.array([[math.cos(b), -math.sin(b), 0, 0], [math.sin(b), math.cos(b), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
        out = nib.Nifti1Image(np.asanyarray(img.dataobj), rz @ rx @ img.affine, header=img.header)
        out.set_qform(out.affine, code=1)
    path = tmp_path / f"ct_{kind}.nii.gz"
    nib.save(out, str(path))
    return path


@pytest.mark.parametrize("kind", ["ras", "lps", "oblique"])
def test_real_ct_geometry_exact(data_dir, ckpt, tmp_path, kind):
    src = data_dir / CT
    if kind != "ras":
        src = _reoriented(src, tmp_path, kind)
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", "-i", str(src), "-o", str(out), "-c", str(ckpt), "--quiet", "--device", "cpu"]) == 0
    _same_geometry(src, out)
    labels = np.asanyarray(nib.load(str(out)).dataobj)
    assert labels.max() < len(CLASSES)
    assert not list(tmp_path.glob(".*tmp*")), "temp file left behind"


def test_probabilities_and_engines_agree(data_dir, ckpt, tmp_path):
    """.pt, the safetensors pair, ONNX Runtime and OpenVINO (export extra) give the same probabilities."""
    from smaformer.export import export_checkpoint

    src = data_dir / CT
    weights, _ = save_safetensors_pair(read_checkpoint(ckpt), tmp_path / "tiny.safetensors")
    export_checkpoint(ckpt, tmp_path / "tiny.onnx", "onnx", onnx_exporters=("torchscript",))  # the faster one
    runs = {"torch": (ckpt, "torch"), "safetensors": (weights, "auto"), "onnxruntime": (tmp_path / "tiny.onnx", "auto"),
            "openvino": (tmp_path / "tiny.onnx", "openvino")}
    probs = {}
    for name, (path, engine) in runs.items():
        res = predict(src, tmp_path / name, path, engine=engine, device="cpu", save_probabilities=True,
                      progress=False, log=lambda s: None)
        assert res[0].error is None, res[0].error
        _same_geometry(src, res[0].output)
        probs[name] = np.load(tmp_path / name / "example_ct_sm_probabilities.npz")["probabilities"]
    assert probs["torch"].shape == (3, 30, 101, 122) and probs["torch"].dtype == np.float16
    for name, p in probs.items():
        assert np.abs(p.astype(np.float32) - probs["torch"]).max() < 2e-3, name
    labels = {n: np.asarray(nib.load(str(tmp_path / n / "example_ct_sm.nii.gz")).dataobj) for n in runs}
    assert np.array_equal(labels["onnxruntime"], labels["openvino"])     # OpenVINO asked for f32, not bf16


def test_openvino_is_asked_for_f32(tmp_path, monkeypatch):
    """On CPUs with AMX OpenVINO defaults to bf16; the runner must ask for f32 whatever the CPU."""
    ov = pytest.importorskip("openvino")
    import smaformer.export.runtimes as rt

    seen = {}

    def fake_compile(self, path, device, config=None):
        seen.update(device=device, config=config)
        raise RuntimeError("stop here")

    monkeypatch.setattr(ov.Core, "compile_model", fake_compile)
    monkeypatch.setattr(rt, "read_metadata", lambda p: None)
    with pytest.raises(RuntimeError, match="stop here"):
        rt.openvino_runner(tmp_path / "m.onnx")
    assert seen == {"device": "CPU", "config": {"INFERENCE_PRECISION_HINT": "f32"}}


def test_bf16_runs_and_keeps_geometry(data_dir, ckpt, tmp_path):
    src = data_dir / CT
    res = predict(src, tmp_path / "o.nii.gz", ckpt, precision="bf16", device="cpu", progress=False, log=print)
    assert res[0].error is None
    _same_geometry(src, tmp_path / "o.nii.gz")


def test_folder_with_a_bad_case_continues(ckpt, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    vol = np.random.default_rng(0).integers(-200, 300, size=(20, 24, 5)).astype(np.int16)
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 3.0, 1.0])), str(folder / "a_good.nii.gz"))
    (folder / "b_bad.nii.gz").write_bytes(b"not a nifti at all")
    assert main(["predict", "-i", str(folder), "-o", str(tmp_path / "out"), "-c", str(ckpt), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "b_bad.nii.gz" in out and "1/2 cases" in out
    assert (tmp_path / "out" / "a_good.nii.gz").is_file() and not (tmp_path / "out" / "b_bad.nii.gz").exists()
    _same_geometry(folder / "a_good.nii.gz", tmp_path / "out" / "a_good.nii.gz")


def test_png_inputs_give_png_masks(ckpt, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 255, (30, 20, 3), dtype=np.uint8)).save(folder / "rgb.png")
    res = predict(folder, tmp_path / "masks", ckpt, device="cpu", progress=False, log=lambda s: None)
    assert [r.error for r in res] == [None, None]
    for name, shape in (("grey.png", (40, 50)), ("rgb.png", (30, 20))):
        mask = np.asarray(Image.open(tmp_path / "masks" / name))
        assert mask.shape == shape and mask.dtype == np.uint8 and mask.max() < 3


def test_dicom_series_gives_nifti_with_its_geometry(ckpt, tmp_path):
    pytest.importorskip("SimpleITK")
    from dicom_series import write_dicom_series

    vol = np.random.default_rng(2).integers(-100, 200, size=(6, 24, 20)).astype(np.int16)
    write_dicom_series(tmp_path / "series", vol)
    res = predict(tmp_path / "series", tmp_path / "seg.nii.gz", ckpt, device="cpu", progress=False, log=print)
    assert res[0].error is None
    out = nib.load(str(tmp_path / "seg.nii.gz"))
    assert out.shape == (20, 24, 6)
    assert np.allclose(np.diag(out.affine)[:3], [-0.7, -0.8, 2.5], atol=1e-4)  # LPS spacing -> RAS affine


def test_geometry_check_refuses_a_mismatch(data_dir, tmp_path):
    src = data_dir / CT
    img = nib.load(str(src))
    props = {"format": "nifti", "path": str(src), "file_shape": img.shape}
    check_geometry(src, props)
    moved = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine + np.eye(4) * 0.01, header=img.header)
    nib.save(moved, str(tmp_path / "moved.nii.gz"))
    with pytest.raises(InputError, match="geometry differs"):
        check_geometry(tmp_path / "moved.nii.gz", props)


def test_input_faults_are_one_line(ckpt, tmp_path, capsys):
    assert main(["predict", "-i", str(tmp_path / "nope.nii.gz"), "-o", str(tmp_path), "-c", str(ckpt)]) == 2
    assert "input not found" in capsys.readouterr().err
    with pytest.raises(InputError, match="empty folder"):
        list_cases(tmp_path)
    if not torch.cuda.is_available():
        (tmp_path / "in").mkdir()
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), str(tmp_path / "in" / "a.nii.gz"))
        assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-c", str(ckpt),
                     "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_h5_volumes_predict_to_nifti(data_dir, ckpt, tmp_path, capsys):
    """The ACDC/Synapse .h5 volumes that evaluate reads can be segmented too (NIfTI out, spacing affine)."""
    import h5py

    from smaformer.cli import main

    src = data_dir / "acdc" / "volumes" / "patient002_frame01.h5"
    with h5py.File(src, "r") as f:
        depth, h, w = f["image"].shape
    out = tmp_path / "p002.nii.gz"
    assert main(["predict", "-i", str(src), "-o", str(out), "-c", str(ckpt), "--quiet"]) == 0
    img = nib.load(str(out))
    assert img.shape == (w, h, depth) and np.allclose(img.affine, np.eye(4))     # these files hold no spacing
    assert set(np.unique(np.asarray(img.dataobj))) <= {0, 1, 2}
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["label"] = np.zeros((2, 4, 4))
    assert main(["predict", "-i", str(bad), "-o", str(tmp_path / "b.nii.gz"), "-c", str(ckpt), "--quiet"]) == 1
    assert "bad.h5: missing key 'image' (has: label)" in capsys.readouterr().out


def test_intensity_guard_warns_on_hu_into_an_mri_model_and_records_it(tmp_path, capsys):
    """A checkpoint trained on [0, 1] MRI-like volumes: raw-HU CT gets a one-line warning naming the case
    (printed and in predict.json); data like the training data gets none."""
    import json

    from smaformer.data.fingerprint import dataset_fingerprint
    from smaformer.data.sample import Sample, SampleList

    rng = np.random.default_rng(0)
    train = [Sample(rng.random((4, 24, 24)).astype(np.float32), np.zeros((4, 24, 24), np.int64),
                    {"case": f"mri{i}", "is_volume": True}) for i in range(3)]
    torch.manual_seed(0)
    model = create_model("unet", **tiny_kwargs("unet"), num_classes=3, in_chans=1, img_size=32)
    ckpt = build_checkpoint(model, CLASSES, default_preprocessing((32, 32), 1, "repeat", {"mode": "none"}),
                            fingerprint=dataset_fingerprint(SampleList(train)))
    path = save_checkpoint(ckpt, tmp_path / "mri.pt")
    folder = tmp_path / "in"
    folder.mkdir()
    nib.save(nib.Nifti1Image(rng.integers(-1024, 2000, (24, 24, 4)).astype(np.int16), np.eye(4)),
             str(folder / "ct_hu.nii.gz"))
    nib.save(nib.Nifti1Image(rng.random((24, 24, 4)).astype(np.float32), np.eye(4)), str(folder / "mri_like.nii.gz"))
    assert main(["predict", "-i", str(folder), "-o", str(tmp_path / "out"), "-c", str(path), "--quiet"]) == 0
    warned = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("WARNING")]
    assert len(warned) == 1 and "case ct_hu:" in warned[0] and "far outside" in warned[0]
    doc = json.loads((tmp_path / "out" / "predict.json").read_text())
    by_case = {Path(c["source"]).name: c["warnings"] for c in doc["cases"]}
    assert by_case["mri_like.nii.gz"] == [] and len(by_case["ct_hu.nii.gz"]) == 1

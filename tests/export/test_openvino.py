"""OpenVINO IR export: metadata round-trip, fp32 parity, predict/ensembles on model.xml, and the INT8 guard."""
import nibabel as nib
import numpy as np
import pytest
import torch

from smaformer.checkpoint import build_checkpoint, default_preprocessing, load_checkpoint, save_checkpoint
from smaformer.cli import main
from smaformer.data.sample import Sample
from smaformer.export import ExportError, export_checkpoint
from smaformer.export.metadata import ExportMetadata
from smaformer.export.runtimes import read_metadata
from smaformer.infer.predict import predict
from smaformer.models import create_model
from smaformer.models.registry import tiny_kwargs

pytest.importorskip("openvino")
FAST = ("torchscript",)   # the TorchScript-based ONNX exporter: several times faster than dynamo on a tiny model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("unet", **tiny_kwargs("unet"), num_classes=3, img_size=32)
    pre = default_preprocessing((32, 32), 3, "repeat", {"mode": "window", "lo": -100, "hi": 200})
    return save_checkpoint(build_checkpoint(model, ["bg", "a", "b"], pre), tmp_path_factory.mktemp("ov") / "u.pt")


@pytest.fixture(scope="module")
def ir(ckpt):
    from smaformer.export.openvino import export_openvino

    model, info = load_checkpoint(ckpt)
    res = export_openvino(model, info, ckpt.with_name("u.xml"), onnx_exporters=FAST)
    assert res.fmt == "openvino" and res.max_diff <= 1e-3 and res.dims["batch"] is None
    return res.path


def _volumes(n: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [Sample((rng.random((3, 40, 36)) * 300 - 100).astype(np.float32), rng.integers(0, 3, (3, 40, 36)),
                   {"case": f"patient{i:03d}_frame01", "is_volume": True}) for i in range(n)]


def test_metadata_round_trips(ckpt, ir):
    _, info = load_checkpoint(ckpt)
    meta = read_metadata(ir)
    assert ir.with_suffix(".bin").is_file()
    want = ExportMetadata.of(info, {"batch": None, "height": None, "width": None})
    assert meta.to_json() == want.to_json()


def test_ir_matches_eager_fp32(ckpt, ir):
    from smaformer.export.openvino import compile_ir

    model, _ = load_checkpoint(ckpt)
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(compile_ir(ir)(x.numpy()) - ref).max() <= 1e-4


def test_predict_on_xml_keeps_geometry_and_labels(ckpt, ir, tmp_path):
    vol = (np.random.default_rng(2).random((30, 28, 4)) * 300 - 100).astype(np.float32)
    affine = np.array([[0.8, 0.1, 0, -5], [0, 0.9, 0, 3], [0, 0, 2.5, 7], [0, 0, 0, 1]])
    src = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), str(src))
    half = export_checkpoint(ckpt, tmp_path / "h.onnx", "onnx", FAST, fp16=True).path
    runs = {"xml": [ir], "pt": [ckpt], "ensemble": [ir, ckpt], "fp16": [half], "fp16_xml": [half, ir]}
    for name, members in runs.items():
        res = predict(src, tmp_path / f"{name}.nii.gz", members, progress=False, log=lambda s: None)
        assert res[0].error is None, res[0].error
    out = {n: nib.load(str(tmp_path / f"{n}.nii.gz")) for n in runs}
    for o in out.values():
        assert o.shape == vol.shape and np.array_equal(o.affine, nib.load(str(src)).affine)
    labels = {n: np.asarray(o.dataobj) for n, o in out.items()}
    assert np.array_equal(labels["xml"], labels["pt"]) and np.array_equal(labels["ensemble"], labels["pt"])
    assert (labels["fp16"] == labels["pt"]).mean() >= 0.999 and (labels["fp16_xml"] == labels["pt"]).mean() >= 0.999


def test_evaluate_runs_xml(ir, tmp_path):
    from smaformer.infer.evaluate import evaluate

    result = evaluate(ir, _volumes(2), tmp_path / "ev", overlays=0, progress=False)
    assert result["data"]["n_cases"] == 2 and result["config"]["precision"] == "fp32"


def test_xml_needs_openvino(ir):
    from smaformer.errors import InputError
    from smaformer.infer.members import load_predictor

    with pytest.raises(InputError, match="--engine openvino"):
        load_predictor(ir, "onnxruntime")


def test_int8_guard_refuses_and_writes_nothing(ckpt, tmp_path):
    from smaformer.export.openvino import export_openvino
    from smaformer.infer.quantize import Int8Spec, int8_quantizer

    model, info = load_checkpoint(ckpt)
    out = tmp_path / "q.xml"
    spec = Int8Spec(_volumes(4), cases=2, guard_cases=2, max_dice_drop=-100.0)   # no INT8 can gain 100 points
    with pytest.raises(ExportError, match=r"INT8 refused, nothing written: accuracy guard: .* fp32 .* INT8 .* "
                                          r"\(limit -100 points of mean foreground Dice\)"):
        export_openvino(model, info, out, int8_quantizer(spec), onnx_exporters=FAST)
    assert not any(tmp_path.iterdir())
    spec = Int8Spec(_volumes(4), cases=2, max_dice_drop=100.0)      # the default 20 guard volumes: 2 left
    res = export_openvino(model, info, out, int8_quantizer(spec), onnx_exporters=FAST)
    assert res.fmt == "openvino INT8" and any("Dice on 2 held-back volumes" in n for n in res.notes)
    assert any(n.startswith("only 2 of the 20 guard volumes") for n in res.notes)
    assert read_metadata(out).classes == ["bg", "a", "b"]


def test_int8_calibration_split_is_by_patient():
    from smaformer.errors import InputError
    from smaformer.infer.quantize import Int8Spec, split_volumes

    vols = _volumes(6)
    for i, v in enumerate(vols):
        v.meta["case"] = f"patient{i // 2:03d}_frame0{i % 2 + 1}"     # two volumes per patient
    cal, held = split_volumes(Int8Spec(vols, cases=2, guard_cases=2))
    patients = lambda vs: {v.case.split("_")[0] for v in vs}  # noqa: E731
    assert len(cal) == 2 and len(held) == 2 and not patients(cal) & patients(held)
    with pytest.raises(InputError, match="6 volumes .* needs 6 to calibrate [+] at least 1 held back"):
        split_volumes(Int8Spec(vols, cases=6))


def test_cli_int8_refuses_in_one_line_on_acdc(ckpt, tmp_path, shared_data_dir, capsys, monkeypatch):
    import smaformer.export.openvino as ovx

    onnx = ovx.export_onnx
    monkeypatch.setattr(ovx, "export_onnx", lambda m, i, p, _: onnx(m, i, p, FAST))
    out = tmp_path / "q.xml"
    rc = main(["export", "--format", "openvino", "-c", str(ckpt), "-o", str(out), "--int8", "--calibration",
               str(shared_data_dir / "acdc"), "--calibration-cases", "1", "--guard-cases", "1",
               "--max-dice-drop", "-100"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "INT8 refused, nothing written" in err[0]
    assert not out.exists() and not out.with_suffix(".bin").exists()


def test_unknown_int8_scheme_is_refused(ckpt):
    from smaformer.errors import InputError
    from smaformer.infer.quantize import Int8Spec, quantize_guarded

    _, info = load_checkpoint(ckpt)
    meta = ExportMetadata.of(info, {"batch": None, "height": None, "width": None})
    with pytest.raises(InputError, match="unknown INT8 scheme 'fast'"):
        quantize_guarded(None, meta, Int8Spec(_volumes(2), scheme="fast"), ckpt.with_name("q.xml"))

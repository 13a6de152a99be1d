"""OpenVINO IR export: metadata round-trip, fp32 parity, predict/ensembles on model.xml, and the INT8 guard."""
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from smaformer.checkpoint import (
    build_checkpoint,
    default_preprocessing,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
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


class _LabelReader:
    """A stand-in compiled IR that reads the label back from the input (volumes made by ``_coded``), mapping
    the classes in ``drop`` to background: runs of exactly known Dice."""

    def __init__(self, drop=(), stray=False):
        self.drop, self.stray = set(drop), stray

    def __call__(self, x):
        lab = np.rint((x[:, 0] * 300 - 100) / 100).astype(int).clip(0, 2)      # window -100..200, image = 100*label
        for c in self.drop:
            lab[lab == c] = 0
        if self.stray:
            lab[:, 0, 0] = 2                                                 # one voxel of class 2 per slice
        return np.eye(3, dtype=np.float32)[lab].transpose(0, 3, 1, 2) * 10


def _coded(n: int, classes=(1, 2), first: int = 0) -> list[Sample]:
    """Volumes at the model's 32x32 whose image is 100 x label (so _LabelReader is exact)."""
    out = []
    for i in range(n):
        lab = np.zeros((3, 32, 32), np.int64)
        for c in classes:
            lab[:, 4 * c:4 * c + 6, 5:20] = c
        out.append(Sample(lab.astype(np.float32) * 100, lab, {"case": f"patient{first + i:03d}_frame01",
                                                             "is_volume": True}))
    return out


def _guard(monkeypatch, info, spec, fp32, int8):
    """Run quantize_guarded with NNCF and the IR compiler replaced by runs of known Dice."""
    import nncf

    import smaformer.infer.quantize as qz
    monkeypatch.setattr(nncf, "quantize", lambda model, *a, **k: "int8")
    monkeypatch.setattr(qz, "compile_ir", lambda m: int8 if m == "int8" else fp32)
    meta = ExportMetadata.of(info, {"batch": None, "height": None, "width": None})
    plan = qz.plan_int8(spec, info)
    return qz.quantize_guarded("fp32", meta, spec, plan, Path("q.xml"), cnn=True)


def _info(ckpt, **data):
    _, info = load_checkpoint(ckpt)
    return {**info, "config": {"data": {"train_split": "train", "val_split": "val", **data}}}


def test_guard_drop_has_the_known_value_and_sign(ckpt, monkeypatch):
    """fp32 reads every label back (Dice 100); the 'INT8' run loses class 2 (Dice 100 and 0: 50). The guard
    reads a drop of +50.00 and refuses; with the runs swapped it reads -50.00 and keeps the file."""
    from smaformer.infer.quantize import Int8Spec
    info = _info(ckpt)
    spec = Int8Spec(_coded(3), cases=3, guard_data=_coded(2, first=10), guard_split="val")
    with pytest.raises(ExportError, match=r"on 2 volumes of split val \(asked for\) \(never trained on\): "
                                          r"fp32 100\.00, INT8 50\.00, drop 50\.00 points \(limit 0\.5 points"):
        _guard(monkeypatch, info, spec, _LabelReader(), _LabelReader(drop={2}))
    q, report = _guard(monkeypatch, info, spec, _LabelReader(drop={2}), _LabelReader())
    assert q == "int8" and "fp32 50.00, INT8 100.00, drop -50.00 points" in report[1]


def test_guard_counts_the_reference_classes_for_both_runs(ckpt, monkeypatch):
    """Class 2 is absent from every guard label: one stray voxel of it in the INT8 run must not turn the
    comparison into 100 vs 50 (the classes averaged come from the references, the same for both runs)."""
    from smaformer.infer.quantize import Int8Spec
    spec = Int8Spec(_coded(3), cases=3, guard_data=_coded(2, classes=(1,), first=10), guard_split="val")
    _, report = _guard(monkeypatch, _info(ckpt), spec, _LabelReader(), _LabelReader(stray=True))
    assert "fp32 100.00, INT8 100.00, drop 0.00 points" in report[1]


def test_guard_refuses_patients_the_checkpoint_trained_on(ckpt):
    from smaformer.errors import InputError
    from smaformer.infer.quantize import Int8Spec, plan_int8
    vols = _coded(4)
    with pytest.raises(InputError, match=r"guard volumes of split train \(asked for\) share 4 patient\(s\) with the "
                                         r"checkpoint's training cases \(patient000, patient001, patient002\)"):
        plan_int8(Int8Spec(vols, cases=2, guard_split="train"), _info(ckpt))
    # the checkpoint's own fold: its validation patients guard, calibration never takes one of them
    info = {**_info(ckpt), "splits": {"fold": 0, "splits": [{"train": ["patient000_frame01", "patient001_frame01"],
                                                               "val": ["patient002_frame01", "patient003_frame01"]}]}}
    plan = plan_int8(Int8Spec(vols, cases=2), info)
    assert [v.case for v in plan.guard] and {v.case for v in plan.guard} == {"patient002_frame01", "patient003_frame01"}
    assert {v.case for v in plan.calibration} == {"patient000_frame01", "patient001_frame01"}
    assert plan.guard_source == "the checkpoint's validation fold 0 of split train"
    with pytest.raises(InputError, match="records no validation cases"):
        plan_int8(Int8Spec(vols, cases=2), {**_info(ckpt), "config": {}})


def test_guard_fp32_figure_equals_evaluate(ckpt, ir, tmp_path):
    """The guard's fp32 score of the IR is evaluate's foreground mean Dice of the same file on the same volumes."""
    from smaformer.export.openvino import compile_ir
    from smaformer.infer.evaluate import evaluate
    from smaformer.infer.quantize import mean_foreground_dice
    vols = _volumes(3, seed=4)
    meta = read_metadata(ir)
    guard = mean_foreground_dice(compile_ir(ir), vols, meta, [1, 2])
    result = evaluate(ir, vols, tmp_path / "ev", overlays=0, progress=False, postprocess="none")
    assert guard == pytest.approx(100 * result["foreground_mean"]["standard"]["dice"], abs=1e-9)


def test_int8_export_writes_its_guard_report(ckpt, tmp_path):
    from smaformer.export.openvino import export_openvino
    from smaformer.infer.quantize import Int8Quantizer, Int8Spec

    model, info = load_checkpoint(ckpt)
    info = {**info, "config": {"data": {"train_split": "train", "val_split": "val"}}}
    out = tmp_path / "q.xml"
    spec = Int8Spec(_volumes(4), cases=2, guard_split="val", guard_data=_volumes(2, seed=9)[:1], max_dice_drop=100)
    for v in spec.guard_data:
        v.meta["case"] = "patient077_frame01"
    res = export_openvino(model, info, out, Int8Quantizer(spec), onnx_exporters=FAST)
    assert res.fmt == "openvino INT8" and any("Dice on 1 volumes of split val (asked for)" in n for n in res.notes)
    assert any(n.startswith("only 1 of the 20 guard volumes") for n in res.notes)
    assert read_metadata(out).classes == ["bg", "a", "b"]


@pytest.fixture()
def acdc_ckpt(tmp_path):
    """A tiny 4-class U-Net whose config names ACDC's train/val splits and whose fingerprint is ACDC-like."""
    from smaformer.data.fingerprint import dataset_fingerprint
    from smaformer.data.sample import SampleList, case_key
    torch.manual_seed(0)
    model = create_model("unet", **tiny_kwargs("unet"), num_classes=4, img_size=32)
    pre = default_preprocessing((32, 32), 3, "repeat")
    rng = np.random.default_rng(0)
    fp = dataset_fingerprint(SampleList([Sample(rng.random((4, 40, 40)).astype(np.float32), None,
                                                {"case": f"p{i}", "is_volume": True}) for i in range(3)]),
                             group=case_key)
    ckpt = build_checkpoint(model, ["bg", "RV", "Myo", "LV"], pre, {"data": {"train_split": "train",
                                                                              "val_split": "val"}}, fingerprint=fp)
    return save_checkpoint(ckpt, tmp_path / "acdc.pt")


@pytest.mark.parametrize("extra, message", [
    (["--max-dice-drop", "nan"], "--max-dice-drop nan: give a finite number of points >= 0"),
    (["--guard-cases", "0"], "--guard-cases 0: give a number of volumes >= 1"),
    (["--calibration-cases", "-3"], "--calibration-cases -3: give a number of volumes >= 1"),
])
def test_cli_int8_refuses_bad_numbers_at_once(acdc_ckpt, tmp_path, shared_data_dir, capsys, monkeypatch, extra,
                                              message):
    import smaformer.export.from_checkpoint as fc
    monkeypatch.setattr(fc, "load_checkpoint", lambda *a: pytest.fail("the checkpoint was loaded before refusing"))
    rc = main(["export", "--format", "openvino", "-c", str(acdc_ckpt), "-o", str(tmp_path / "q.xml"), "--int8",
               "--calibration", str(shared_data_dir / "acdc"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"error: {message}"]


def test_cli_int8_refusals_before_any_work_on_acdc(ckpt, acdc_ckpt, tmp_path, shared_data_dir, capsys):
    acdc = shared_data_dir / "acdc"

    def refused(ck, *extra, out=tmp_path / "q.xml"):
        rc = main(["export", "--format", "openvino", "-c", str(ck), "-o", str(out), "--int8", "--calibration",
                   str(acdc), "--calibration-cases", "1", "--guard-cases", "1", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, err
        assert not out.exists() and not out.with_suffix(".bin").exists()
        return err[0]

    three = tmp_path / "three.pt"                                     # the 3-class model on 4-class ACDC
    ck = read_checkpoint(ckpt)
    save_checkpoint({**ck, "config": {"data": {"train_split": "train", "val_split": "val"}}}, three)
    assert "label value 3 outside the model's classes 0..2 (bg, a, b)" in refused(three)
    assert "inside the input" in refused(acdc_ckpt, out=acdc / "m.xml")
    assert refused(acdc_ckpt, "--guard-split", "train").endswith(
        "guard volumes of split train (asked for) share 70 patient(s) with the checkpoint's training cases "
        "(patient003, patient004, patient005); the guard must score patients the model never saw")
    ct = tmp_path / "ct.pt"                                         # a CT-window model calibrated on MRI in [0, 1]
    from smaformer.data.fingerprint import dataset_fingerprint
    from smaformer.data.sample import SampleList, case_key
    rng = np.random.default_rng(0)
    hu = dataset_fingerprint(SampleList([Sample((rng.random((4, 40, 40)) * 1400 - 1000).astype(np.float32), None,
                                                {"case": f"p{i}", "is_volume": True}) for i in range(3)]),
                             group=case_key)
    a = read_checkpoint(acdc_ckpt)
    save_checkpoint({**a, "fingerprint": hu, "preprocessing": {**a["preprocessing"], "intensity": {
        "mode": "window", "lo": -125, "hi": 275}}}, ct)
    assert "calibration case" in (line := refused(ct)) and "the input looks rescaled" in line


def test_unknown_int8_scheme_is_refused(ckpt):
    from smaformer.errors import InputError
    from smaformer.infer.quantize import Int8Quantizer, Int8Spec

    with pytest.raises(InputError, match="unknown INT8 scheme 'fast'"):
        Int8Quantizer(Int8Spec(_volumes(2), scheme="fast"))


def test_records_say_how_each_member_ran(ckpt, ir, tmp_path, monkeypatch):
    """A mixed ensemble asked for bf16: the torch member runs bf16, the IR fp32 on the CPU, and predict.json,
    metrics.json and the first output line say so per member; a torch.compile that fell back to eager too."""
    import json

    from smaformer.infer.evaluate import evaluate
    from smaformer.infer.volume import _Member
    vol = (np.random.default_rng(2).random((30, 28, 4)) * 300 - 100).astype(np.float32)
    src = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(src))
    lines = []
    predict(src, tmp_path / "mixed.nii.gz", [ckpt, ir], precision="bf16", device="cpu", progress=False,
            log=lines.append)
    doc = json.loads((tmp_path / "mixed.json").read_text())
    assert [(m["engine"], m["device"], m["precision"]) for m in doc["members"]] == [
        ("torch", "cpu", "bf16"), ("openvino", "cpu", "fp32")]
    assert doc["members"][1]["path"] == str(ir)
    assert lines[0].startswith("2 model(s): u.pt (torch, cpu, bf16), u.xml (openvino, cpu, fp32);")

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C++ compiler")
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **k: real(m, backend=broken_backend))
    res = evaluate(ckpt, _volumes(1), tmp_path / "ev", overlays=0, progress=False, compile_model=True)
    (member,) = res["members"]
    assert member["engine"] == "torch" and member["compile"].startswith("eager (torch.compile failed: ")
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["members"] == res["members"]
    # an exported member's batches stay on the host whatever device the ensemble runs on (no GPU round trip)
    from smaformer.infer.members import load_predictor
    runner, info = load_predictor(ir)
    m = _Member(runner, info["preprocessing"], vol, inference=None, device=torch.device("cuda"), precision="bf16",
                batch_size=4)
    assert m.device == torch.device("cpu") and m.precision == "fp32"

"""``smaformer export``: parity printed and enforced, verified dynamic dims, metadata inside the file."""
import json

import numpy as np
import onnx
import pytest
import torch

from smaformer.checkpoint import build_checkpoint, default_preprocessing, load_checkpoint, save_checkpoint
from smaformer.cli import main
from smaformer.export import ExportError, ExportResult, export_checkpoint
from smaformer.export.exporters import _verify
from smaformer.models import create_model
from smaformer.models.registry import tiny_kwargs


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("unet", **tiny_kwargs("unet"), num_classes=2, img_size=32)
    pre = default_preprocessing((32, 32), 3, "repeat", {"mode": "window", "lo": -100, "hi": 200})
    return save_checkpoint(build_checkpoint(model, ["bg", "fg"], pre), tmp_path_factory.mktemp("ck") / "u.pt")


def test_onnx_cli_prints_parity_and_embeds_metadata(ckpt, tmp_path, capsys):
    out = tmp_path / "u.onnx"
    assert main(["export", "--format", "onnx", "-c", str(ckpt), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "max |eager - export|" in text and "parity OK" in text and "batch: dynamic" in text
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["smaformer"])
    assert meta["classes"] == ["bg", "fg"] and meta["preprocessing"]["intensity"]["hi"] == 200
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1] == 3  # unet declares dynamic_hw: all three verified dynamic
    assert all(isinstance(d, str) for d in (dims[2], dims[3]))


def test_torchscript_keeps_metadata(ckpt, tmp_path):
    res = export_checkpoint(ckpt, tmp_path / "u.ts", "torchscript")
    assert res.max_diff <= 1e-3
    extra = {"smaformer.json": ""}
    loaded = torch.jit.load(str(tmp_path / "u.ts"), _extra_files=extra)
    assert json.loads(extra["smaformer.json"])["model"]["name"] == "unet"
    x = torch.rand(3, 3, 32, 32)
    model, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-4)


def test_safetensors_pair_round_trip(ckpt, tmp_path, capsys):
    assert main(["export", "--format", "safetensors", "-c", str(ckpt), "-o", str(tmp_path / "u.safetensors")]) == 0
    assert "parity OK" in capsys.readouterr().out
    side = json.loads((tmp_path / "u.json").read_text(encoding="utf-8"))
    assert side["model"]["name"] == "unet" and side["classes"] == ["bg", "fg"] and len(side["weights_sha256"]) == 64
    a, info_a = load_checkpoint(ckpt)
    b, info_b = load_checkpoint(tmp_path / "u.safetensors")
    assert info_b["preprocessing"] == info_a["preprocessing"]
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_mismatch_above_tolerance_fails(tmp_path):
    model = torch.nn.Conv2d(3, 2, 1).eval()
    x = torch.rand(2, 3, 8, 8)
    off = lambda t: (model(t) + 0.01).detach().numpy()  # noqa: E731 - an export that is 1e-2 off
    with pytest.raises(ExportError, match="max abs difference 0.01 > 0.001"):
        _verify(ExportResult(tmp_path / "m.onnx", "onnx"), off, model, x, dynamic_hw=False)
    exact = lambda t: model(t).detach().numpy() if t.shape[0] == 2 else np.zeros(1)  # noqa: E731 - fixed batch
    res = ExportResult(tmp_path / "m.onnx", "onnx")
    _verify(res, exact, model, x, dynamic_hw=False)
    assert res.dims["batch"] == 2 and "dynamic_hw=False" in res.notes[0]


def test_failed_export_keeps_the_existing_file(ckpt, tmp_path, monkeypatch):
    import smaformer.export.exporters as ex

    out = tmp_path / "u.onnx"
    out.write_bytes(b"previous export")

    def broken(result, *a, **k):
        raise ExportError("parity broken")

    monkeypatch.setattr(ex, "_verify", broken)
    with pytest.raises(ExportError, match="ONNX export failed"):
        export_checkpoint(ckpt, out, "onnx", onnx_exporters=("torchscript",))
    assert out.read_bytes() == b"previous export" and [p.name for p in tmp_path.iterdir()] == ["u.onnx"]


def test_declared_false_flag_is_refused(tmp_path, monkeypatch):
    model = create_model("swin_unet", **tiny_kwargs("swin_unet"), num_classes=2)
    monkeypatch.setattr(type(model), "export_flags", {**model.export_flags, "torchscript": False})
    pre = default_preprocessing(model.img_size, 3, "repeat", None)
    path = save_checkpoint(build_checkpoint(model, ["bg", "fg"], pre), tmp_path / "s.pt")
    with pytest.raises(ExportError, match="declares torchscript=False"):
        export_checkpoint(path, tmp_path / "s.ts", "torchscript")


def test_metadata_of_older_exports_still_reads():
    from smaformer.export.metadata import ExportMetadata

    old = json.dumps({"model": {"name": "unet"}, "classes": ["bg", "fg"], "preprocessing": {},
                      "input_dims": {"batch": "dynamic", "height": "fixed at 224", "width": "fixed at 224"}})
    meta = ExportMetadata.from_json(old, "m.onnx")
    assert meta.input_dims == {"batch": None, "height": 224, "width": 224} and meta.static_batch is None
    assert meta.fingerprint is None and meta.postprocessing is None


def test_metadata_carries_the_guard_and_the_chosen_post_processing():
    """An exported file predicts like its checkpoint: same domain guard, same post-processing."""
    from smaformer.export.metadata import ExportMetadata

    info = {"model": {"name": "unet"}, "classes": ["bg", "fg"], "preprocessing": {},
            "fingerprint": {"summary": {"intensity": {}}}, "postprocessing": {"per_class": {"1": {"mode": "lcc"}}}}
    meta = ExportMetadata.from_json(ExportMetadata.of(info, {"batch": None}).to_json(), "m.onnx")
    assert meta.info["fingerprint"] == info["fingerprint"] and meta.info["postprocessing"] == info["postprocessing"]


def test_exporter_errors_name_the_cause_not_the_missing_trace():
    from smaformer.export.exporters import _reason

    e = RuntimeError("Failed to convert the graph\nUnsupported op aten::foo\n(Refer to the full stack trace above for "
                     "more information.)")
    assert _reason(e) == "Unsupported op aten::foo"


def test_fp16_onnx_parity_and_metadata(ckpt, tmp_path, capsys):
    import onnxruntime as ort

    out = tmp_path / "h.onnx"
    assert main(["export", "--format", "onnx", "--fp16", "-c", str(ckpt), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "onnx fp16" in text and "labels agree on" in text and "parity OK" in text
    m = onnx.load(str(out))
    assert json.loads({p.key: p.value for p in m.metadata_props}["smaformer"])["classes"] == ["bg", "fg"]
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    model, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        ref = model(x).numpy()
    got = sess.run(None, {"image": x.numpy()})[0]
    assert got.dtype == np.float32 and np.abs(got - ref).max() <= 2e-2 * max(1.0, np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.999


def test_fp16_refuses_a_graph_outside_tolerance(ckpt, tmp_path, monkeypatch):
    import smaformer.export.half as half

    monkeypatch.setattr(half, "FP16_RTOL", 1e-9)
    with pytest.raises(ExportError, match="fp16 parity failed"):
        export_checkpoint(ckpt, tmp_path / "h.onnx", "onnx", ("torchscript",), fp16=True)
    assert not (tmp_path / "h.onnx").exists()

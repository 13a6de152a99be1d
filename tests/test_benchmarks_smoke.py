"""Smoke tests of the benchmark scripts' core functions (tiny sizes), so the scripts do not rot."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from smaformer.models.layers.swin import SwinBlock, SwinStage

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def attention():
    return _load("bench_attention")


def test_reference_shift_mask_equals_ours(attention):
    block = SwinBlock(16, 2, 4, shift=True)
    ours = block.window_mask(12, 16)
    assert torch.equal(attention.ref_shift_mask(12, 16, 4, 2, torch.device("cpu")), ours)


def test_reference_path_matches_swin_stage(attention):
    torch.manual_seed(0)
    stage = SwinStage(16, 2, 2, 4).eval()
    for block in stage.blocks:
        torch.nn.init.normal_(block.attn.relative_position_bias_table, std=0.5)
    x = torch.randn(2, 8, 8, 16)
    original = SwinBlock.forward
    with torch.no_grad():
        ref = x
        for block in stage.blocks:
            ref = attention.ref_block(block, ref)
        torch.testing.assert_close(ref, stage(x), atol=1e-5, rtol=1e-5)
        with attention.reference_blocks(cached_mask=True):  # the patched forward is the reference
            patched = stage(x)
        assert torch.equal(patched, ref)
    assert SwinBlock.forward is original  # restored after the context


def test_bench_stage_reports_both_paths(attention):
    r = attention.bench_stage(8, 16, 2, 2, 4, batch=1, repeats=1, cached_mask=False, tol=1e-4)
    assert {"ours_attn", "ref_attn", "ours_stage", "ref_stage", "ours_attn_cpu"} <= set(r)
    assert r["max_abs_diff"] < 1e-4
    layouts = attention.sdpa_layouts(1, 8, 4, 2, 8, repeats=1)
    assert set(layouts) == {"sdpa_5d", "sdpa_4d", "sdpa_4d_heads", "explicit"} and min(layouts.values()) > 0


def test_bench_models_tiny_eager_and_train():
    models = _load("bench_models")
    out = models.worker("swin_unet", "eager", repeats=1, threads=1, tiny=True)
    assert out["latency_b1_ms"] > 0 and out["throughput_b2_img_s"] > 0 and out["peak_rss_mb"] > 0
    out = models.worker("swin_unet", "train", repeats=1, threads=1, tiny=True)
    assert out["train_b4_samples_s"] > 0
    assert "| swin_unet (64x64" in models.row(out)


def test_bench_models_ratios_and_legacy_path():
    models = _load("bench_models")
    model, side = models.build("swin_unet", tiny=True)
    x = torch.randn(2, model.in_chans, side, side)
    with torch.no_grad():
        now = model.eval()(x)
        with models.legacy_swin():
            before = model(x)
    torch.testing.assert_close(now, before, atol=1e-5, rtol=1e-5)
    rows = models.ratios("swin_unet", repeats=1, batches=(1,), tiny=True)
    assert [r["mode"] for r in rows] == ["forward", "train"]
    assert all(r["bf16_over_fp32"] > 0 and r["new_over_legacy_fp32"] > 0 for r in rows)


def test_bench_models_train_curve():
    rows = _load("bench_models").train_curve(1, batch=2, side=64)
    assert rows[0]["step"] == 1 and rows[0]["fp32_loss"] > 0 and rows[0]["bf16_s"] > 0


def test_compare_labels(tmp_path):
    import json

    import nibabel as nib
    import numpy as np

    accuracy = _load("bench_accuracy")
    for name, flip, dice in (("a", 0, 0.5), ("b", 3, 0.6)):
        (tmp_path / name / "predictions").mkdir(parents=True)
        labels = np.zeros((4, 5, 5), np.uint8)
        labels[1:3] = 1
        labels.reshape(-1)[:flip] = 2
        nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / name / "predictions" / "case1.nii.gz")
        (tmp_path / name / "metrics.json").write_text(json.dumps(
            {"foreground_mean": {"standard": {"dice": dice}}}), encoding="utf-8")
    r = accuracy.compare_labels(tmp_path / "a", tmp_path / "b")
    assert (r["differing_voxels"], r["foreground_voxels"]) == (3, 50)
    assert r["dice_change_points"] == pytest.approx(10.0)


@pytest.mark.slow
def test_bench_models_onnx_phase_uses_the_shipped_exporter():
    models = _load("bench_models")
    out = models.worker("swin_unet", "onnx", repeats=1, threads=1, tiny=True)
    assert out["max_abs_diff_vs_eager"] < 1e-3 and out["export"].split(";")[0].endswith("exporter")


def test_accuracy_runs_resolve_to_valid_configs():
    from smaformer.config import load_config

    accuracy = _load("bench_accuracy")
    for name, (preset, _, _, budgets) in accuracy.RUNS.items():
        for budget, overrides in budgets.items():
            cfg = load_config(preset, overrides)
            assert cfg["model"]["name"] in ("swin_unet", "smaformer", "medt", "unet"), (name, budget)


def test_bench_resize_swaps_only_the_input_resize_for_the_training_operator():
    import numpy as np
    import torch.nn.functional as F

    import smaformer.infer.volume as volume
    from smaformer.data.transforms import resize_pair

    resize = _load("bench_resize")
    img = np.random.default_rng(0).random((1, 20, 14)).astype(np.float32)
    want = resize_pair(img, None, (16, 12))[0]
    assert np.allclose(resize.training_zoom(torch.from_numpy(img)[None], (16, 12))[0].numpy(), want, atol=1e-5)
    with resize.input_resize("training"):
        x = torch.from_numpy(img)[None]
        assert np.allclose(volume.F.interpolate(x, size=(16, 12), mode="bicubic")[0].numpy(), want, atol=1e-5)
        assert torch.equal(volume.F.interpolate(x, size=(16, 12), mode="bilinear", align_corners=False),
                           F.interpolate(x, size=(16, 12), mode="bilinear", align_corners=False))
    assert volume.F is F
    diff = resize.input_difference([img[0]], (16, 12))
    assert diff["slices"] == 1 and 0 < diff["mean_abs_inner"] < diff["max_abs_border"]


def test_deploy_interleaved_speed_and_memory():
    deploy = _load("bench_deploy")
    info = {"preprocessing": {"in_chans": 1, "img_size": [8, 8]}}
    runs = {"a": (lambda x: x * 2, info), "b": (lambda x: x + 1, info)}
    speed = deploy.interleaved(runs, (1, 8), rounds=2, calls=1)
    assert set(speed) == {"a|b1", "a|b8", "b|b1", "b|b8"} and all(v > 0 for v in speed.values())
    assert deploy.vm_hwm_kib() > 0 and isinstance(deploy.cpu_flags(), str)


def test_dicom_seg_demo_writes_a_series_and_draws_its_seg(tmp_path):
    import numpy as np
    from tiny_models import tiny_unet_checkpoint

    from smaformer.infer.predict import predict

    demo = _load("dicom_seg_demo")
    volume = np.random.default_rng(0).random((3, 24, 20)).astype(np.float32)
    files = demo.write_mr_series(volume, tmp_path / "series")
    ckpt = tiny_unet_checkpoint(tmp_path / "m.pt", ["background", "RV", "Myo", "LV"])
    res = predict(tmp_path / "series", tmp_path / "seg.dcm", ckpt, device="cpu", output_type="dicom-seg",
                  progress=False, log=lambda _: None)
    assert res[0].error is None
    names = demo.render(files, tmp_path / "seg.dcm", tmp_path / "seg.png", slices=2)
    assert names and set(names) <= {"RV", "Myo", "LV"} and (tmp_path / "seg.png").stat().st_size > 1000


def test_accuracy_chain_pretrains_then_distils_in_one_command(tmp_path, monkeypatch):
    """bench_accuracy's chain (issue 29): the teacher run is trained first when its weights are missing, the
    SimMIM step runs with the student's own settings, and the student starts from its encoder with the teacher."""
    accuracy = _load("bench_accuracy")
    calls = []

    def fake_timed(cmd, env, log):
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1]) if "--out" in cmd else Path(cmd[cmd.index("-o") + 1])
        out.mkdir(parents=True, exist_ok=True)
        for name in ("pretrain_log.csv", "latest.pt", "config.yaml", "train_log.csv", "metrics.json"):
            (out / name).write_text("x")
        return {"command": " ".join(cmd), "wall_s": 1.0}

    monkeypatch.setattr(accuracy, "timed", fake_timed)
    monkeypatch.setattr(accuracy, "machine", lambda: "test CPU")
    docs = accuracy.run("acdc_swin_unet_scratch", "cpu-reduced", tmp_path / "runs", tmp_path / "docs", "cpu", 1,
                        teacher="acdc_unet16", pretrain_iterations=7, extra=("distill.hard=1",), suffix="all")
    verbs = [c[3] for c in calls]
    assert verbs == ["train", "evaluate", "pretrain", "train", "evaluate"]       # teacher, then the chain
    pre, student = calls[2], calls[3]
    assert "train.max_iterations=7" in pre and "distill.hard=1" in pre
    teacher = str(tmp_path / "runs" / "acdc_unet16-cpu-reduced" / "train" / "latest.pt")
    assert student[student.index("--teacher") + 1] == teacher
    encoder = tmp_path / "runs" / "acdc_swin_unet_scratch-cpu-reduced-all" / "pretrain" / "latest.pt"
    assert f"model.pretrained={encoder}" in student
    record = json.loads((docs / "run.json").read_text())
    assert docs.name == "acdc_swin_unet_scratch-cpu-reduced-all" and record["teacher"]["checkpoint"] == teacher
    assert record["pretrain"]["wall_s"] == 1.0 and (docs / "pretrain_log.csv").exists()


def test_pacs_viewer_serves_the_viewer_with_our_config_and_nothing_outside_it(tmp_path):
    """The viewer screenshot's server (docs/INFERENCE.md "PACS"): our app-config.js in place of the package's,
    index.html for the single-page app's routes, and no file outside the viewer's folder."""
    import requests

    viewer = _load("pacs_viewer")
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<html>ohif</html>")
    (dist / "app-config.js").write_text("window.config = {theirs: 1};")
    (dist / "x.wasm").write_bytes(b"\0asm")
    (tmp_path / "secret.txt").write_text("outside")
    server = viewer.serve(dist, "http://127.0.0.1:9", ("u", "p"), "window.config = {ours: 1};")
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert requests.get(f"{base}/app-config.js", timeout=10).text == "window.config = {ours: 1};"
        assert requests.get(f"{base}/viewer?StudyInstanceUIDs=1.2", timeout=10).text == "<html>ohif</html>"
        assert requests.get(f"{base}/x.wasm", timeout=10).headers["Content-Type"] == "application/wasm"
        assert requests.get(f"{base}/../secret.txt", timeout=10).text == "<html>ohif</html>"
        assert requests.get(f"{base}/%2e%2e/secret.txt", timeout=10).text == "<html>ohif</html>"
    finally:
        server.shutdown()
        server.server_close()
    assert (dist / "app-config.js").read_text() == "window.config = {theirs: 1};"     # the viewer is only read

"""Smoke tests of the benchmark scripts' core functions (tiny sizes), so the scripts do not rot."""
from __future__ import annotations

import importlib.util
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
    assert set(layouts) == {"sdpa_5d", "sdpa_4d", "explicit"} and min(layouts.values()) > 0


def test_bench_models_tiny_eager_and_train():
    models = _load("bench_models")
    out = models.worker("swin_unet", "eager", repeats=1, threads=1, tiny=True)
    assert out["latency_b1_ms"] > 0 and out["throughput_b2_img_s"] > 0 and out["peak_rss_mb"] > 0
    out = models.worker("swin_unet", "train", repeats=1, threads=1, tiny=True)
    assert out["train_b4_samples_s"] > 0
    assert "| swin_unet (64x64" in models.row(out)


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

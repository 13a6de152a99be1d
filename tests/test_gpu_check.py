"""The GPU script's CPU side: the ACDC packer's round trip, and ``gpu_check.py --dry-run`` end to end."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
ACDC = Path(os.environ.get("SMAFORMER_SHARED", REPO.parent / "shared")) / "data" / "acdc"


@pytest.fixture(scope="module")
def pack_acdc():
    spec = importlib.util.spec_from_file_location("pack_acdc", BENCH / "pack_acdc.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pack_acdc"] = module
    spec.loader.exec_module(module)
    return module


def test_pack_round_trip_on_fake_h5(tmp_path, pack_acdc):
    root = pack_acdc.write_fake(tmp_path / "src", n_patients=2)
    with h5py.File(root / "slices" / "patient001_frame01_slice_0.h5", "r+") as h:   # values off the uint8 grid
        h["image"][...] = np.random.default_rng(1).random(h["image"].shape, dtype=np.float32)
    info = pack_acdc.pack(root, tmp_path / "p.npz")
    assert (info["n_slices"], info["n_volumes"]) == (8, 2) and info["bytes"] == (tmp_path / "p.npz").stat().st_size
    out = pack_acdc.unpack(tmp_path / "p.npz", tmp_path / "dst")
    assert out["n_volume_slices"] == 6
    check = pack_acdc.compare(root, tmp_path / "dst")
    assert check["ok"] and check["n_files"] == 10 and 0 < check["max_abs_image_error"] <= 0.5 / 255 + 1e-6
    assert (tmp_path / "dst" / "val.list").read_text() == (root / "val.list").read_text()
    with h5py.File(tmp_path / "dst" / "volumes" / "patient101_frame01.h5", "r") as h:
        assert h["image"].dtype == np.float32 and h["label"].dtype == np.uint8 and h["image"].shape == (3, 40, 48)
        h.close()
    with h5py.File(tmp_path / "dst" / "volumes" / "patient101_frame01.h5", "r+") as h:   # the check must see it
        h["label"][0, 0, 0] = 1 - h["label"][0, 0, 0]
    bad = pack_acdc.compare(root, tmp_path / "dst")
    assert not bad["ok"] and not bad["labels_identical"]


def test_pack_and_check_on_real_files(tmp_path, pack_acdc):
    if not (ACDC / "train_slices.list").is_file():
        pytest.skip(f"real ACDC data not found at {ACDC}")
    record = pack_acdc.pack_and_check(ACDC, tmp_path / "real.npz", limit=(6, 1), with_site=False)
    assert record["check"]["ok"] and record["check"]["n_files"] == 7 and record["under_64_mib"]
    assert record["check"]["names_equal"] and record["check"]["labels_identical"]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_the_record(tmp_path):
    out = tmp_path / "out"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rec = json.loads((out / "gpu_check.json").read_text())
    assert rec["dry_run"] and rec["errors"] == [] and rec["environment"]["torch"]
    inference, training = rec["inference"]["rows"], rec["training"]["rows"]
    assert len(inference) == 12 and {r["precision"] for r in inference} == {"bf16", "fp32"}
    assert len(training) == 6 and all(r["slices_s"] > 0 for r in inference + training)
    runs = rec["acdc"]["runs"]
    assert [r["run"] for r in runs] == ["acdc_swin_unet", "acdc_smaformer"]
    for r in runs:
        assert r["iterations"] == 3 and r["stopped"] == "finished" and "train.max_iterations=3" in r["overrides"]
        assert 0 <= r["scores"]["dice_mean_standard"] <= 1 and r["scores"]["n_cases"] == 3
    assert rec["acdc"]["data"]["fake"] and rec["wall_s"] <= wall
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["gpu_check.json", "gpu_check.log", "acdc_swin_unet_train_log.csv",
                            "acdc_smaformer_train_log.csv", "acdc_swin_unet_metrics.json",
                            "acdc_smaformer_metrics.json"])
    assert "acdc acdc_smaformer: mean Dice" in (out / "gpu_check.log").read_text()


def test_gpu_check_deadline_skips_and_says_why(tmp_path):
    """Too little time for anything: every measurement is skipped with its reason, the JSON still written."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--dry-run", "--deadline", "1",
                           "--models", "swin_unet", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads((out / "gpu_check.json").read_text())
    whys = {s["what"]: s["why"] for s in rec["skipped"]}
    assert whys["speed swin_unet"].startswith("deadline") and rec["inference"]["rows"] == []
    assert "no measured training throughput" in whys["acdc acdc_swin_unet"]
    assert rec["summary"]["goals"].startswith("dry run")


def test_acdc_estimate_counts_slices_saves_and_validation():
    sys.path.insert(0, str(BENCH))
    import gpu_acdc

    data = {"n_slices": 1312, "n_volumes": 20, "n_volume_slices": 200}
    row = {"slices_s": 1000.0 / gpu_acdc.EFFICIENCY, "checkpoint_save_s": 0.5}   # 1,000 /s in the loop
    plan = gpu_acdc.estimate({"train": {"epochs": 150}}, data, row, infer_slices_s=2000.0, batch=24, val_every=0)
    assert plan["steps_per_epoch"] == 54 and plan["estimated_epoch_s"] == round(1.296 + 0.5, 2)
    assert plan["estimated_recipe_s"] == round(150 * 1.796, 1)
    with_val = gpu_acdc.estimate({"train": {"epochs": 150}}, data, row, 2000.0, 24, val_every=5)
    assert with_val["estimated_epoch_s"] == round(1.796 + (0.1 + 1.0) / 5, 2)

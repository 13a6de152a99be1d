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
def test_gpu_check_dry_run_trains_both_runs_side_by_side(tmp_path):
    """The dry run: the pair probe, both ACDC runs overlapping in time and both scored, then the speed table
    (here for the two ACDC models only, to keep the test short)."""
    out = tmp_path / "out"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--dry-run", "--out", str(out),
                           "--models", "swin_unet", "smaformer_native"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rec = json.loads((out / "gpu_check.json").read_text())
    assert rec["dry_run"] and rec["errors"] == [] and rec["skipped"] == [] and rec["environment"]["torch"]
    assert rec["syncs"]["steps"] == 5 and rec["syncs"]["ok"]
    pair = rec["pair"]["runs"]
    assert sorted(pair) == ["acdc_smaformer", "acdc_swin_unet"] and rec["pair"]["concurrency"] > 0
    assert all(r["alone_slices_s"] > 0 and r["together_slices_s"] > 0 for r in pair.values())
    runs = rec["acdc"]["runs"]
    assert [r["run"] for r in runs] == ["acdc_swin_unet", "acdc_smaformer"]
    assert sorted(rec["acdc"]["loader_slices_per_cpu_s"]) == ["acdc_smaformer", "acdc_swin_unet"]
    for r in runs:
        # measured on a shared CPU: both positive, their order not asserted (noise can invert it)
        assert r["loader_slices_s"] > 0 and r["epoch_s_alone"] > 0 and r["epoch_s_together"] > 0
        assert r["iterations"] == 3 and r["stopped"] == "finished" and "train.max_iterations=3" in r["overrides"]
        assert 0 <= r["scores"]["dice_mean_standard"] <= 1 and r["scores"]["n_cases"] == 3
        assert set(r["scores"]["dice_per_class_standard"]) == set(r["scores"]["hd95_per_class_standard"]) \
            == {"RV", "Myo", "LV"}
        assert r["train"]["started_s"] < r["train"]["ended_s"] <= r["evaluate"]["started_s"] < r["evaluate"]["ended_s"]
    a, b = (r["train"] for r in runs)
    assert max(a["started_s"], b["started_s"]) < min(a["ended_s"], b["ended_s"])       # side by side
    last_acdc = max(r["evaluate"]["ended_s"] for r in runs)
    log = (out / "gpu_check.log").read_text()
    assert log.index("acdc acdc_smaformer: mean Dice") < log.index("inference swin_unet")    # the answer first
    assert len(rec["inference"]["rows"]) == 4 and len(rec["training"]["rows"]) == 2 and last_acdc < rec["wall_s"]
    assert rec["acdc"]["data"]["fake"] and rec["wall_s"] <= wall
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["gpu_check.json", "gpu_check.log", "acdc_swin_unet_train_log.csv",
                            "acdc_smaformer_train_log.csv", "acdc_swin_unet_metrics.json",
                            "acdc_smaformer_metrics.json"])


def test_gpu_check_deadline_skips_and_says_why(tmp_path):
    """Too little time for anything: every measurement is skipped with its reason, the JSON still written."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--dry-run", "--deadline", "1",
                           "--models", "swin_unet", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads((out / "gpu_check.json").read_text())
    whys = {s["what"]: s["why"] for s in rec["skipped"]}
    assert whys["pair"].startswith("deadline") and whys["speed swin_unet"].startswith("deadline")
    assert "no measured training throughput" in whys["acdc acdc_swin_unet"]
    assert rec["inference"]["rows"] == [] and rec["summary"]["goals"].startswith("dry run")


@pytest.fixture
def gpu_acdc():
    sys.path.insert(0, str(BENCH))
    import gpu_acdc

    return gpu_acdc


def test_plan_counts_slices_and_saves_every_epoch_unless_by_time(gpu_acdc):
    data = {"n_slices": 1312, "n_volumes": 20, "n_volume_slices": 200}
    row = {"alone_slices_s": 2000.0 / gpu_acdc.EFFICIENCY, "together_slices_s": 1000.0 / gpu_acdc.EFFICIENCY,
           "checkpoint_save_s": 0.5}       # 2,000 and 1,000 slices/s in the loop
    plan = gpu_acdc.plan_run({"train": {"epochs": 150}}, data, row, batch=24)
    assert plan["steps_per_epoch"] == 54 and plan["checkpoint_every_epoch"]
    assert (plan["epoch_s_together"], plan["epoch_s_alone"]) == (1.796, 1.148)
    by_time = gpu_acdc.plan_run({"train": {"epochs": 150, "save_every_s": 300}}, data, row, batch=24)
    assert (by_time["epoch_s_together"], by_time["epoch_s_alone"]) == (1.296, 0.648)
    loader_bound = gpu_acdc.plan_run({"train": {"epochs": 150, "save_every_s": 300}}, data, row, 24, 1296.0)
    assert (loader_bound["epoch_s_together"], loader_bound["epoch_s_alone"]) == (1.296, 1.0)


def test_fit_epochs_side_by_side_then_alone(gpu_acdc):
    def plan(together, alone, recipe=150):
        return {"epochs_recipe": recipe, "epoch_s_together": together, "epoch_s_alone": alone}

    assert gpu_acdc.fit_epochs(1000.0, {"a": plan(2.0, 1.0), "b": plan(3.0, 1.5)}) == {"a": 150, "b": 150}
    # neither ends: both side by side all along
    assert gpu_acdc.fit_epochs(240.0, {"a": plan(2.0, 1.0), "b": plan(3.0, 1.5)}) == {"a": 120, "b": 80}
    # a ends at 300 s (its 150 epochs); b did 100 epochs by then and 50 / 1.5 = 33 more alone
    assert gpu_acdc.fit_epochs(350.0, {"a": plan(2.0, 1.0), "b": plan(3.0, 1.5)}) == {"a": 150, "b": 133}
    assert gpu_acdc.fit_epochs(350.0, {"a": plan(2.0, 1.0), "b": plan(3.0, 1.5, recipe=120)}) == {"a": 150, "b": 120}
    assert gpu_acdc.fit_epochs(50.0, {"a": plan(2.0, 1.0)}) == {"a": 50}
    assert gpu_acdc.fit_epochs(0.5, {"a": plan(2.0, 1.0), "b": plan(3.0, 1.5)}) == {"a": 0, "b": 0}

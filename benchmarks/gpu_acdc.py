"""Section 4 of ``gpu_check.py``: the ACDC recipes of Swin-Unet and SMAFormer from scratch, as far as the
time left allows, then ``smaformer evaluate`` on the 20 validation volumes.

The plan is made before any training, from the bare training throughput that section 2 measured:

    epoch_s = (slices per epoch) / (slices/s x EFFICIENCY) + (checkpoint save, timed in section 2)
              [+ validation / val_every, when --val-every is set]

Both runs get the same fraction of their 150 epochs when the whole recipe does not fit (the schedule is
set for the epochs actually run, so poly/cosine still end at their floor). Before each run the epochs are
re-fitted to the time really left, with the first run's observed/estimated epoch time as a correction,
and ``train.time_limit_s`` stops a run that is still slower than planned (it saves latest.pt first).
``latest.pt`` (the final weights) is evaluated, so no model selection touches the evaluated volumes.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pack_acdc

REPO = Path(__file__).resolve().parents[1]
RUNS = {"acdc_swin_unet": "swin_unet", "acdc_smaformer": "smaformer_native"}   # preset -> spec timed in speed
EFFICIENCY = 0.75   # the real loop (loading, augmentation, Dice loss, logging) against the bare timed step
STARTUP_S = 35.0    # smaformer train: imports, 1,312 h5 reads, model build, CUDA init, workers, final validation
EVAL_S = 20.0       # smaformer evaluate: start-up and 20 volumes
FINAL_S = 10.0      # kept for writing the JSON at the end
REFERENCE = "published Swin-Unet 90.00 mean DSC on ACDC (ImageNet-initialised, test split); runs here start " \
            "from scratch and are scored on the val split"


def run_logged(cmd: list[str], log: Path, timeout: float, env: dict) -> dict:
    """Run ``cmd`` with its output in ``log``; SIGTERM at ``timeout`` (the trainer then saves latest.pt)."""
    t0 = time.perf_counter()
    with log.open("w", encoding="utf-8") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        try:
            rc, killed = proc.wait(timeout=max(timeout, 1.0)), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                rc = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
            killed = True
    return {"command": shlex.join(cmd), "rc": rc, "wall_s": round(time.perf_counter() - t0, 1),
            "killed_at_timeout": killed}


def estimate(cfg: dict, data: dict, train_row: dict, infer_slices_s: float | None, batch: int,
             val_every: int) -> dict:
    """Seconds per epoch and for the whole recipe, from the measured training throughput."""
    steps = data["n_slices"] // batch
    epoch_s = steps * batch / (train_row["slices_s"] * EFFICIENCY) + train_row.get("checkpoint_save_s", 0.0)
    if val_every and infer_slices_s:
        epoch_s += (data["n_volume_slices"] / infer_slices_s + 0.05 * data["n_volumes"]) / val_every
    epochs = int(cfg["train"]["epochs"])
    return {"epochs_recipe": epochs, "batch": batch, "steps_per_epoch": steps,
            "measured_slices_s": train_row["slices_s"],
            "checkpoint_save_s": train_row.get("checkpoint_save_s"), "estimated_epoch_s": round(epoch_s, 2),
            "estimated_recipe_s": round(epochs * epoch_s, 1)}


def train_log(run_dir: Path) -> list[dict]:
    path = run_dir / "train_log.csv"
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def scores(metrics: Path) -> dict:
    """Mean Dice/HD95 over RV, Myo, LV (both conventions) and per class, from evaluate's metrics.json."""
    m = json.loads(metrics.read_text(encoding="utf-8"))
    fg = m["foreground_mean"]
    return {"n_cases": m["data"]["n_cases"], "n_failed": m["data"]["n_failed"],
            "dice_mean_standard": fg["standard"]["dice"], "hd95_mean_standard": fg["standard"]["hd95"],
            "dice_mean_legacy": fg["legacy"]["dice"], "hd95_mean_legacy": fg["legacy"]["hd95"],
            "dice_per_class_standard": {name: m["mean"][k]["standard"]["dice"] for k, name in m["classes"].items()},
            "postprocessing": m["config"].get("postprocessing_applied", m["config"].get("postprocess")),
            "units": "HD95 in voxels (the h5 files store no spacing)"}


def _env(site: Path | None) -> dict:
    paths = [str(REPO)] + ([str(site)] if site else []) + [p for p in [os.environ.get("PYTHONPATH")] if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def _prepare_data(rep, opts, tmp: Path) -> dict | None:
    data = opts.data
    if data is None and opts.dry_run:
        data = tmp / "fake_u8.npz"
        pack_acdc.pack(pack_acdc.write_fake(tmp / "fake"), data)
    data = Path(data or REPO / "pack" / "acdc_u8.npz")
    if not data.is_file():
        rep.skip("acdc", f"no data pack at {data}: run `python benchmarks/pack_acdc.py` where ../shared/data/acdc "
                         "is, and carry pack/")
        return None
    t0 = time.perf_counter()
    info = pack_acdc.unpack(data, tmp / "acdc")
    info.update(pack=str(data), pack_mib=round(data.stat().st_size / 2**20, 1), fake=opts.data is None,
                unpack_s=round(time.perf_counter() - t0, 1))
    rep.log(f"acdc: unpacked {info['n_slices']} slices + {info['n_volumes']} volumes in {info['unpack_s']} s")
    return info


def _overrides(opts, root: str, epochs: int, time_limit: float) -> list[str]:
    sets = [f"data.root={root}", f"train.epochs={epochs}", f"train.time_limit_s={time_limit:.0f}",
            f"train.val_every={opts.val_every}", "train.tensorboard=false", "train.save_every_iters=0",
            f"data.num_workers={0 if opts.dry_run else opts.workers}", f"train.device={opts.device}"]
    return sets


def _dry_overrides(preset: str) -> list[str]:
    from smaformer.config import load_config
    from smaformer.models.registry import tiny_kwargs

    kwargs = tiny_kwargs(load_config(preset, [])["model"]["name"])
    return [f"model.kwargs={json.dumps(kwargs)}", "data.img_size=64", "train.batch_size=2", "train.max_iterations=3"]


def acdc(rep, opts, site: Path | None) -> None:
    """Plan, train and evaluate the ACDC runs; everything goes into ``rep.data['acdc']``."""
    from smaformer.config import load_config

    sec = rep.data["acdc"] = {"efficiency": EFFICIENCY, "startup_s": STARTUP_S, "evaluate_s": EVAL_S,
                              "val_every": opts.val_every, "evaluated": "latest.pt (final weights)",
                              "reference": REFERENCE, "runs": []}
    if opts.dry_run:
        sec["note"] = ("dry run: tiny models at 64x64, batch 2, train.max_iterations=3, CPU; epochs and time limits "
                       "are planned as for a real run, then capped by max_iterations")
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        data = _prepare_data(rep, opts, tmp)
        if data is None:
            return
        sec["data"] = data
        rows = rep.data.get("training", {}).get("rows", [])
        trained = {r["model"]: r for r in rows if "slices_s" in r}
        infer = {r["model"]: r["slices_s"] for r in rep.data.get("inference", {}).get("rows", [])
                 if r.get("precision") == "bf16" and "slices_s" in r}
        plans = {}
        for preset in opts.runs or list(RUNS):
            spec = RUNS[preset]
            if spec not in trained:
                rep.skip(f"acdc {preset}", f"no measured training throughput for {spec} (section speed)")
                continue
            batch = opts.train_batch if opts.dry_run else int(load_config(preset, [])["train"]["batch_size"])
            plans[preset] = estimate(load_config(preset, []), data, trained[spec], infer.get(spec), batch,
                                     opts.val_every)
        if not plans:
            return
        available = rep.left() - FINAL_S - len(plans) * (STARTUP_S + EVAL_S)
        need = sum(p["estimated_recipe_s"] for p in plans.values())
        fraction = max(0.0, min(1.0, available / need)) if need > 0 else 1.0
        for p in plans.values():
            p["epochs_planned"] = min(p["epochs_recipe"], math.floor(p["epochs_recipe"] * fraction))
        sec["plan"] = {"seconds_for_training": round(available, 1), "seconds_needed_for_recipes": round(need, 1),
                       "fraction_of_recipe": round(fraction, 3)}
        rep.log(f"acdc plan: {need:.0f} s needed for the full recipes, {available:.0f} s available -> "
                + ", ".join(f"{k} {p['epochs_planned']}/{p['epochs_recipe']} epochs" for k, p in plans.items()))
        rep.save()
        correction, names = 1.0, list(plans)
        for i, preset in enumerate(names):
            with rep.guard(f"acdc {preset}"):
                correction = one_run(rep, opts, site, preset, plans, names[i + 1:], correction, data, tmp)
            rep.save()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def one_run(rep, opts, site, preset: str, plans: dict, later: list[str], correction: float, data: dict,
            tmp: Path) -> float:
    """Re-fit, train, evaluate one preset; returns the correction for the runs after it."""
    p = plans[preset]
    epoch_s = p["estimated_epoch_s"] * correction
    reserved = sum(STARTUP_S + EVAL_S + plans[q]["epochs_planned"] * plans[q]["estimated_epoch_s"] * correction
                   for q in later)
    own = rep.left() - FINAL_S - reserved - EVAL_S
    epochs = min(p["epochs_recipe"], math.floor((own - STARTUP_S) / epoch_s)) if epoch_s > 0 else 0
    rec = {"run": preset, "model": RUNS[preset], **p, "epochs_run_planned": epochs, "correction": round(correction, 3)}
    rep.data["acdc"]["runs"].append(rec)
    if epochs < 1:
        rec["skipped"] = (f"does not fit: one epoch needs ~{epoch_s:.0f} s + {STARTUP_S:.0f} s start-up, "
                          f"{own:.0f} s left for it")
        rep.skip(f"acdc {preset}", rec["skipped"])
        return correction
    rec["reduced"] = epochs < p["epochs_recipe"]
    if rec["reduced"]:
        rec["why_reduced"] = (f"the full recipe ({p['epochs_recipe']} epochs) needs ~{p['estimated_recipe_s']:.0f} s "
                              f"x {correction:.2f} at {p['measured_slices_s']} slices/s bare (x{EFFICIENCY} in the "
                              f"loop); {own:.0f} s were left for this run")
    time_limit = max(5.0, own - STARTUP_S - (p["checkpoint_save_s"] or 0.0) - 5.0)
    run_dir, env = tmp / preset, _env(site)
    sets = _overrides(opts, data["root"], epochs, time_limit) + (_dry_overrides(preset) if opts.dry_run else [])
    rec["overrides"], rec["time_limit_s"] = sets, round(time_limit)
    cmd = [sys.executable, "-m", "smaformer", "train", "--config", preset, "--out", str(run_dir), "--no-progress"]
    cmd += [a for s in sets for a in ("--set", s)]
    rep.log(f"acdc {preset}: training {epochs}/{p['epochs_recipe']} epochs, time limit {time_limit:.0f} s")
    rec["train"] = run_logged(cmd, tmp / f"{preset}_train.log", own, env)
    rep.append_log(tmp / f"{preset}_train.log", f"{preset} train")
    log_text = (tmp / f"{preset}_train.log").read_text(encoding="utf-8", errors="replace")
    history = train_log(run_dir)
    rec["epochs_done"] = len(history)
    rec["iterations"] = int(history[-1]["iterations"]) if history else 0
    rec["train_loss_last"] = float(history[-1]["train_loss"]) if history else None
    rec["stopped"] = ("time_limit" if "time limit of" in log_text else "killed at the timeout"
                      if rec["train"]["killed_at_timeout"] else "finished" if rec["train"]["rc"] == 0
                      else f"failed (rc {rec['train']['rc']})")
    if history:
        observed = max(rec["train"]["wall_s"] - STARTUP_S, 1.0) / len(history)
        rec["observed_epoch_s"] = round(observed, 2)
        correction = min(3.0, max(0.5, observed / p["estimated_epoch_s"]))
        shutil.copyfile(run_dir / "train_log.csv", rep.out / f"{preset}_train_log.csv")
    rep.log(f"acdc {preset}: {rec['stopped']} after {rec['epochs_done']} epochs, {rec['iterations']} iterations, "
            f"{rec['train']['wall_s']} s")
    if not (run_dir / "latest.pt").is_file():    # a run stopped at the timeout still has its last epoch's weights
        raise RuntimeError(f"training {preset} left no latest.pt (rc {rec['train']['rc']}); see the log")
    device = "cpu" if opts.dry_run else opts.device
    cmd = [sys.executable, "-m", "smaformer", "evaluate", "-c", str(run_dir / "latest.pt"), "-d", data["root"],
           "-o", str(tmp / f"{preset}_eval"), "--split", "val", "--overlays", "0", "--no-progress", "--device", device,
           "--postprocess", "none"]   # training chose it on these val volumes: not scored with it
    rec["evaluate"] = run_logged(cmd, tmp / f"{preset}_eval.log", max(10.0, rep.left() - FINAL_S), env)
    rep.append_log(tmp / f"{preset}_eval.log", f"{preset} evaluate")
    metrics = tmp / f"{preset}_eval" / "metrics.json"
    if rec["evaluate"]["rc"] != 0 or not metrics.is_file():
        raise RuntimeError(f"evaluate {preset} failed (rc {rec['evaluate']['rc']}); see the log")
    rec["scores"] = scores(metrics)
    shutil.copyfile(metrics, rep.out / f"{preset}_metrics.json")
    rep.log(f"acdc {preset}: mean Dice {rec['scores']['dice_mean_standard']:.4f} (standard), "
            f"{rec['scores']['dice_mean_legacy']:.4f} (legacy) on {rec['scores']['n_cases']} volumes")
    return correction

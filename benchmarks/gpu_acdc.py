"""The ACDC section of ``gpu_check.py``: the recipes of Swin-Unet and SMAFormer from scratch, trained **at
the same time on the one GPU** (two ``smaformer train`` processes, each with its own loader workers), then
``smaformer evaluate`` of each run's ``latest.pt`` on the 20 validation volumes (per-class Dice and HD95).

The epochs are fitted before any training, from ``gpu_pair.py``'s rates: each model's bare training step
alone and side by side. Both runs start together. While both train, each goes at its side-by-side rate;
once one has ended, the other goes at its alone rate:

    epoch_s = slices per epoch / min(slices/s x EFFICIENCY, loader) + per-epoch checkpoint save
              (none when the trainer saves by time, ``train.save_every_s``)
    loader  = the preset's own augmented training slices per CPU-second (timed here, in this process, on
              its cached second pass) x its loader workers x LOADER_EFFICIENCY

(Validation during training, ``--val-every N``, is not in the fit: by default only the final weights are
evaluated, once, after training.)

Each run gets the most epochs (up to the recipe's 150) that fit in SAFETY x the time left after start-up,
evaluation and the final margin. ``train.epochs`` is set to them, so poly/cosine anneal to their floor:
the schedules are fitted, not cut. ``train.time_limit_s`` is only a guard at the deadline (the JSON says
when it fired). ``latest.pt`` (the final weights) is evaluated, so no model selection touches the
evaluated volumes. Every run records ``started_s``/``ended_s`` (from the script's start) for training and
for evaluation, so the record shows the two runs overlapping.
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
import threading
import time
from pathlib import Path

import pack_acdc

REPO = Path(__file__).resolve().parents[1]
RUNS = {"acdc_swin_unet": "swin_unet", "acdc_smaformer": "smaformer_native"}   # preset -> bench_models spec
EFFICIENCY = 0.75   # the real loop (loading, augmentation, Dice loss, logging) against the bare timed step
LOADER_EFFICIENCY = 0.6   # workers share 16 cores with the other run and both main processes; collation
SAFETY = 0.9        # the epochs are fitted to this share of the training window; the rest absorbs misestimates
STARTUP_S = 40.0    # smaformer train, two at once: imports, 1,312 h5 reads, model build, CUDA init, workers,
                    # the final validation and save
EVAL_S = 25.0       # smaformer evaluate: start-up and 20 volumes (the two evaluations may overlap)
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
            "hd95_per_class_standard": {name: m["mean"][k]["standard"]["hd95"] for k, name in m["classes"].items()},
            "inference_s": round(sum(c.get("seconds") or 0.0 for c in m["metric_per_case"]), 2),
            "postprocessing": m["config"].get("postprocessing_applied", m["config"].get("postprocess")),
            "units": "HD95 in voxels (the h5 files store no spacing)"}


def child_env(site: Path | None) -> dict:
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


def _overrides(opts, cfg: dict, root: str, epochs: int, time_limit: float, workers: int) -> list[str]:
    sets = [f"data.root={root}", f"train.epochs={epochs}", f"train.time_limit_s={time_limit:.0f}",
            f"train.val_every={opts.val_every}", "train.tensorboard=false",
            f"data.num_workers={0 if opts.dry_run else workers}", f"train.device={opts.device}"]
    if "save_every_iters" in cfg["train"]:      # no mid-epoch saves: latest.pt at the end (and by time)
        sets.append("train.save_every_iters=0")
    return sets


def _dry_overrides(preset: str) -> list[str]:
    from smaformer.config import load_config
    from smaformer.models.registry import tiny_kwargs

    kwargs = tiny_kwargs(load_config(preset, [])["model"]["name"])
    return [f"model.kwargs={json.dumps(kwargs)}", "data.img_size=64", "train.batch_size=2", "train.max_iterations=3"]




def plan_run(cfg: dict, data: dict, pair_row: dict, batch: int, loader_slices_s: float = math.inf) -> dict:
    """Seconds per epoch side by side and alone, from the pair probe's rates and the loader's (see the module
    docstring)."""
    steps = data["n_slices"] // batch
    by_time = "save_every_s" in cfg["train"]     # the trainer writes latest.pt by time, not every epoch
    extra = 0.0 if by_time else float(pair_row.get("checkpoint_save_s") or 0.0)

    def epoch_s(rate: float) -> float:
        return round(steps * batch / min(rate * EFFICIENCY, loader_slices_s) + extra, 3)

    return {"epochs_recipe": int(cfg["train"]["epochs"]), "batch": batch, "steps_per_epoch": steps,
            "slices_s_alone": pair_row["alone_slices_s"], "slices_s_together": pair_row["together_slices_s"],
            "loader_slices_s": None if math.isinf(loader_slices_s) else round(loader_slices_s, 1),
            "checkpoint_save_s": pair_row.get("checkpoint_save_s"), "checkpoint_every_epoch": not by_time,
            "epoch_s_together": epoch_s(pair_row["together_slices_s"]),
            "epoch_s_alone": epoch_s(pair_row["alone_slices_s"])}


def loader_cpu_rate(cfg: dict, n: int = 96) -> float:
    """Augmented training slices per CPU-second of the preset's own dataset (``build_data``), in this process:
    the second pass over ``n`` slices, as the workers' in-memory cache serves every epoch after the first."""
    import numpy as np

    from smaformer.train.data import build_data

    ds = build_data(cfg).train
    idx = np.random.default_rng(0).permutation(len(ds))[:n].tolist()
    for i in idx:
        ds[i]
    t0 = time.process_time()
    for i in idx:
        ds[i]
    return len(idx) / max(time.process_time() - t0, 1e-6)


def fit_epochs(window: float, plans: dict[str, dict]) -> dict[str, int]:
    """The most epochs per run (up to the recipe) that end within ``window`` seconds when all runs start
    together: side-by-side epoch times while two run, the alone time for what one does after the other ended."""
    if len(plans) == 1:
        (name, p), = plans.items()
        return {name: max(0, min(p["epochs_recipe"], math.floor(window / p["epoch_s_alone"])))}
    if len(plans) != 2:
        raise ValueError("fit_epochs plans one run or two side by side")
    full = {n: p["epochs_recipe"] * p["epoch_s_together"] for n, p in plans.items()}
    first, second = sorted(plans, key=full.get)
    if full[first] > window:      # neither recipe ends inside the window: both run side by side throughout
        return {n: max(0, math.floor(window / p["epoch_s_together"])) for n, p in plans.items()}
    q = plans[second]
    done = full[first] / q["epoch_s_together"] + (window - full[first]) / q["epoch_s_alone"]
    return {first: plans[first]["epochs_recipe"], second: max(0, min(q["epochs_recipe"], math.floor(done)))}


def acdc(rep, opts, site: Path | None) -> None:
    """Plan, then train both runs side by side, each followed by its evaluation; into ``rep.data['acdc']``."""
    from smaformer.config import load_config

    sec = rep.data["acdc"] = {"efficiency": EFFICIENCY, "loader_efficiency": LOADER_EFFICIENCY,
                              "safety": SAFETY, "startup_s": STARTUP_S,
                              "evaluate_s": EVAL_S, "val_every": opts.val_every, "side_by_side": True,
                              "evaluated": "latest.pt (final weights)", "reference": REFERENCE, "runs": []}
    if opts.dry_run:
        sec["note"] = ("dry run: tiny models at 64x64, batch 2, train.max_iterations=3, CPU; epochs and time limits "
                       "are planned as for a real run, then capped by max_iterations")
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        data = _prepare_data(rep, opts, tmp)
        if data is None:
            return
        sec["data"] = data
        pair = (rep.data.get("pair") or {}).get("runs", {})
        cfgs, plans, todo = {}, {}, [p for p in opts.runs or list(RUNS) if p in pair]
        for preset in opts.runs or list(RUNS):
            if preset not in pair:
                rep.skip(f"acdc {preset}", f"no measured training throughput for {RUNS[preset]} (the pair probe)")
        workers = opts.workers or max(1, min(8, ((os.cpu_count() or 2) - len(todo)) // max(1, len(todo))))
        for preset in todo:
            cfgs[preset] = load_config(preset, [])
            batch = opts.train_batch if opts.dry_run else int(cfgs[preset]["train"]["batch_size"])
            loader = math.inf      # no cap when the loader could not be timed (recorded in errors)
            with rep.guard(f"loader rate {preset}"):
                sets = [f"data.root={data['root']}"] + (_dry_overrides(preset) if opts.dry_run else [])
                cpu_rate = loader_cpu_rate(load_config(preset, sets))
                sec.setdefault("loader_slices_per_cpu_s", {})[preset] = round(cpu_rate, 1)
                loader = cpu_rate * (1 if opts.dry_run else workers) * LOADER_EFFICIENCY   # dry run: main process
            plans[preset] = plan_run(cfgs[preset], data, pair[preset], batch, loader)
        if not plans:
            return
        window = rep.left() - FINAL_S - STARTUP_S - EVAL_S
        epochs = fit_epochs(SAFETY * window, plans)
        sec["plan"] = {"training_window_s": round(window, 1), "fitted_to_s": round(SAFETY * window, 1),
                       "epochs": epochs, "loader_workers_per_run": workers}
        rep.log(f"acdc plan: {window:.0f} s of training side by side -> "
                + ", ".join(f"{k} {epochs[k]}/{p['epochs_recipe']} epochs" for k, p in plans.items()))
        rep.save()
        threads = []
        for preset, plan in plans.items():
            rec = {"run": preset, "model": RUNS[preset], **plan, "epochs_planned": epochs[preset]}
            sec["runs"].append(rec)
            if epochs[preset] < 1:
                rec["skipped"] = (f"does not fit: one epoch side by side needs ~{plan['epoch_s_together']:.0f} s; "
                                  f"{SAFETY * window:.0f} s are left for training")
                rep.skip(f"acdc {preset}", rec["skipped"])
                continue
            args = (rep, opts, site, cfgs[preset], rec, window, workers, data, tmp)
            threads.append(threading.Thread(target=_guarded_run, args=args, name=preset))
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=10)
            rep.save()       # a kill keeps what is done
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _guarded_run(rep, opts, site, cfg, rec, window, workers, data, tmp) -> None:
    with rep.guard(f"acdc {rec['run']}"):
        one_run(rep, opts, site, cfg, rec, window, workers, data, tmp)


def one_run(rep, opts, site, cfg: dict, rec: dict, window: float, workers: int, data: dict, tmp: Path) -> None:
    """Train one preset for its fitted epochs, then evaluate its latest.pt; fills ``rec``."""
    preset, epochs = rec["run"], rec["epochs_planned"]
    rec["reduced"] = epochs < rec["epochs_recipe"]
    if rec["reduced"]:
        rec["why_reduced"] = (f"the full recipe ({rec['epochs_recipe']} epochs) needs ~"
                              f"{rec['epochs_recipe'] * rec['epoch_s_together']:.0f} s side by side at "
                              f"{rec['slices_s_together']} slices/s bare (x{EFFICIENCY} in the loop); "
                              f"{window:.0f} s were left for training")
    time_limit = max(5.0, window - (rec["checkpoint_save_s"] or 0.0))       # a guard only: fitted to SAFETY x it
    run_dir, env = tmp / preset, child_env(site)
    sets = _overrides(opts, cfg, data["root"], epochs, time_limit, workers)
    sets += _dry_overrides(preset) if opts.dry_run else []
    rec["overrides"], rec["time_limit_s"] = sets, round(time_limit)
    cmd = [sys.executable, "-m", "smaformer", "train", "--config", preset, "--out", str(run_dir), "--no-progress"]
    cmd += [a for s in sets for a in ("--set", s)]
    rep.log(f"acdc {preset}: training {epochs}/{rec['epochs_recipe']} epochs side by side")
    rec["train"] = {"started_s": round(rep.elapsed(), 1)}
    rec["train"].update(run_logged(cmd, tmp / f"{preset}_train.log", rep.left() - EVAL_S - FINAL_S, env))
    rec["train"]["ended_s"] = round(rep.elapsed(), 1)
    rep.append_log(tmp / f"{preset}_train.log", f"{preset} train")
    log_text = (tmp / f"{preset}_train.log").read_text(encoding="utf-8", errors="replace")
    history = train_log(run_dir)
    rec["epochs_done"] = len(history)
    rec["iterations"] = int(history[-1]["iterations"]) if history else 0
    rec["train_loss_last"] = float(history[-1]["train_loss"]) if history else None
    rec["stopped"] = ("time_limit (the guard: the fit was too optimistic)" if "time limit of" in log_text
                      else "killed at the timeout" if rec["train"]["killed_at_timeout"]
                      else "finished" if rec["train"]["rc"] == 0 else f"failed (rc {rec['train']['rc']})")
    if history:
        shutil.copyfile(run_dir / "train_log.csv", rep.out / f"{preset}_train_log.csv")
    rep.log(f"acdc {preset}: {rec['stopped']} after {rec['epochs_done']} epochs, {rec['iterations']} iterations, "
            f"{rec['train']['wall_s']} s")
    if not (run_dir / "latest.pt").is_file():    # a run stopped at the timeout still has its last weights
        raise RuntimeError(f"training {preset} left no latest.pt (rc {rec['train']['rc']}); see the log")
    cmd = [sys.executable, "-m", "smaformer", "evaluate", "-c", str(run_dir / "latest.pt"), "-d", data["root"],
           "-o", str(tmp / f"{preset}_eval"), "--split", "val", "--overlays", "0", "--no-progress",
           "--device", "cpu" if opts.dry_run else str(opts.device),
           "--postprocess", "none"]   # training chose it on these val volumes: not scored with it
    rec["evaluate"] = {"started_s": round(rep.elapsed(), 1)}
    rec["evaluate"].update(run_logged(cmd, tmp / f"{preset}_eval.log", max(10.0, rep.left() - FINAL_S), env))
    rec["evaluate"]["ended_s"] = round(rep.elapsed(), 1)
    rep.append_log(tmp / f"{preset}_eval.log", f"{preset} evaluate")
    metrics = tmp / f"{preset}_eval" / "metrics.json"
    if rec["evaluate"]["rc"] != 0 or not metrics.is_file():
        raise RuntimeError(f"evaluate {preset} failed (rc {rec['evaluate']['rc']}); see the log")
    rec["scores"] = scores(metrics)
    shutil.copyfile(metrics, rep.out / f"{preset}_metrics.json")
    per_class = ", ".join(f"{k} {v:.4f}" for k, v in rec["scores"]["dice_per_class_standard"].items()
                          if v is not None)
    rep.log(f"acdc {preset}: mean Dice {rec['scores']['dice_mean_standard']:.4f} (standard; {per_class}), "
            f"{rec['scores']['dice_mean_legacy']:.4f} (legacy) on {rec['scores']['n_cases']} volumes, evaluated in "
            f"{rec['evaluate']['wall_s']} s")

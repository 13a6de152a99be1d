"""``smaformer demo``: the whole pipeline in a few minutes on a CPU, with no data and no weights.

1. synthetic CT-like phantoms (``smaformer.data.synthetic``): training and validation volumes, plus
   held-out test volumes from other seeds;
2. a small Swin-Unet (``--model smaformer`` for a small SMAFormer) trained with the real training engine,
   for a time budget (the number of iterations is calibrated first so the cosine schedule ends on time);
3. the held-out volumes evaluated with the real evaluation code (metrics.json, summary.csv, report.html,
   overlays);
4. everything in one run folder, whose contents and the final Dice are printed.
"""
from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import torch

from smaformer.config import load_config
from smaformer.errors import InputError

SMALL = {
    "smaformer": {"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 4, 8], "window_size": 4,
                  "drop_path_rate": 0.0},
    "swin_unet": {"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 4, 8], "window_size": 4,
                  "drop_path_rate": 0.0},
}
NUM_CLASSES, SIZE, DEPTH = 5, 64, 24
TEST_SEED_OFFSET = 20_000        # training phantoms use seed.., validation seed+10000.., test seed+20000..

def demo_config(model: str, out: Path, seed: int, iterations: int, time_limit_s: float | None = None) -> dict:
    """The demo's training config: synthetic phantoms at 64x64, a small model, AdamW with warm-up + cosine."""
    return load_config(None, base={
        "name": "demo",
        "model": {"name": model, "kwargs": dict(SMALL[model])},
        "data": {"layout": "synthetic", "img_size": SIZE, "in_chans": 3, "channel_mode": "repeat",
                 "intensity": {"mode": "window", "lo": -125.0, "hi": 275.0}, "augment": True, "num_workers": 0,
                 "classes": ["background"] + [f"organ{k}" for k in range(1, NUM_CLASSES)],
                 "synthetic": {"train_volumes": 12, "val_volumes": 2, "shape": [DEPTH, SIZE, SIZE], "seed": seed}},
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-4},     # 2e-3 collapses to background
        "schedule": {"name": "cosine", "warmup_iters": min(30, iterations // 10), "min_lr": 1e-5},
        "loss": {"ce": 0.5, "dice": 0.5},
        "train": {"epochs": 10_000, "max_iterations": iterations, "batch_size": 8, "val_every": 3,
                  "save_every_iters": 100, "seed": seed, "device": "cpu", "out_dir": str(out.parent),
                  "tensorboard": False, "time_limit_s": time_limit_s},
    })


def step_time(model: str) -> float:
    """Seconds per training step of the demo model (median of 5 after 3 warm-up steps, + 15 % for data)."""
    from smaformer.models import create_model

    net = create_model(model, num_classes=NUM_CLASSES, img_size=SIZE, **SMALL[model])
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    x, y = torch.randn(8, 3, SIZE, SIZE), torch.randint(0, NUM_CLASSES, (8, SIZE, SIZE))
    times = []
    for _ in range(8):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return sorted(times[3:])[len(times[3:]) // 2] * 1.15     # + data loading, augmentation, validation


def calibrate(model: str, budget_s: float, threads: int) -> tuple[int, int]:
    """(iterations that fit in ``budget_s``, threads); ``threads=0`` tries 1 and 2 and keeps the faster."""
    options = [threads] if threads > 0 else sorted({1, min(2, os.cpu_count() or 1)})
    timed = []
    for n in options:
        torch.set_num_threads(n)
        timed.append((step_time(model), n))
    per_step, best = min(timed)
    torch.set_num_threads(best)
    return max(20, int(budget_s / per_step)), best


def run_demo(out: str | Path | None = None, minutes: float = 2.5, iterations: int | None = None,
             model: str | None = None, threads: int = 0, test_volumes: int = 4, seed: int = 0,
             progress: bool = True, log=print) -> dict:
    """Train and evaluate on phantoms; returns paths, timings and the held-out Dice."""
    model = model or "swin_unet"
    if model not in SMALL:
        raise InputError(None, f"the demo trains {' or '.join(SMALL)}, not {model!r}")
    run_dir = Path(out) if out else Path("runs") / f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    saved_threads = torch.get_num_threads()
    try:
        return _run(run_dir, minutes, iterations, model, threads, test_volumes, seed, progress, log)
    finally:
        torch.set_num_threads(saved_threads)


def _run(run_dir: Path, minutes: float, iterations: int | None, model: str, threads: int, test_volumes: int,
         seed: int, progress: bool, log) -> dict:
    from smaformer.data import SyntheticReader
    from smaformer.infer.evaluate import evaluate
    from smaformer.train.loop import train

    t0 = time.perf_counter()
    fixed = iterations is not None
    if fixed:
        threads = threads if threads > 0 else min(2, os.cpu_count() or 1)
        torch.set_num_threads(threads)
    else:
        iterations, threads = calibrate(model, minutes * 60, threads)
    log(f"demo: training a small {model} on synthetic phantoms for {iterations} iterations "
        f"({threads} thread(s)) -> {run_dir}")
    # a busy machine can be much slower than the calibration said: stop at 1.5x the budget regardless
    cfg = demo_config(model, run_dir, seed, iterations, None if fixed else minutes * 90)
    result = train(cfg, run_dir=run_dir, progress_bar=progress, log=log)
    train_s = time.perf_counter() - t0
    ckpt = run_dir / ("best.pt" if (run_dir / "best.pt").exists() else "latest.pt")
    test = SyntheticReader(test_volumes, (DEPTH, SIZE, SIZE), NUM_CLASSES, seed=seed + TEST_SEED_OFFSET,
                           split="held-out")
    log(f"demo: evaluating {ckpt.name} on {test_volumes} held-out phantom volumes")
    report = evaluate(ckpt, test, run_dir / "evaluation", device="cpu", overlays=2, progress=progress)
    fg = report["foreground_mean"]
    dice = fg["standard"]["dice"]
    per_class = {report["classes"][k]: v["standard"]["dice"] for k, v in report["mean"].items()}
    summary = {"run_dir": str(run_dir), "model": model, "iterations": result.iterations,
               "train_seconds": round(train_s, 1), "val_dice": result.best_dice, "test_dice": dice,
               "test_dice_per_class": per_class, "checkpoint": str(ckpt),
               "report": str(run_dir / "evaluation" / "report.html")}
    lines = [
        "",
        f"demo finished in {time.perf_counter() - t0:.0f} s ({result.iterations} iterations of {model}"
        + (", cut short by the time limit: this machine is slower than calibrated)"
           if result.stopped == "time_limit" else ")"),
        f"  held-out phantom Dice (mean over {NUM_CLASSES - 1} organs): {_fmt(dice)}",
        "  per organ: " + ", ".join(f"{c} {_fmt(v)}" for c, v in per_class.items()),
        f"  run folder      {run_dir}",
        f"  checkpoint      {ckpt}   (try: smaformer info {ckpt})",
        f"  training log    {run_dir / 'train_log.csv'}, curves {run_dir / 'curves.png'}",
        f"  evaluation      {run_dir / 'evaluation' / 'metrics.json'}, {run_dir / 'evaluation' / 'report.html'}",
        f"  overlays        {run_dir / 'evaluation' / 'overlays'}",
    ]
    log("\n".join(lines))
    return summary


def _fmt(value: float | None) -> str:
    """A Dice for the summary; None (the organ is absent from every held-out volume) prints as n/a."""
    return "n/a" if value is None else f"{value:.4f}"

"""Loader throughput: augmented 224x224 ACDC training slices per second through a DataLoader.

The official RandomGenerator (rot90+flip | rotation, cubic zoom to 224) on the SSL4MIS h5 slices, with
``--workers`` DataLoader worker processes. Epoch 1 decodes the gzip h5 files; epoch 2 is served from each
worker's in-memory cache (persistent workers). Also times the plain ``scipy.ndimage.zoom`` resize the
official code uses, against ours (same numbers to 1e-6, matrix form).

    python benchmarks/bench_loader.py [--data ../shared/data/acdc] [--slices 960] [--workers 2] [--write]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, Subset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from smaformer.data import SliceDataset, open_dataset, seed_worker  # noqa: E402
from smaformer.data.transforms import resize_pair  # noqa: E402


def time_epochs(ds, workers: int, batch: int, epochs: int = 2) -> list[float]:
    """Slices per second of each epoch over ``ds``."""
    dl = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, worker_init_fn=seed_worker,
                    persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    rates = []
    for _ in range(epochs):
        t, n = time.perf_counter(), 0
        for b in dl:
            n += b["image"].shape[0]
        rates.append(n / (time.perf_counter() - t))
    return rates


def cpu_rates(make_ds, idx: list[int], repeats: int = 3) -> tuple[float, float]:
    """Slices per CPU-second in this process (cold: fresh dataset; cached: second pass), best of
    ``repeats``: a per-core rate that other jobs on the machine dilute much less than wall-clock time."""
    cold, warm = 0.0, 0.0
    for _ in range(repeats):
        ds = make_ds()
        passes = []
        for _ in range(2):
            t = time.process_time()
            for i in idx:
                ds[i]
            passes.append(len(idx) / (time.process_time() - t))
        cold, warm = max(cold, passes[0]), max(warm, passes[1])
    return cold, warm


def time_resize(reps: int = 200) -> tuple[float, float]:
    """Milliseconds per 256x216 -> 224x224 image+label resize: scipy zoom vs ours."""
    img = np.random.default_rng(0).random((1, 256, 216), np.float32)
    lab = (img[0] * 4).astype(np.int64)
    resize_pair(img, lab, 224)  # build the cached operators
    t = time.perf_counter()
    for _ in range(reps):
        ndimage.zoom(img[0], (224 / 256, 224 / 216), order=3)
        ndimage.zoom(lab, (224 / 256, 224 / 216), order=0)
    scipy_ms = (time.perf_counter() - t) / reps * 1e3
    t = time.perf_counter()
    for _ in range(reps):
        resize_pair(img, lab, 224)
    return scipy_ms, (time.perf_counter() - t) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "acdc"))
    ap.add_argument("--slices", type=int, default=960, help="slices per epoch (a fixed random subset)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--write", action="store_true", help="write docs/bench/loader.md")
    args = ap.parse_args()
    torch.set_num_threads(1)

    ds = SliceDataset(open_dataset(args.data, split="train"), img_size=224, augment=True)
    idx = np.random.default_rng(0).permutation(len(ds))[: args.slices].tolist()
    cold, warm = time_epochs(Subset(ds, idx), args.workers, args.batch)
    cpu_cold, cpu_warm = cpu_rates(lambda: SliceDataset(open_dataset(args.data, split="train"), img_size=224,
                                                        augment=True), idx[: args.slices // 2])
    scipy_ms, ours_ms = time_resize()
    cores = max(args.workers, 1)
    load = os.getloadavg()[0]
    rows = [
        f"| epoch 1 (h5 decode + augment) | {cold:.0f} | {cold / cores:.0f} | {cpu_cold:.0f} |",
        f"| epoch 2 (cached slices + augment) | {warm:.0f} | {warm / cores:.0f} | {cpu_warm:.0f} |",
    ]
    print("\n".join(rows))
    print(f"resize 256x216->224: scipy.ndimage.zoom {scipy_ms:.2f} ms, ours {ours_ms:.2f} ms; load avg {load:.1f}")
    if args.write:
        cmd = f"python benchmarks/bench_loader.py --slices {args.slices} --workers {args.workers} --write"
        text = "\n".join([
            "## Data loader throughput",
            "",
            f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_implementation()} "
            f"{platform.python_version()}, torch {torch.__version__} (1-min load average {load:.1f} while "
            "measuring)",
            f"- Command: `{cmd}`",
            f"- Workload: ACDC SSL4MIS training slices (gzip h5, mostly 256x216/256x256), official "
            f"RandomGenerator, cubic zoom to 224x224, batch {args.batch}, {args.workers} DataLoader workers, "
            f"{args.slices} slices per epoch. Target: >= 250 slices/s per core. The last column divides by "
            "the CPU time the process used, so it depends much less on how busy the shared machine was "
            "than wall-clock rates do.",
            "",
            f"| pass | slices/s, {args.workers} workers (wall clock) | per worker core (wall clock) | "
            "per CPU-second (one process, best of 3) |",
            "|---|---|---|---|",
            *rows,
            "",
            f"Resize of one 256x216 slice and label to 224x224: `scipy.ndimage.zoom` (order 3 / order 0, as the "
            f"official code) {scipy_ms:.2f} ms; ours (the same cubic spline as two cached sparse matrices) "
            f"{ours_ms:.2f} ms.",
            "",
            f"Against the target (250 slices/s per core): per CPU-second of the loading process, {cpu_cold:.0f} "
            f"(cold) and {cpu_warm:.0f} (cached); in wall-clock terms per worker core, {cold / cores:.0f} and "
            f"{warm / cores:.0f}, which include the workers' start-up and the main process's collation at this "
            "small epoch size.",
            "",
        ])
        out = REPO / "docs" / "bench" / "loader.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()

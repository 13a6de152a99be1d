"""Benchmark: smaformer.metrics vs medpy (Dice + HD95 per class) on a (148,512,512) 8-class volume.

Masks are organ-like: ellipsoids of organ sizes, with low-frequency boundary noise; the prediction is the
reference with its boundary perturbed, a shift, and a few false-positive blobs, so HD95 is non-trivial.

    python benchmarks/bench_metrics.py            # ours and medpy (medpy takes minutes)
    python benchmarks/bench_metrics.py --no-medpy # ours only
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from scipy import ndimage

SHAPE = (148, 512, 512)
SPACING = (2.5, 0.78, 0.78)
# (centre z, y, x), (radii z, y, x) in voxels: aorta, gallbladder, kidneys L/R, liver, pancreas, spleen, stomach
ORGANS = [((74, 280, 256), (60, 14, 14)), ((70, 300, 170), (10, 25, 20)), ((80, 330, 360), (22, 40, 30)),
          ((80, 330, 150), (22, 40, 30)), ((60, 260, 150), (35, 110, 100)), ((80, 270, 270), (8, 25, 70)),
          ((60, 320, 390), (25, 50, 40)), ((55, 200, 330), (25, 60, 60))]


def _noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Smooth noise in [-1, 1] made on a coarse grid and zoomed up (cheap for big volumes)."""
    coarse = ndimage.gaussian_filter(rng.standard_normal(tuple(max(4, s // 8) for s in shape)), sigma)
    coarse /= np.abs(coarse).max()
    up = ndimage.zoom(coarse, [s / c for s, c in zip(shape, coarse.shape, strict=True)], order=1)
    return up[tuple(slice(0, s) for s in shape)]


def make_labels(seed: int, perturb: bool) -> np.ndarray:
    """Label volume with 8 organ-like ellipsoids; ``perturb`` makes a plausible imperfect prediction."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(SHAPE, dtype=np.uint8)
    order = sorted(range(len(ORGANS)), key=lambda i: -np.prod(ORGANS[i][1]))  # big organs first, small on top
    for k, (c, r) in ((i + 1, ORGANS[i]) for i in order):
        lo = [max(ci - int(1.3 * ri) - 2, 0) for ci, ri in zip(c, r, strict=True)]
        hi = [min(ci + int(1.3 * ri) + 2, n) for ci, ri, n in zip(c, r, SHAPE, strict=True)]
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
        shift = rng.integers(-2, 3, 3) if perturb else np.zeros(3)
        rad = sum(((g - ci - s) / ri) ** 2 for g, ci, ri, s in zip(grids, c, r, shift, strict=True))
        noise_rng, amp = (rng, 0.25) if perturb else (np.random.default_rng(k), 0.15)
        rad += amp * _noise(noise_rng, rad.shape, 1.5)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        lab[box][rad < 1] = k
        if perturb:
            for _ in range(3):
                z, y, x = (rng.integers(a, b) for a, b in zip(lo, hi, strict=True))
                lab[max(z - 2, 0):z + 2, max(y - 4, 0):y + 4, max(x - 4, 0):x + 4] = k
    return lab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-medpy", action="store_true", help="skip the (slow) medpy reference")
    args = ap.parse_args()
    from smaformer import metrics

    ref, pred = make_labels(0, False), make_labels(1, True)
    labels = list(range(1, 9))
    t = time.perf_counter()
    ours = metrics.case_metrics(pred, ref, labels, spacing=SPACING)
    t_case = time.perf_counter() - t
    t = time.perf_counter()
    ours_hd = {k: metrics.hd95(pred == k, ref == k, SPACING) for k in labels}
    ours_dc = {k: metrics.dice(pred == k, ref == k) for k in labels}
    t_ours = time.perf_counter() - t
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"ours: case_metrics (all metrics, both conventions, 8 classes) {t_case:.2f} s; "
          f"dice+hd95 per class {t_ours:.2f} s")
    if args.no_medpy:
        return
    from medpy.metric import binary as mb
    t = time.perf_counter()
    med_hd = {k: mb.hd95(pred == k, ref == k, SPACING) for k in labels}
    med_dc = {k: mb.dc(pred == k, ref == k) for k in labels}
    t_med = time.perf_counter() - t
    worst = max(max(abs(ours_hd[k] - med_hd[k]) / med_hd[k], abs(ours[k]["standard"]["hd95"] - med_hd[k]) / med_hd[k],
                    abs(ours_dc[k] - med_dc[k])) for k in labels)
    print(f"medpy: dice+hd95 per class {t_med:.2f} s; speed-up {t_med / t_ours:.1f}x (hd95+dice), "
          f"{t_med / t_case:.1f}x (case_metrics); worst relative difference {worst:.2e}")
    for k in labels:
        print(f"  class {k}: dice {ours_dc[k]:.4f}  hd95 ours {ours_hd[k]:.6f} medpy {med_hd[k]:.6f} mm")


if __name__ == "__main__":
    main()

"""Benchmark: smaformer.metrics vs medpy (Dice + HD95 per class) on two shape families, in one process.

- compact: a (148,512,512) volume with 8 organ-like classes: ellipsoids of organ sizes with low-frequency
  boundary noise; the prediction is the reference with its boundary perturbed, a shift, and a few
  false-positive blobs, so HD95 is non-trivial.
- ragged: a (48,256,256) volume filled by 4 classes, the argmax of 4 smooth random fields; the prediction
  adds a weaker random field. Every class spans the volume (the crop saves nothing) and each surface has
  ~0.4M voxels, 59% of them on both surfaces.

    python benchmarks/bench_metrics.py                        # both families, ours and medpy (minutes)
    python benchmarks/bench_metrics.py --family ragged --repeats 3 --methods  # + each method alone
    python benchmarks/bench_metrics.py --crossover            # kdtree vs edt vs auto by surface density
    python benchmarks/bench_metrics.py --no-medpy             # ours only
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import datetime, timezone

import numpy as np
from scipy import ndimage

SHAPE = (148, 512, 512)
RAGGED_SHAPE = (48, 256, 256)
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


def make_ragged(shape=RAGGED_SHAPE, sigma: float = 2.5, noise: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, reference) label volumes 1..4 filling ``shape``: argmax of smooth random fields."""
    def fields(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return np.stack([ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
                         for _ in range(4)])
    ref = fields(0)
    pred = np.argmax(ref + noise * fields(1), 0).astype(np.uint8) + 1
    return pred, np.argmax(ref, 0).astype(np.uint8) + 1


def cpu_line() -> str:
    """CPU model, count and the vector/matrix flags that matter here, from /proc/cpuinfo."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key.strip() == "model name":
                    model = val.strip()
                elif key.strip() == "flags":
                    flags = set(val.split())
                    break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    have = " ".join(f for f in wanted if f in flags) or "none"
    lack = " ".join(f for f in wanted if f not in flags) or "none"
    return f"{model}, {os.cpu_count()} CPUs; flags: {have} (lacks: {lack})"


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def run_family(name: str, pred: np.ndarray, ref: np.ndarray, labels: list[int], spacing, repeats: int,
               medpy: bool, methods: bool) -> None:
    """Time ours (hd95+dice per class; case_metrics) and medpy, alternating; print medians and values."""
    from smaformer import metrics

    surf = {k: int(np.count_nonzero(metrics._border(ref == k, 1))) for k in labels}
    print(f"\n[{name}] shape {pred.shape}, spacing {spacing}, classes {labels}; reference surface voxels "
          f"{min(surf.values()):,}-{max(surf.values()):,}")
    t_case, t_ours, t_med = [], [], []
    for _ in range(repeats):
        if medpy:
            from medpy.metric import binary as mb
            t, med = _timed(lambda: {k: (mb.hd95(pred == k, ref == k, spacing), mb.dc(pred == k, ref == k))
                                     for k in labels})
            t_med.append(t)
        t, ours = _timed(lambda: {k: (metrics.hd95(pred == k, ref == k, spacing), metrics.dice(pred == k, ref == k))
                                  for k in labels})
        t_ours.append(t)
        t, case = _timed(lambda: metrics.case_metrics(pred, ref, labels, spacing=spacing))
        t_case.append(t)
    m_ours, m_case = statistics.median(t_ours), statistics.median(t_case)
    print(f"ours: dice+hd95 per class {m_ours:.3f} s; case_metrics (all metrics, both conventions) "
          f"{m_case:.3f} s  (rounds: {', '.join(f'{t:.3f}' for t in t_ours)})")
    if medpy:
        m_med = statistics.median(t_med)
        worst = max(max(abs(ours[k][0] - med[k][0]) / med[k][0], abs(case[k]["standard"]["hd95"] - med[k][0])
                        / med[k][0], abs(ours[k][1] - med[k][1])) for k in labels)
        print(f"medpy: dice+hd95 per class {m_med:.2f} s (rounds: {', '.join(f'{t:.2f}' for t in t_med)}); "
              f"speed-up {m_med / m_ours:.1f}x (hd95+dice), {m_med / m_case:.1f}x (case_metrics); "
              f"worst relative difference {worst:.2e}")
    for k in labels:
        line = f"  class {k}: dice {ours[k][1]:.4f}  hd95 ours {ours[k][0]:.6f}"
        print(line + (f" medpy {med[k][0]:.6f}" if medpy else ""))
    if methods:
        for method in metrics.METHODS:
            t, vals = _timed(lambda m=method: [metrics._hd95(*metrics.surface_distances(pred == k, ref == k, spacing,
                                                                                       method=m)) for k in labels])
            same = all(abs(v - ours[k][0]) <= 1e-9 * ours[k][0] for v, k in zip(vals, labels, strict=True))
            print(f"  method {method:6s}: hd95 of all classes {t:.3f} s; values {'identical' if same else 'DIFFER'}")


def crossover() -> None:
    """kdtree vs edt vs auto on one (32,128,128) crop as the surfaces get denser (smaller sigma).

    near: class 1 of the ragged family against its prediction (most points settle in the scan);
    far: the reference kept in the left third, the prediction in the right third (every point is 40+
    voxels from the other surface, so auto hands them all to a fallback)."""
    from smaformer import metrics

    sp = (2.5, 0.78, 0.78)
    print("\n[crossover] (32,128,128), class 1 of the ragged family, spacing (2.5, 0.78, 0.78); seconds")
    print("case  sigma  surface/crop  kdtree    edt   auto  scan")
    for case in ("near", "far"):
        for sigma in (8.0, 5.0, 3.0, 2.0, 1.2):
            pred, ref = make_ragged((32, 128, 128), sigma)
            p, r = pred == 1, ref == 1
            if case == "far":
                p[..., :85], r[..., 43:] = False, False
            dens = (np.count_nonzero(metrics._border(p, 1)) + np.count_nonzero(metrics._border(r, 1))) / p.size
            row = [_timed(lambda m=m, p=p, r=r: metrics.surface_distances(p, r, sp, method=m))[0]
                   for m in ("kdtree", "edt", "auto", "scan")]
            print(f"{case:4s}  {sigma:5.1f}  {dens:12.3f}  " + "  ".join(f"{t:5.3f}" for t in row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=("compact", "ragged", "both"), default="both")
    ap.add_argument("--repeats", type=int, default=1, help="alternating rounds of medpy and ours (medians)")
    ap.add_argument("--no-medpy", action="store_true", help="skip the (slow) medpy reference")
    ap.add_argument("--methods", action="store_true", help="also time each method (scan/kdtree/edt) alone")
    ap.add_argument("--crossover", action="store_true", help="only the kdtree/edt crossover by surface density")
    args = ap.parse_args()
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu_line()}; python {platform.python_version()}, "
          f"numpy {np.__version__}; load (1 min) {os.getloadavg()[0]:.2f}")
    if args.crossover:
        crossover()
    else:
        if args.family in ("compact", "both"):
            run_family("compact", make_labels(1, True), make_labels(0, False), list(range(1, 9)), SPACING,
                       args.repeats, not args.no_medpy, args.methods)
        if args.family in ("ragged", "both"):
            pred, ref = make_ragged()
            run_family("ragged", pred, ref, [1, 2, 3, 4], SPACING, args.repeats, not args.no_medpy, args.methods)
    print(f"load (1 min) at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

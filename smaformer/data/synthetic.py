"""Deterministic synthetic CT-like phantoms: the demo's data and the data of tests that must not need
``../shared``.

Each phantom is a body (an elliptic cylinder) with ``num_classes - 1`` smooth, rotated ellipsoid "organs" placed in
separate angular sectors, each with its own mean intensity (HU-like values inside the Synapse window
[-125, 275]), plus an unlabeled bright "spine", a smooth random deformation of all shapes, light partial
volume blur, an additive bias field and Gaussian noise. The same ``seed`` always gives the same phantom.
Use ``INTENSITY`` (the Synapse CT window) as the preprocessing spec.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from smaformer.data.sample import Reader, Sample

INTENSITY = {"mode": "window", "lo": -125.0, "hi": 275.0}
SPACING = (3.0, 1.5, 1.5)


def phantom_classes(num_classes: int) -> list[str]:
    """Class names of a phantom with ``num_classes`` labels (background included)."""
    return ["background"] + [f"organ{k}" for k in range(1, num_classes)]


def _smooth_field(rng: np.random.Generator, z: np.ndarray, y: np.ndarray, x: np.ndarray, amp: float,
                  terms: int = 3) -> np.ndarray:
    """A random smooth field: a few low-frequency sinusoids of total amplitude about ``amp``."""
    out = np.zeros(np.broadcast_shapes(z.shape, y.shape, x.shape), np.float32)
    for _ in range(terms):
        fz, fy, fx = rng.uniform(0.3, 1.5, 3) * np.pi
        phase = rng.uniform(0, 2 * np.pi)
        out += np.cos(fz * z + fy * y + fx * x + phase).astype(np.float32)
    return out * np.float32(amp / terms)


def _organ_levels(n: int) -> np.ndarray:
    """Evenly spread organ intensities (HU) in [-100, -50] and [80, 230]: away from the body (~0-40 HU),
    from air and the spine (both clipped to the window's ends)."""
    t = np.linspace(0.0, 200.0, n) if n > 1 else np.array([120.0])
    return np.where(t <= 50.0, -100.0 + t, 80.0 + (t - 50.0)).astype(np.float64)


def _render(rng: np.random.Generator, zc: np.ndarray, shape_hw: tuple[int, int],
            num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Render image (HU) and label at normalised slice positions ``zc`` (values in [-1, 1])."""
    h, w = shape_hw
    z = zc.astype(np.float32)[:, None, None]
    y = np.linspace(-1, 1, h, dtype=np.float32)[None, :, None]
    x = np.linspace(-1, 1, w, dtype=np.float32)[None, None, :]
    # smooth random deformation of the coordinates (shapes bend, slice to slice and across phantoms)
    yd = y + _smooth_field(rng, z, y, x, 0.06)
    xd = x + _smooth_field(rng, z, y, x, 0.06)

    body_r = rng.uniform([0.80, 0.62], [0.92, 0.75])
    body = (yd / body_r[0]) ** 2 + (xd / body_r[1]) ** 2 < 1.0
    image = np.where(body, np.float32(rng.uniform(-10, 30)), np.float32(-1000.0)).astype(np.float32)
    label = np.zeros(body.shape, np.int64)

    n_org = num_classes - 1
    scale = float(np.sqrt(4.0 / max(n_org, 4)))
    levels = _organ_levels(n_org) + rng.uniform(-5, 5, n_org)
    start = rng.uniform(0, 2 * np.pi)
    order = rng.permutation(n_org)  # which class sits in which sector varies between phantoms
    for slot, k in enumerate(order):
        ang = start + 2 * np.pi * slot / n_org + rng.uniform(-0.25, 0.25)
        dist = rng.uniform(0.25, 0.45)
        cy, cx = dist * np.sin(ang) * body_r[0], dist * np.cos(ang) * body_r[1]
        cz = rng.uniform(-0.35, 0.35)
        ry, rx = rng.uniform(0.14, 0.26, 2) * scale
        rz = rng.uniform(0.45, 0.8)
        theta = rng.uniform(0, np.pi)
        c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
        dy, dx = yd - np.float32(cy), xd - np.float32(cx)
        u, v = c * dy + s * dx, -s * dy + c * dx
        inside = (u / ry) ** 2 + (v / rx) ** 2 + ((z - cz) / rz) ** 2 < 1.0
        inside &= body
        label[inside] = k + 1
        image[inside] = levels[k]
    # unlabeled bright "spine" behind the organs: structure a model must learn to ignore
    spine = ((yd - 0.55 * body_r[0]) / 0.09) ** 2 + (xd / 0.08) ** 2 < 1.0
    spine = np.broadcast_to(spine, image.shape)
    image[spine & (label == 0)] = 400.0

    image = ndimage.gaussian_filter(image, sigma=(0, 0.8, 0.8))  # partial volume at edges
    image += _smooth_field(rng, z, y, x, 15.0) * body  # bias field inside the body
    image += rng.normal(0.0, 15.0, image.shape).astype(np.float32)
    return image.astype(np.float32), label


def make_phantom(seed: int, shape: tuple[int, int, int] = (24, 96, 96), num_classes: int = 5) -> Sample:
    """A deterministic 3D phantom: image float32 (D,H,W) in HU-like units, label int64 (D,H,W)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background plus organs), got {num_classes}")
    d, h, w = (int(s) for s in shape)
    rng = np.random.default_rng([int(seed), d, h, w, num_classes])
    zc = np.linspace(-1, 1, d) if d > 1 else np.zeros(1)
    image, label = _render(rng, zc, (h, w), num_classes)
    meta = {"case": f"phantom{seed:04d}", "path": f"synthetic:{seed}", "spacing": SPACING, "affine": None,
            "classes": phantom_classes(num_classes), "intensity": dict(INTENSITY), "is_volume": True}
    return Sample(image, label, meta)


def make_phantom_2d(seed: int, size: tuple[int, int] = (96, 96), num_classes: int = 5) -> Sample:
    """A deterministic 2D phantom slice at a random height: image (1,H,W), label (H,W)."""
    h, w = (int(s) for s in size)
    rng = np.random.default_rng([int(seed), 1, h, w, num_classes])
    image, label = _render(rng, np.array([rng.uniform(-0.5, 0.5)]), (h, w), num_classes)
    meta = {"case": f"phantom2d{seed:04d}", "path": f"synthetic:{seed}", "spacing": SPACING[1:],
            "classes": phantom_classes(num_classes), "intensity": dict(INTENSITY), "is_volume": False}
    return Sample(image, label[0], meta)


class SyntheticReader(Reader):
    """``num_cases`` phantoms behind the reader interface (cases ``phantom0000``...), e.g. for SliceDataset.

    Phantom seeds are ``seed + i``, so ``SyntheticReader(4, seed=0)`` and ``SyntheticReader(2, seed=100)``
    give disjoint train and validation sets.
    """

    layout = "synthetic"

    def __init__(self, num_cases: int = 8, shape: tuple[int, int, int] = (24, 96, 96), num_classes: int = 5,
                 seed: int = 0, split: str = "train"):
        self.root = None  # type: ignore[assignment]
        self.split = split
        self.classes = phantom_classes(num_classes)
        self.skipped = []
        self.shape, self.seed = tuple(shape), int(seed)
        self._seeds = {f"phantom{seed + i:04d}": seed + i for i in range(num_cases)}

    @classmethod
    def detect(cls, root) -> bool:
        return False

    def cases(self) -> list[str]:
        return list(self._seeds)

    def num_slices(self, case: str) -> int:
        return int(self.shape[0])

    def load_case(self, case: str) -> Sample:
        return make_phantom(self._seeds[case], self.shape, len(self.classes))

    def __repr__(self) -> str:
        return f"SyntheticReader(num_cases={len(self._seeds)}, shape={self.shape}, seed={self.seed})"

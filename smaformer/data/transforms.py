"""Augmentation and resizing of 2D training slices, CT window presets, DataLoader worker seeding.

``RandomGenerator`` follows the official Swin-Unet / TransUNet / SSL4MIS recipe: with p=0.5 a random
``rot90`` (k in 0..3) followed by a flip along a random axis; otherwise with p=0.5 a rotation by an
integer angle in [-20, 20) (nearest neighbour, as the official code does for image and label); then a
zoom to the output size (cubic spline for the image, nearest for the label). Like the official code it
draws the coin flips from Python's ``random`` and the parameters from NumPy's global stream, so
:func:`seed_worker` (or one global seed in the main process) makes it reproducible.
"""
from __future__ import annotations

import random
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage, sparse

# Named CT windows (HU). "synapse" is the TransUNet preprocessing; the others are the radiology
# presets as (level - width/2, level + width/2): abdomen L40/W400, liver L30/W150, lung L-600/W1500.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "synapse": (-125.0, 275.0),
    "abdomen": (-160.0, 240.0),
    "liver": (-45.0, 105.0),
    "lung": (-1350.0, 150.0),
}


def window_spec(name: str) -> dict:
    """The intensity spec (see ``preprocess.normalize_intensity``) for a named CT window."""
    if name not in CT_WINDOWS:
        raise ValueError(f"unknown CT window {name!r}; use one of {', '.join(CT_WINDOWS)} or give lo,hi")
    lo, hi = CT_WINDOWS[name]
    return {"mode": "window", "lo": lo, "hi": hi}


def parse_window(text: str) -> dict:
    """``"abdomen"`` or ``"-125,275"`` -> a window intensity spec."""
    if "," in text:
        try:
            lo, hi = (float(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"window {text!r}: give a preset name or two numbers 'lo,hi'") from None
        if hi <= lo:
            raise ValueError(f"window {text!r}: hi must be greater than lo")
        return {"mode": "window", "lo": lo, "hi": hi}
    return window_spec(text)


def _size2(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


@lru_cache(maxsize=64)
def _cubic_matrix(n_in: int, n_out: int) -> sparse.csr_matrix:
    """(n_out, n_in) operator equal to ``scipy.ndimage.zoom(order=3)`` along one axis, built by zooming the
    identity. Zoom is separable, so ``A_h @ x @ A_w.T`` equals the 2D zoom (to 1e-6; weights under 1e-7
    of the spline prefilter's geometric tail are dropped, leaving ~24 per row), several times faster."""
    a = ndimage.zoom(np.eye(n_in), (n_out / n_in, 1), order=3)
    return sparse.csr_matrix(np.where(np.abs(a) > 1e-7, a, 0.0).astype(np.float32))


@lru_cache(maxsize=64)
def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel for a nearest-neighbour zoom on scipy's grid (corners aligned).
    Unlike ``ndimage.zoom(order=0)`` it never writes the fill value 0 into the last row/column, which
    scipy does for some sizes (e.g. 512 -> 224) when rounding puts the last coordinate past the edge."""
    if n_out == 1:
        return np.zeros(1, np.int64)
    return np.minimum(np.floor(np.arange(n_out) * ((n_in - 1) / (n_out - 1)) + 0.5), n_in - 1).astype(np.int64)


def resize_pair(image: np.ndarray, label: np.ndarray | None, size: int | tuple[int, int],
                image_order: int = 3) -> tuple[np.ndarray, np.ndarray | None]:
    """Zoom a (C,H,W) image (spline ``image_order``) and its (H,W) label (nearest) to ``size``."""
    oh, ow = _size2(size)
    h, w = image.shape[-2:]
    if (h, w) == (oh, ow):
        return image, label
    if image_order == 3:
        ah, aw = _cubic_matrix(h, oh), _cubic_matrix(w, ow)
        image = np.ascontiguousarray(np.stack([(aw @ (ah @ ch.astype(np.float32, copy=False)).T).T
                                               for ch in image]))
    else:
        image = np.stack([ndimage.zoom(ch, (oh / h, ow / w), order=image_order) for ch in image])
    if label is not None:
        label = label[np.ix_(_nearest_index(h, oh), _nearest_index(w, ow))]
    return image.astype(np.float32, copy=False), label


class RandomGenerator:
    """The official slice augmentation (rot90+flip | small rotation, then zoom), plus optional intensity
    noise and gamma. Call with a (C,H,W) float image and an (H,W) integer label; returns numpy arrays at
    ``output_size``.

    ``image_zoom_order``: 3 as Swin-Unet/TransUNet; SSL4MIS's ACDC loader zooms the image with 0.
    ``noise_std``: std of additive Gaussian noise (in normalised intensity units), applied with p=0.5.
    ``gamma``: (lo, hi) range; with p=0.5 the image is min-max scaled, raised to a random power, scaled back.
    """

    def __init__(self, output_size: int | tuple[int, int], p_rot90: float = 0.5, p_rotate: float = 0.5,
                 max_angle: int = 20, image_rotate_order: int = 0, image_zoom_order: int = 3,
                 noise_std: float = 0.0, gamma: tuple[float, float] | None = None):
        self.output_size = _size2(output_size)
        self.p_rot90, self.p_rotate, self.max_angle = p_rot90, p_rotate, int(max_angle)
        self.image_rotate_order, self.image_zoom_order = image_rotate_order, image_zoom_order
        self.noise_std, self.gamma = float(noise_std), gamma

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if random.random() > 1.0 - self.p_rot90:  # written as the official '> 0.5': same draws, same branch
            k = np.random.randint(0, 4)
            image, label = np.rot90(image, k, axes=(1, 2)), np.rot90(label, k)
            axis = np.random.randint(0, 2)
            image, label = np.flip(image, axis=axis + 1), np.flip(label, axis=axis)
        elif random.random() > 1.0 - self.p_rotate:
            angle = np.random.randint(-self.max_angle, self.max_angle)
            image = ndimage.rotate(image, angle, axes=(2, 1), order=self.image_rotate_order, reshape=False)
            label = ndimage.rotate(label, angle, axes=(1, 0), order=0, reshape=False)
        image, label = resize_pair(np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label),
                                   self.output_size, self.image_zoom_order)
        if self.gamma is not None and random.random() < 0.5:
            lo, hi = float(image.min()), float(image.max())
            if hi > lo:
                g = np.random.uniform(*self.gamma)
                image = ((image - lo) / (hi - lo)) ** g * (hi - lo) + lo
        if self.noise_std > 0 and random.random() < 0.5:
            image = image + np.random.normal(0.0, self.noise_std, image.shape)
        return image.astype(np.float32, copy=False), label

    def __repr__(self) -> str:
        return (f"RandomGenerator(output_size={self.output_size}, noise_std={self.noise_std}, "
                f"gamma={self.gamma})")


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed NumPy and Python from the worker's torch seed.

    Torch gives each worker ``base_seed + worker_id``. The official repos pass no ``worker_init_fn`` (or
    seed every worker with the same number), which on torch < 1.9 left all workers with one NumPy stream;
    newer torch reseeds NumPy itself. This makes the per-worker streams explicit on every version.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def random_crop(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A random ``size`` window of a (C,H,W) image and its (H,W) label at their own resolution; an axis
    shorter than the window is zero-padded (label: background), as sliding-window inference pads."""
    oh, ow = _size2(size)
    h, w = label.shape[-2:]
    ph, pw = max(oh - h, 0), max(ow - w, 0)
    if ph or pw:   # centred, as MONAI's sliding_window_inference pads
        pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
        image, label = np.pad(image, ((0, 0), *pads)), np.pad(label, pads)
    y = np.random.randint(0, label.shape[0] - oh + 1)
    x = np.random.randint(0, label.shape[1] - ow + 1)
    return image[:, y:y + oh, x:x + ow], label[y:y + oh, x:x + ow]

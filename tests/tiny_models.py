"""Helpers the inference tests share: a tiny untrained U-Net checkpoint, and a folder of small NIfTI cases."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from smaformer.checkpoint import build_checkpoint, default_preprocessing, save_checkpoint
from smaformer.models import create_model
from smaformer.models.registry import tiny_kwargs

CT_WINDOW = {"mode": "window", "lo": -125, "hi": 275}


def tiny_unet_checkpoint(path: Path, classes: list[str], *, size: int = 32, in_chans: int = 1,
                         intensity: dict | None = None, seed: int = 0, **extra) -> Path:
    """Save a tiny untrained U-Net at ``size``² (``extra`` entries go into the checkpoint dict)."""
    torch.manual_seed(seed)
    model = create_model("unet", **tiny_kwargs("unet"), num_classes=len(classes), in_chans=in_chans, img_size=size)
    pre = default_preprocessing((size, size), in_chans, "repeat", intensity or {"mode": "none"})
    return save_checkpoint({**build_checkpoint(model, classes, pre), **extra}, path)


def nifti_cases(folder: Path, names: tuple[str, ...], shape: tuple[int, int, int],
                affine: np.ndarray | None = None) -> Path:
    """``folder/<name>.nii.gz`` of seeded random float32 volumes."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in names:
        image = nib.Nifti1Image(rng.random(shape, dtype=np.float32), np.eye(4) if affine is None else affine)
        nib.save(image, str(folder / f"{name}.nii.gz"))
    return folder

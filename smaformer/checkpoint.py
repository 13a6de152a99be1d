"""Self-describing checkpoints (DESIGN.md §4).

One file holds the model name and kwargs, the class names, the preprocessing, the resolved config and,
for training checkpoints, the training state. Only plain containers, numbers, strings and tensors are
stored, so every file loads with ``torch.load(weights_only=True)``; files that need pickle code are
refused. Writes go to a temp file and are moved into place with ``os.replace``.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from smaformer.errors import CheckpointError

FORMAT = "smaformer-checkpoint"
VERSION = 1


def default_preprocessing(img_size=(224, 224), in_chans: int = 3, channel_mode: str = "repeat",
                          intensity: dict | None = None) -> dict:
    """The preprocessing block: model input size, channel mode and intensity normalisation."""
    return {
        "img_size": [int(s) for s in img_size],
        "in_chans": int(in_chans),
        "channel_mode": channel_mode,
        "intensity": dict(intensity or {"mode": "none"}),
    }


def build_checkpoint(model: nn.Module, classes: list[str], preprocessing: dict, config: dict | None = None,
                     train_state: dict | None = None, metrics: dict | None = None) -> dict:
    """Assemble the checkpoint dict for a model made by ``create_model``."""
    name = getattr(model, "model_name", None)
    if name is None:
        raise CheckpointError(None, "model was not built by smaformer.create_model; its name is unknown")
    net = model.module if hasattr(model, "module") else model
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": name, "kwargs": dict(getattr(model, "model_kwargs", {}))},
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "classes": list(classes),
        "preprocessing": preprocessing,
        "config": config or {},
        "train_state": train_state or {},
        "metrics": metrics or {},
    }


def save_checkpoint(ckpt: dict, path: str | Path) -> Path:
    """Write ``ckpt`` atomically: a temp file in the same folder, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict with ``weights_only=True``; refuse anything that needs pickle code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(path, "checkpoint file is empty (0 bytes)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(path, "refused: the file needs pickle code to load (only weights_only=True "
                                    f"checkpoints are accepted): {first}") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(path, f"not a readable torch checkpoint ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else 'truncated?'})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(path, f"not a smaformer checkpoint (missing format={FORMAT!r}); "
                                    "use smaformer.weights.load_official for official checkpoints")
    return ckpt


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a checkpoint describes, load its weights, return ``(model.eval(), info)``.

    ``info`` holds ``classes``, ``preprocessing``, ``config``, ``metrics``, ``model`` and ``path``.
    """
    from smaformer.models import create_model

    ckpt = read_checkpoint(path)
    spec = ckpt["model"]
    try:
        model = create_model(spec["name"], **spec["kwargs"])
    except ValueError as e:
        raise CheckpointError(path, str(e)) from None
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(path, f"weights do not fit model {spec['name']!r}: {str(e).splitlines()[0]}") from None
    info = {k: ckpt[k] for k in ("classes", "preprocessing", "config", "metrics", "model")}
    info["path"] = str(path)
    return model.to(device).eval(), info

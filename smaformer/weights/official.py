"""Load full-model checkpoints saved by the official repositories (Swin-Unet 7d80541, SMAFormer V2.3, MedT).

Protocol: a model that has an official layout implements ``convert_official_state_dict(state_dict)``,
which renames the official keys to ours, drops computed buffers (relative-position indices, shift masks)
and raises ``KeyError`` naming any key it cannot place. ``load_official`` unwraps the usual containers,
calls it and loads strictly.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from smaformer.errors import CheckpointError

_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "net")


def read_state_dict(path_or_state_dict: str | Path | dict) -> dict[str, torch.Tensor]:
    """A bare ``name -> tensor`` dict from a path or dict; unwraps ``state_dict``/``model`` containers and
    a DataParallel ``module.`` prefix."""
    sd = path_or_state_dict
    if isinstance(sd, (str, Path)):
        if not Path(sd).is_file():
            raise CheckpointError(sd, "weights file not found")
        try:
            sd = torch.load(sd, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure here is a bad file for the user
            raise CheckpointError(path_or_state_dict, f"cannot read weights safely ({type(e).__name__})") from None
    while isinstance(sd, dict) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        inner = next((sd[k] for k in _CONTAINER_KEYS if isinstance(sd.get(k), dict)), None)
        if inner is None:
            break
        sd = inner
    if not isinstance(sd, dict):
        raise CheckpointError(None, "weights are not a state_dict")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def load_official(model: nn.Module, path_or_state_dict: str | Path | dict) -> nn.Module:
    """Load an official full-model checkpoint into ``model`` (strict); raises on any unplaceable key."""
    convert = getattr(model, "convert_official_state_dict", None)
    if convert is None:
        raise ValueError(f"{type(model).__name__} has no official checkpoint layout")
    ours = convert(read_state_dict(path_or_state_dict))
    missing, unexpected = model.load_state_dict(ours, strict=False)
    if missing or unexpected:
        raise KeyError(f"official checkpoint does not fit {type(model).__name__}: "
                       f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                       f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    return model

"""Load full-model checkpoints saved by the official repositories (each model names its ``official_layout``).

Protocol: a ``SegmentationModel`` with an ``official_layout`` names its official keys through its
``official_key`` hook; ``convert_official`` (written once, here) drops computed buffers, applies the hook,
checks every key and shape and raises ``CheckpointError`` naming what it cannot place. ``load_official``
unwraps the usual containers, converts and loads strictly.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from smaformer.errors import CheckpointError
from smaformer.io_utils import check_readable

_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "net")
# buffers the models compute at construction; official checkpoints store some of them
COMPUTED_BUFFERS = ("relative_position_index", "attn_mask", "flatten_index")


def read_state_dict(path_or_state_dict: str | Path | dict) -> dict[str, torch.Tensor]:
    """A bare ``name -> tensor`` dict from a path or dict; unwraps ``state_dict``/``model`` containers and
    a DataParallel ``module.`` prefix."""
    sd = path_or_state_dict
    if isinstance(sd, (str, Path)):
        check_readable(sd, "weights file", CheckpointError)
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


def convert_official(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official keys -> ours for a ``SegmentationModel`` (timm's ``checkpoint_filter_fn`` is the anchor).

    Computed buffers are dropped; ``model.official_key`` renames each key (or drops one the official forward
    never uses); every tensor must have a place and the shape the model expects. Faults raise
    ``CheckpointError`` naming the keys, with ``model.official_shape_hint`` for shape mismatches.
    """
    ours, out, unknown = model.state_dict(), {}, []
    for key, value in state_dict.items():
        if key.endswith(COMPUTED_BUFFERS):
            continue
        name = model.official_key(key)
        if name is None:
            continue
        if name not in ours:
            unknown.append(key)
            continue
        if ours[name].shape != value.shape:
            raise CheckpointError(None, f"official tensor {key} has shape {tuple(value.shape)}, "
                                        f"{type(model).__name__} expects {tuple(ours[name].shape)}"
                                        f"{model.official_shape_hint(state_dict)}")
        out[name] = value
    if unknown:
        raise CheckpointError(None, f"official checkpoint keys that {type(model).__name__} cannot place: "
                                    f"{unknown[:5]}{'...' if len(unknown) > 5 else ''}")
    return out


def load_official(model: nn.Module, path_or_state_dict: str | Path | dict) -> nn.Module:
    """Load an official full-model checkpoint into ``model`` (strict); raises on any unplaceable key."""
    if getattr(model, "official_layout", None) is None:
        raise CheckpointError(None, f"{type(model).__name__} has no official checkpoint layout")
    where = path_or_state_dict if isinstance(path_or_state_dict, (str, Path)) else None
    try:
        ours = convert_official(model, read_state_dict(path_or_state_dict))
    except CheckpointError as e:
        raise CheckpointError(e.path or where, e.fault) from None
    missing, _ = model.load_state_dict(ours, strict=False)
    if missing:
        raise CheckpointError(where, f"official checkpoint does not fit {type(model).__name__}: missing "
                                     f"{missing[:5]}{'...' if len(missing) > 5 else ''}")
    return model

"""Self-describing checkpoints (DESIGN.md §4).

One file holds the model name and kwargs, the class names, the preprocessing, the resolved config and,
for training checkpoints, the training state. Only plain containers, numbers, strings and tensors are
stored, so every file loads with ``torch.load(weights_only=True)``; files that need pickle code are
refused. Writes go through ``io_utils.atomic_write``.

A weights-only alternative is the safetensors pair: ``model.safetensors`` (tensors, no code at all) plus a
``model.json`` sidecar with the model name and kwargs, classes, preprocessing and the weights' SHA-256
(``save_safetensors_pair`` / ``read_safetensors_pair``). ``load_checkpoint`` accepts either form.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from smaformer.errors import CheckpointError
from smaformer.io_utils import atomic_write, check_readable, write_bytes

FORMAT = "smaformer-checkpoint"
VERSION = 1
SIDECAR_FORMAT = "smaformer-safetensors"
_SIDECAR_KEYS = ("model", "classes", "preprocessing", "config", "metrics", "splits", "fingerprint", "postprocessing")


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
                     train_state: dict | None = None, metrics: dict | None = None, *, splits: dict | None = None,
                     fingerprint: dict | None = None) -> dict:
    """Assemble the checkpoint dict for a model made by ``create_model``.

    ``splits`` is the cross-validation record of the run (``train.folds.FoldSplit.record()``) and
    ``fingerprint`` the training set's ``data.fingerprint`` (None when unknown)."""
    net = model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model
    name = getattr(net, "model_name", None)
    if name is None:
        raise CheckpointError(None, "model was not built by smaformer.create_model; its name is unknown")
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": name, "kwargs": dict(getattr(net, "model_kwargs", {}))},
        "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()},   # a snapshot
        "classes": list(classes),
        "preprocessing": preprocessing,
        "config": config or {},
        "train_state": train_state or {},
        "metrics": metrics or {},
        "splits": splits,
        "fingerprint": fingerprint,
    }


def save_checkpoint(ckpt: dict, path: str | Path) -> Path:
    """Write ``ckpt`` atomically: a temp file in the same folder, then ``os.replace``."""
    return atomic_write(Path(path), lambda f: torch.save(ckpt, f))


def sidecar_path(weights_path: str | Path) -> Path:
    """The JSON sidecar that goes with ``model.safetensors``: ``model.json``."""
    return Path(weights_path).with_suffix(".json")


def save_safetensors_pair(ckpt: dict, path: str | Path) -> tuple[Path, Path]:
    """Write the checkpoint's weights as safetensors plus a JSON sidecar (no training state).

    Returns ``(weights_path, sidecar_path)``. The sidecar records the weights' SHA-256 so a mismatched
    pair is refused at load time.
    """
    from safetensors.torch import save as st_save

    path = Path(path)
    # safetensors refuses tensors that share storage; a contiguous copy of each makes every model storable
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in ckpt["state_dict"].items()}
    blob = st_save(tensors, metadata={"format": SIDECAR_FORMAT})
    write_bytes(path, blob)
    meta = {"format": SIDECAR_FORMAT, "version": VERSION, "weights": path.name,
            "weights_sha256": hashlib.sha256(blob).hexdigest()}
    meta.update({k: ckpt.get(k, {}) for k in _SIDECAR_KEYS})
    text = json.dumps(meta, indent=2, default=str).encode()
    side = write_bytes(sidecar_path(path), text)
    return path, side


def read_safetensors_pair(path: str | Path) -> dict:
    """Read ``model.safetensors`` (or its ``model.json``) into the same dict shape as ``read_checkpoint``."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    path = Path(path)
    weights = path.with_suffix(".safetensors")
    side = sidecar_path(weights)
    for p, what in ((weights, "weights file"), (side, "JSON sidecar")):
        if not p.is_file():
            raise CheckpointError(p, f"{what} not found; a safetensors checkpoint is a .safetensors + .json pair")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(side, f"sidecar is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise CheckpointError(side, f"not a smaformer sidecar (missing format={SIDECAR_FORMAT!r})")
    blob = weights.read_bytes()
    if meta.get("weights_sha256") not in (None, hashlib.sha256(blob).hexdigest()):
        raise CheckpointError(weights, f"SHA-256 does not match {side.name}; the pair is mismatched")
    try:
        state_dict = st_load(blob)
    except SafetensorError as e:
        raise CheckpointError(weights, f"not a readable safetensors file ({e})") from None
    ckpt = {"format": FORMAT, "version": meta.get("version", VERSION), "state_dict": state_dict, "train_state": {}}
    ckpt.update({k: meta.get(k, {}) for k in _SIDECAR_KEYS})
    if not isinstance(ckpt["model"], dict) or "name" not in ckpt["model"]:
        raise CheckpointError(side, "sidecar has no model name")
    return ckpt


def read_any_checkpoint(path: str | Path) -> dict:
    """``read_safetensors_pair`` for ``.safetensors``/``.json`` paths, ``read_checkpoint`` otherwise."""
    if Path(path).suffix in (".safetensors", ".json"):
        return read_safetensors_pair(path)
    return read_checkpoint(path)


def _unpickling_reason(e: Exception) -> str:
    """The informative line of torch's weights-only error (e.g. ``Unsupported global: GLOBAL os.system``)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(e).splitlines()]
    hit = next((ln for ln in lines if "Unsupported global" in ln or "Unsupported operand" in ln), None)
    reason = (hit or next((ln for ln in lines if ln), type(e).__name__)).removeprefix("WeightsUnpickler error: ")
    return reason.split(" was not an allowed global")[0]  # not torch's advice to allow-list the global


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict with ``weights_only=True``; refuse anything that needs pickle code."""
    path = check_readable(path, "checkpoint file", CheckpointError)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(path, "refused: the file needs pickle code to load (only weights_only=True "
                                    f"checkpoints are accepted): {_unpickling_reason(e)}") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(path, f"not a readable torch checkpoint ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else 'truncated?'})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(path, f"not a smaformer checkpoint (missing format={FORMAT!r}); "
                                    "use smaformer.weights.load_official for official checkpoints")
    return ckpt


def _check_fingerprint(fingerprint, path) -> None:
    """A stored training fingerprint the intensity guard can read, else a CheckpointError naming the file
    (before any case is read, instead of a raw TypeError per case)."""
    from smaformer.data.fingerprint import check_fingerprint
    try:
        check_fingerprint(fingerprint)
    except ValueError as e:
        raise CheckpointError(path, f"stored training fingerprint is corrupt ({e}); retrain, or remove the "
                                    "checkpoint's 'fingerprint' entry") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a checkpoint describes, load its weights, return ``(model.eval(), info)``.

    ``path`` is a ``.pt`` checkpoint or a ``.safetensors`` + ``.json`` pair. ``info`` holds ``classes``,
    ``preprocessing``, ``config``, ``metrics``, ``model``, ``path``, ``splits`` (the cross-validation
    record: ``{"fold", "folds", "seed", "source", "splits": [{"train", "val"}, ...]}``) and ``fingerprint``
    (the training set's ``data.fingerprint``) and ``postprocessing`` (the per-class choice made on validation,
    ``store_postprocessing``); these are None for checkpoints that lack them.
    """
    from smaformer.models import create_model

    ckpt = read_any_checkpoint(path)
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
    _check_fingerprint(ckpt.get("fingerprint"), path)
    info["path"] = str(path)
    info.update({k: ckpt.get(k) or None for k in ("splits", "fingerprint", "postprocessing")})
    return model.to(device).eval(), info


def store_postprocessing(path: str | Path, decision: dict) -> Path:
    """Record the post-processing chosen on validation in a checkpoint, rewriting it atomically: a ``.pt``
    file keeps everything else as it was; a safetensors pair gets it in its JSON sidecar."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        side = sidecar_path(path.with_suffix(".safetensors"))
        read_safetensors_pair(path)   # a missing or mismatched pair fails here, in one line naming the file
        meta = json.loads(side.read_text(encoding="utf-8"))
        meta["postprocessing"] = decision
        return write_bytes(side, json.dumps(meta, indent=2, default=str).encode())
    ckpt = read_checkpoint(path)
    ckpt["postprocessing"] = decision
    return save_checkpoint(ckpt, path)

"""The models a prediction runs: one checkpoint, or several averaged as an ensemble (``-c a.pt b.pt``).

A member is a ``.pt`` checkpoint, a ``.safetensors`` + ``.json`` pair, an exported ``.onnx`` file (run
through ONNX Runtime or OpenVINO) or an OpenVINO IR ``.xml`` (OpenVINO; the engine follows the suffix);
each brings its own preprocessing (input size, intensity, channels) from its metadata. Members must predict
the same classes; ``infer.volume.infer_ensemble`` averages them.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from smaformer.compiled import maybe_compile
from smaformer.data.fingerprint import intensity_warnings
from smaformer.errors import InputError
from smaformer.export.runtimes import RUNTIMES
from smaformer.infer.postprocess import check_decision, rule_for_all_classes
from smaformer.io_utils import check_readable
from smaformer.runtime import resolve_precision

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnxruntime", "openvino")
#: exported suffixes and the engines that run them (``auto`` picks the first)
EXPORTED = {".onnx": "onnxruntime or openvino", ".xml": "openvino"}
Member = tuple[Callable, dict]


def exported_device(engine: str, device: torch.device, auto: bool) -> torch.device:
    """Where an exported member runs. An explicit device is the runner's to honour or refuse (never a silent
    fallback); ``--device auto`` means the best device that member's runtime has: CUDA for ONNX Runtime when
    it has the CUDA provider, else the CPU, and the CPU for OpenVINO (its "GPU" is an Intel GPU)."""
    if not auto or device.type == "cpu":
        return device
    if engine == "onnxruntime" and device.type == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            return device
    return torch.device("cpu")


def load_predictor(path: str | Path, engine: str = "auto", device: str | torch.device = "cpu",
                   auto_device: bool = False) -> Member:
    """``(model_or_runner, info)`` for a checkpoint (.pt, .safetensors pair), an exported .onnx file or an
    OpenVINO IR (.xml); ``auto_device``: ``device`` came from ``--device auto`` (see ``exported_device``)."""
    from smaformer.checkpoint import load_checkpoint

    path = Path(path)
    if engine == "auto":
        engine = {".onnx": "onnxruntime", ".xml": "openvino"}.get(path.suffix, "torch")
    if engine not in ENGINES:
        raise InputError(path, f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if engine == "torch":
        if path.suffix in EXPORTED:
            raise InputError(path, f"an {path.suffix} file runs with --engine {EXPORTED[path.suffix]}")
        return load_checkpoint(path, device)
    if path.suffix == ".xml" and engine != "openvino":
        raise InputError(path, "an OpenVINO IR (.xml) runs with --engine openvino")
    if path.suffix not in EXPORTED:
        raise InputError(path, f"--engine {engine} needs an .onnx file (smaformer export --format onnx)"
                               + (" or an OpenVINO .xml" if engine == "openvino" else ""))
    if path.suffix == ".xml":
        check_readable(path.with_suffix(".bin"), "OpenVINO weights (.bin beside the .xml)")
    return RUNTIMES[engine](check_readable(path, "exported file"),
                            exported_device(engine, torch.device(device), auto_device))


def load_members(paths: str | Path | Sequence[str | Path], engine: str = "auto",
                 device: str | torch.device = "cpu", compile_model: bool = False,
                 auto_device: bool = False) -> list[Member]:
    """Every checkpoint of an ensemble; an ``onnxruntime``/``openvino`` engine applies to the .onnx members
    (an .xml member always runs with OpenVINO).
    Members whose classes differ from the first one's are refused (one line naming the file).
    ``compile_model``: torch members run through ``torch.compile`` (``smaformer.compiled``); ``auto_device``:
    ``device`` came from ``--device auto`` (exported members then run where their runtime can)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise InputError(None, "no checkpoint given")
    members = []
    for p in paths:
        own = engine if len(paths) == 1 or Path(p).suffix == ".onnx" or engine == "torch" else "auto"
        model, info = load_predictor(p, own, device, auto_device)
        if isinstance(model, torch.nn.Module):
            model = maybe_compile(model, compile_model, log.warning)
        members.append((model, info))
    first = _classes(members[0][1])
    for p, (_, info) in zip(paths[1:], members[1:], strict=True):
        if _classes(info) != first:
            raise InputError(p, f"classes {_classes(info)} differ from {paths[0]}'s {first}; the members of an "
                                "ensemble must predict the same classes")
    return members


def _classes(info: dict) -> list[str]:
    classes = list(info.get("classes") or [])
    k = (info.get("model") or {}).get("kwargs", {}).get("num_classes")
    return classes or [str(i) for i in range(int(k or 0))]


def members_as_run(members: Sequence[Member], paths: Sequence, device: torch.device, precision: str) -> list[dict]:
    """Per member: path, engine, device, precision and compile state as it runs (``infer.volume.placement``,
    the decision ``infer_volume`` follows); after a run, a torch.compile that fell back to eager says so."""
    from smaformer.infer.volume import placement

    return [{"path": str(p), **placement(m, device, precision)} for p, (m, _) in zip(paths, members, strict=True)]


def describe_members(records: list[dict]) -> str:
    """``a.pt (torch, cuda, bf16), b.xml (openvino, cpu, fp32)`` for the first output line."""
    return ", ".join(f"{Path(r['path']).name} ({r['engine']}, {r['device']}, {r['precision']})" for r in records)


def member_precision(members: Sequence[Member], precision: str, device: torch.device, where=None) -> str:
    """The autocast dtype for the torch members (exported files always run fp32)."""
    if any(isinstance(m, torch.nn.Module) for m, _ in members):
        return resolve_precision(precision, device)
    if precision in ("auto", "fp32"):
        return "fp32"
    raise InputError(where, f"--precision {precision} runs with --engine torch; exported files run fp32")


def resolve_postprocessing(postprocess: str | dict | None, members: Sequence[Member], paths: Sequence,
                           min_size: int = 0) -> dict | None:
    """The rule ``--postprocess`` means: ``auto``/None the stored choice (``stored_postprocessing``),
    ``none`` nothing, ``lcc`` / ``min_size`` (``min_size`` voxels) one rule for all classes, or a rule dict
    as it is (``infer.postprocess.apply_postprocessing``)."""
    if isinstance(postprocess, dict):
        try:
            check_decision(postprocess)
        except ValueError as e:
            raise InputError(None, f"post-processing rule: {e}") from None
        return postprocess
    if postprocess in (None, "auto"):
        return stored_postprocessing(members, paths)
    if postprocess == "none":
        return None
    try:
        return rule_for_all_classes(postprocess, min_size)
    except ValueError as e:
        raise InputError(None, f"{e} (or auto, none)") from None


def stored_postprocessing(members: Sequence[Member], paths: Sequence) -> dict | None:
    """The post-processing chosen on validation and stored in the checkpoint(s): for an ensemble only when
    every member stores the same decision (a decision made for one model is not one for their average)."""
    decisions = [info.get("postprocessing") for _, info in members]
    for path, decision in zip(paths, decisions, strict=True):
        try:
            check_decision(decision)
        except ValueError as e:
            raise InputError(path, f"stored post-processing is corrupt ({e}); run with --postprocess none, or "
                                   "choose it again with evaluate --choose-postprocessing") from None
    if all(d == decisions[0] for d in decisions):
        return decisions[0] or None
    log.warning("the members of the ensemble store different post-processing; none is applied "
                "(choose one for the ensemble with 'smaformer evaluate -c %s --choose-postprocessing')",
                " ".join(str(p) for p in paths))
    return None


def domain_warnings(members: list[Member], image: np.ndarray, spacing, case: str) -> list[str]:
    """The intensity/spacing guard of every member (its training fingerprint), each warning once."""
    found: list[str] = []
    for _, info in members:
        for w in intensity_warnings(info.get("fingerprint"), image, spacing, case, info.get("preprocessing")):
            if w not in found:
                found.append(w)
    return found

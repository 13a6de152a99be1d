"""Export a checkpoint to ONNX, TorchScript or safetensors, and check the export against eager PyTorch.

Every export is verified: the exported file runs on the example batch and the max abs difference to eager
must stay <= ``TOLERANCE``. Dynamic sizes are then *verified*, not assumed: the file is run at other batch
sizes (and, when the model declares ``dynamic_hw``, another H/W); a size that does not run or does not match
eager is reported as fixed, and for ONNX the graph input is pinned to it so runtimes refuse wrong shapes
instead of computing garbage. Preprocessing travels inside the file (ONNX metadata ``smaformer``,
TorchScript extra file ``smaformer.json``), so ``predict`` needs nothing else.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from smaformer.checkpoint import save_safetensors_pair
from smaformer.errors import SmaformerError
from smaformer.export.metadata import DIM_NAMES, META_KEY, ExportMetadata
from smaformer.io_utils import atomic_path

TOLERANCE = 1e-3


class ExportError(SmaformerError):
    """An export that failed or does not reproduce the eager model."""


@dataclass
class ExportResult:
    """What was written and what was verified: max abs difference per checked input shape."""

    path: Path
    fmt: str
    exporter: str = ""
    checks: dict[str, float] = field(default_factory=dict)
    dims: dict[str, int | None] = field(default_factory=dict)  # batch/height/width -> None (dynamic) or N
    notes: list[str] = field(default_factory=list)
    tolerance: str = f"<= {TOLERANCE:g}"   # what the checks were held to (fp16: relative, see export.half)

    @property
    def max_diff(self) -> float:
        return max(self.checks.values(), default=0.0)

    def summary(self) -> str:
        lines = [f"wrote {self.path} ({self.fmt}{', ' + self.exporter if self.exporter else ''})"]
        lines += [f"  max |eager - export| at {shape}: {d:.3g}" for shape, d in self.checks.items()]
        lines += [f"  {k}: {'dynamic' if v is None else f'fixed at {v}'}" for k, v in self.dims.items()]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  parity OK (max abs diff {self.max_diff:.3g} {self.tolerance})")
        return "\n".join(lines)


def _example(info: dict, batch: int = 2) -> torch.Tensor:
    pre = info["preprocessing"]
    h, w = pre["img_size"]
    return torch.rand(batch, int(pre["in_chans"]), int(h), int(w), generator=torch.Generator().manual_seed(0))


def _variants(x: torch.Tensor, dynamic_hw: bool) -> dict[str, torch.Tensor]:
    """Inputs that probe each dimension: other batch sizes, and H/W + 32 when the model allows it."""
    b, c, h, w = x.shape
    out = {"batch": torch.rand(b + 1, c, h, w)}
    if dynamic_hw:
        out["height/width"] = torch.rand(1, c, h + 32, w + 32)
    return out


def _diff(run: Callable[[torch.Tensor], np.ndarray], model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        ref = model(x).float().numpy()
    got = np.asarray(run(x), dtype=np.float32)
    if got.shape != ref.shape:
        return float("inf")
    return float(np.abs(got - ref).max())


def _verify(result: ExportResult, run, model: nn.Module, x: torch.Tensor, dynamic_hw: bool) -> None:
    """Fill ``result.checks`` / ``result.dims``; raise ExportError if the example batch itself mismatches."""
    shape = lambda t: "x".join(str(s) for s in t.shape)  # noqa: E731
    try:
        d = _diff(run, model, x)
    except Exception as e:  # noqa: BLE001 - any runtime failure on the example is an export failure
        raise ExportError(f"{result.path}: exported model does not run on {shape(x)}: {e}") from None
    result.checks[shape(x)] = d
    if not d <= TOLERANCE:
        raise ExportError(f"{result.path}: max abs difference {d:.3g} > {TOLERANCE:g} at {shape(x)}")
    b, _, h, w = x.shape
    result.dims = {"batch": b, "height": h, "width": w}
    for which, v in _variants(x, dynamic_hw).items():
        try:
            d = _diff(run, model, v)
        except Exception:  # noqa: BLE001 - a shape the runtime refuses is a fixed dimension
            d = float("inf")
        if d <= TOLERANCE:
            result.checks[shape(v)] = d
            for k in (("batch",) if which == "batch" else ("height", "width")):
                result.dims[k] = None
    if not dynamic_hw:
        result.notes.append("height/width fixed: the model declares dynamic_hw=False")


def _reason(e: Exception) -> str:
    """The informative line of an exporter's error: torch.onnx ends its messages with "Refer to the full stack
    trace above", which a one-line report has not got."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and "full stack trace" not in ln]
    return lines[-1][:300] if lines else "(no message)"


def _require(model: nn.Module, fmt: str) -> bool:
    """Refuse an export the model declares False in ``export_flags``; returns its ``dynamic_hw`` flag."""
    flags = getattr(model, "export_flags", {})
    if not flags.get(fmt, True):
        raise ExportError(f"{type(model).__name__} declares {fmt}=False in export_flags; it cannot be exported "
                          f"to {fmt}")
    return bool(flags.get("dynamic_hw", False))


def _onnx_run(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x.numpy()})[0]


def _torch_onnx_export(model: nn.Module, x: torch.Tensor, path: Path, dynamo: bool, dynamic_hw: bool) -> None:
    axes = {0: "batch", **({2: "height", 3: "width"} if dynamic_hw else {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            from torch.export import Dim

            prog = torch.onnx.export(model, (x,), dynamo=True, input_names=["image"], output_names=["logits"],
                                     dynamic_shapes=({k: Dim.DYNAMIC for k in axes},), verbose=False)
            prog.save(str(path), external_data=False)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": axes, "logits": axes}, opset_version=17)


def _finish_onnx(path: Path, meta: ExportMetadata) -> None:
    """Pin unverified dims of the graph input to their example value and embed the metadata."""
    import onnx

    m = onnx.load(str(path))
    for axis, key in zip((0, 2, 3), DIM_NAMES, strict=True):
        if meta.input_dims.get(key) is not None:
            d = m.graph.input[0].type.tensor_type.shape.dim[axis]
            d.Clear()
            d.dim_value = meta.input_dims[key]
    m.metadata_props.add(key=META_KEY, value=meta.to_json())
    onnx.save(m, str(path))


def export_onnx(model: nn.Module, info: dict, path: str | Path,
                exporters: tuple[str, ...] = ("dynamo", "torchscript")) -> ExportResult:
    """ONNX with dynamic batch (and H/W where the model allows it). Tries the torch.export-based exporter
    ("dynamo") first and the TorchScript-based one if that fails; the first that passes the parity check
    wins. ``exporters`` narrows the choice (the TorchScript-based one is faster but deprecated upstream)."""
    path = Path(path)
    dynamic_hw = _require(model, "onnx")
    x = _example(info)
    errors = []
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with atomic_path(path) as tmp:   # nothing replaces ``path`` unless an exporter passes the parity check
        for dynamo in (e == "dynamo" for e in exporters):
            label = "torch.export (dynamo) exporter" if dynamo else "TorchScript-based exporter"
            result = ExportResult(path, "onnx", label)
            try:
                _torch_onnx_export(model, x, tmp, dynamo, dynamic_hw)
                _verify(result, _onnx_run(tmp), model, x, dynamic_hw)
            except Exception as e:  # noqa: BLE001 - try the next exporter, report all failures at the end
                errors.append(f"{label}: {type(e).__name__}: {_reason(e)}")
                continue
            result.notes += [f"fell back after {m}" for m in errors]
            _finish_onnx(tmp, ExportMetadata.of(info, result.dims))
            return result
        raise ExportError(f"{path}: ONNX export failed; " + " | ".join(errors))


def export_torchscript(model: nn.Module, info: dict, path: str | Path) -> ExportResult:
    """TorchScript by tracing (control flow on shapes is frozen at the example, so sizes are verified)."""
    path = Path(path)
    dynamic_hw = _require(model, "torchscript")
    x = _example(info)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(model, x, check_trace=False)
        except Exception as e:  # noqa: BLE001 - tracing failures are export failures for the user
            raise ExportError(f"{path}: TorchScript trace failed: {type(e).__name__}: {e}") from None
    result = ExportResult(path, "torchscript", "torch.jit.trace")
    _verify(result, lambda t: traced(t).detach().numpy(), model, x, dynamic_hw)
    meta = ExportMetadata.of(info, result.dims)
    with atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp), _extra_files={f"{META_KEY}.json": meta.to_json()})
    return result


def export_safetensors(model: nn.Module, ckpt: dict, path: str | Path) -> ExportResult:
    """Weights as safetensors + JSON sidecar; verified by rebuilding the model from the pair."""
    from smaformer.checkpoint import load_checkpoint

    weights, side = save_safetensors_pair(ckpt, path)
    result = ExportResult(weights, "safetensors", f"sidecar {side.name}")
    reloaded, info = load_checkpoint(weights)
    x = _example(info)
    d = _diff(lambda t: reloaded(t).detach().numpy(), model, x)
    result.checks["x".join(str(s) for s in x.shape)] = d
    if not d <= TOLERANCE:
        raise ExportError(f"{weights}: reloaded weights differ from the checkpoint (max abs diff {d:.3g})")
    return result

"""The contract between an exported file and the runtimes that read it, written and read in one place.

An exported ONNX file carries a JSON block under the metadata key ``smaformer`` (a TorchScript file carries
the same JSON as the extra file ``smaformer.json``, an OpenVINO IR in its ``rt_info`` under ``smaformer``):
the model, the class names, the preprocessing and the input dimensions that were *verified* dynamic
(``None``) or fixed (their size).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from smaformer.errors import InputError

META_KEY = "smaformer"
EXPORT_FORMAT = "smaformer-export"
DIM_NAMES = ("batch", "height", "width")


@dataclass
class ExportMetadata:
    """What ``predict`` needs besides the graph: ``input_dims`` maps batch/height/width to None (dynamic)
    or the one size the file accepts."""

    model: dict
    classes: list[str]
    preprocessing: dict
    input_dims: dict[str, int | None] = field(default_factory=dict)
    format: str = EXPORT_FORMAT
    fingerprint: dict | None = None       # the training set's, for the domain guard
    postprocessing: dict | None = None    # the per-class choice made on validation

    @classmethod
    def of(cls, info: dict, dims: dict[str, int | None]) -> ExportMetadata:
        """From a checkpoint's ``info`` and the verified dims."""
        return cls(info["model"], list(info["classes"]), info["preprocessing"], dict(dims),
                   fingerprint=info.get("fingerprint"), postprocessing=info.get("postprocessing"))

    @property
    def static_batch(self) -> int | None:
        return self.input_dims.get("batch")

    @property
    def info(self) -> dict:
        """The ``info`` dict ``load_checkpoint`` gives, so exported files and checkpoints are used alike."""
        return {"model": self.model, "classes": self.classes, "preprocessing": self.preprocessing,
                "input_dims": self.input_dims, "fingerprint": self.fingerprint, "postprocessing": self.postprocessing}

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str, where: str | Path) -> ExportMetadata:
        try:
            d = json.loads(text)
            dims = {k: _dim(d["input_dims"].get(k)) for k in DIM_NAMES}
            return cls(d["model"], list(d["classes"]), d["preprocessing"], dims,
                       fingerprint=d.get("fingerprint"), postprocessing=d.get("postprocessing"))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise InputError(where, f"smaformer metadata is unreadable ({type(e).__name__}: {e}); "
                                    "export the checkpoint again with `smaformer export`") from None


def _dim(value: int | str | None) -> int | None:
    """A stored dim: None or an int; files exported before 2026-12 wrote "dynamic" / "fixed at N"."""
    if value is None or value == "dynamic":
        return None
    return int(str(value).rsplit(" ", 1)[-1])


def read_onnx_metadata(path: Path) -> ExportMetadata:
    """The ``smaformer`` block of an exported ONNX file (or of a ``.json`` sidecar next to it)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises assorted types for non-ONNX files
        raise InputError(path, f"not a readable ONNX file ({type(e).__name__})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if META_KEY in props:
        return ExportMetadata.from_json(props[META_KEY], path)
    side = path.with_suffix(".json")
    if side.is_file():
        return ExportMetadata.from_json(side.read_text(encoding="utf-8"), side)
    raise InputError(path, "ONNX file has no smaformer metadata (preprocessing); export it with "
                           "`smaformer export --format onnx`")

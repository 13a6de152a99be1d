"""Prediction on real scans: NIfTI files or folders, DICOM series, PNG/JPG/TIFF images (``smaformer predict``).

Everything the model needs (intensity window, channel mode, input size, class names) comes from the
checkpoint: a ``.pt`` file, a ``.safetensors`` + ``.json`` pair, or an exported ``.onnx`` file whose metadata
carries the same block (run through ONNX Runtime or OpenVINO). Volumes run slice by slice in batches via
``infer_volume`` (only one batch of logits in memory). A label NIfTI keeps the input's shape, affine and
header; it is written to a temp file, re-read and compared with the input's geometry (TotalSegmentator
does the same check) and only then moved into place. A failing case is reported and the others go on.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from smaformer import __version__
from smaformer.data.arrays import H5_SUFFIXES
from smaformer.data.io import IMAGE_SUFFIXES, is_nifti, read_image, write_labels
from smaformer.errors import InputError
from smaformer.infer.dicom_seg import read_source_series, write_dicom_seg
from smaformer.infer.members import (
    Member,
    describe_members,
    domain_warnings,
    load_members,
    member_precision,
    members_as_run,
    resolve_postprocessing,
)
from smaformer.infer.parts import resolve_part
from smaformer.infer.postprocess import apply_postprocessing, describe_postprocessing
from smaformer.infer.rtstruct import write_rtstruct
from smaformer.infer.volume import infer_ensemble
from smaformer.io_utils import atomic_path, check_output, clean_stale_temps, write_text
from smaformer.runtime import resolve_device

OUTPUT_SUFFIXES = (".nii", ".nii.gz", ".png", ".tif", ".tiff", ".dcm")
# nifti: NIfTI volumes (PNG/TIFF for 2D images and TIFF stacks); the DICOM outputs reference their source instances
OUTPUT_TYPES = ("nifti", "dicom-seg", "dicom-rtstruct")
DICOM_OUTPUTS = ("dicom-seg", "dicom-rtstruct")


@dataclass
class CaseResult:
    """One input: where it went, how long it took, or why it failed."""

    source: Path
    output: Path | None = None
    slices: int = 0
    seconds: float = 0.0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ input/output
def _is_case_file(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and (is_nifti(p)
                                                           or p.suffix.lower() in IMAGE_SUFFIXES + H5_SUFFIXES)


def list_cases(inp: str | Path) -> list[Path]:
    """Cases of an input: a file; a folder of NIfTI/image files; a DICOM series folder; or a folder of
    DICOM series folders."""
    inp = Path(inp)
    if not inp.exists():
        raise InputError(inp, "input not found")
    if inp.is_file():
        return [inp]
    files = sorted(p for p in inp.iterdir() if _is_case_file(p))
    if files:
        return files
    if any(p.is_file() and not p.name.startswith(".") for p in inp.iterdir()):
        return [inp]  # a DICOM series folder
    subdirs = sorted(p for p in inp.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise InputError(inp, "empty folder: no NIfTI, DICOM or image files")
    return subdirs


def case_stem(p: Path) -> str:
    name = p.name
    for suf in (".nii.gz", ".nii", ".npy.h5", *H5_SUFFIXES, *IMAGE_SUFFIXES, ".dcm"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def output_path(case: Path, output: Path, single: bool, props: dict, output_type: str = "nifti") -> Path:
    """``output`` itself for one case named like a label file; else ``output/<case>.nii.gz`` (volumes),
    ``output/<case>.png`` (2D images), ``output/<case>.tif`` (TIFF stacks) or ``output/<case>.dcm`` (a DICOM
    SEG), nnU-Net style."""
    if output_is_file(output, single):
        return output
    if output_type in DICOM_OUTPUTS:
        suffix = ".dcm"
    elif not props.get("is_volume", True):
        suffix = ".png"
    else:
        suffix = ".nii.gz" if props.get("affine") is not None else ".tif"
    return output / (case_stem(case) + suffix)


def output_is_file(output: Path, single: bool) -> bool:
    """Whether ``output`` names one label file (one case) rather than a folder of outputs."""
    return single and output.name.lower().endswith(OUTPUT_SUFFIXES) and not output.is_dir()


def check_outputs(inp: Path, cases: list[Path], output: Path, single: bool, output_type: str = "nifti",
                  checkpoints: list[Path] = ()) -> None:
    """Before any model is loaded: the output can be written, and it writes over no input: neither the input
    itself, nor any case (whatever suffix a case's output gets), nor a checkpoint or its sidecar (a
    ``<name>.json`` summary beside ``-o <name>.nii.gz`` would replace a ``<name>.json`` sidecar); two cases
    never share an output name; a DICOM SEG is asked for DICOM series (folders) only, and named ``.dcm``."""
    if output_type not in OUTPUT_TYPES:
        raise InputError(None, f"unknown output type {output_type!r}; use one of {', '.join(OUTPUT_TYPES)}")
    for case in cases if output_type in DICOM_OUTPUTS else []:
        if not case.is_dir():
            raise InputError(case, f"--output-type {output_type} needs DICOM series folders as input: it references "
                                   "its source instances")
    is_file = output_is_file(output, single)
    if is_file and (output.suffix.lower() == ".dcm") != (output_type in DICOM_OUTPUTS):
        raise InputError(output, "a DICOM SEG or RTSTRUCT is named *.dcm, and only --output-type dicom-seg or "
                                 "dicom-rtstruct writes one")
    beside = {".safetensors": ".json", ".json": ".safetensors", ".xml": ".bin"}   # the files a checkpoint pairs with
    models = [q for c in checkpoints for q in [c, *([c.with_suffix(beside[c.suffix])] if c.suffix in beside else [])]]
    inputs = [inp, *cases, *models]
    check_output(output, folder=not is_file, inputs=inputs)
    if is_file:
        stem = case_stem(output)
        for extra in (output.with_name(f"{stem}.json"), output.with_name(f"{stem}_probabilities.npz")):
            check_output(extra, inputs=inputs)
        return
    sources = {c.resolve() for c in cases}
    by_stem: dict[str, Path] = {}
    for case in cases:
        stem = case_stem(case)
        if stem in by_stem:
            raise InputError(case, f"{by_stem[stem].name} and {case.name} would both be written as {stem}.* in "
                                   f"{output}; rename one or segment them separately")
        by_stem[stem] = case
        for name in (f"{stem}{s}" for s in (".nii.gz", ".png", ".tif", ".dcm", "_probabilities.npz")):
            if (output / name).resolve() in sources:
                raise InputError(output / name, "this output would write over an input case; choose another "
                                                 "output folder")


def check_geometry(written: Path, props: dict) -> None:
    """Re-read a written label NIfTI: shape and affine must equal the input's (exactly for NIfTI input,
    to float32 precision for DICOM, whose affine is derived)."""
    out = nib.load(str(written))
    ref_shape = tuple(int(s) for s in props["file_shape"])
    if props["format"] == "nifti":
        ref = nib.load(props["path"])
        ref_shape, ref_affine, exact = tuple(ref.shape[:3]), ref.affine, True
    else:
        ref_affine, exact = props["affine"], False
    same = np.array_equal(out.affine, ref_affine) if exact else np.allclose(out.affine, ref_affine, atol=1e-4)
    if tuple(out.shape) != ref_shape or not same:
        raise InputError(props["path"], f"output geometry differs from the input (shape {out.shape} vs "
                                        f"{ref_shape}, affine equal: {same}); nothing written")


def _write_case(out: Path, labels: np.ndarray, props: dict, classes: list[str]) -> None:
    if not props.get("is_volume", True):
        write_labels(out, labels[0], props, classes)
    else:  # a NIfTI is re-read and vetted before it replaces anything; a TIFF stack has no geometry to keep
        write_labels(out, labels, props, classes, check=lambda tmp: check_geometry(tmp, props))


def _as_volume(image: np.ndarray, props: dict) -> np.ndarray:
    """(D,H,W) or (D,C,H,W) for ``infer_ensemble``; a 2D (C,H,W) image is one slice (a colour image going
    into a grey model is averaged there, per member)."""
    return image if props.get("is_volume", True) or image.shape[0] == 1 else image[None]


# ---------------------------------------------------------------------------------------------- driver
@dataclass
class Settings:
    """How every case of a ``predict`` call runs."""

    batch_size: int = 16
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    tta: bool = False
    inference: str | None = None
    postprocessing: dict | None = None
    save_probabilities: bool = False
    progress: bool = False
    output_type: str = "nifti"


def predict_case(members: list[Member], case: Path, output: Path, settings: Settings, *,
                 single: bool = True) -> tuple[Path, int, list[str]]:
    """Segment one case with the members (averaged) and write it (see ``output_path``); returns
    ``(written path, slices, warnings of the intensity guard)``."""
    info = members[0][1]
    image, props = read_image(case, dtype=None)  # stored type (int16 CT stays int16: half the memory)
    if image.dtype == np.float64:
        image = image.astype(np.float32)
    warnings = props.get("warnings", []) + domain_warnings(members, image, props.get("spacing"), case_stem(case))
    out = output_path(case, Path(output), single, props, settings.output_type)
    sources = read_source_series(case, props) if settings.output_type in DICOM_OUTPUTS else None
    vol = _as_volume(image, props)
    try:
        result = infer_ensemble([(m, i["preprocessing"]) for m, i in members], vol, batch_size=settings.batch_size,
                                device=settings.device, precision=settings.precision, tta=settings.tta,
                                inference=settings.inference, return_probabilities=settings.save_probabilities,
                                progress=settings.progress)
    except ValueError as e:
        raise InputError(case, str(e)) from None
    labels, probs = result if settings.save_probabilities else (result, None)
    labels = apply_postprocessing(labels, settings.postprocessing)
    if settings.output_type == "dicom-rtstruct":
        write_rtstruct(out, labels, sources, case, list(info.get("classes") or []))
    elif sources is not None:
        write_dicom_seg(out, labels, sources, list(info.get("classes") or []),
                        model_name=str((info.get("model") or {}).get("name", "model")), version=__version__)
    else:
        _write_case(out, labels, props, list(info.get("classes") or []))
    if probs is not None:
        stem = out.name[: -len(".nii.gz")] if out.name.endswith(".nii.gz") else out.stem
        with atomic_path(out.with_name(stem + "_probabilities.npz")) as tmp:
            np.savez_compressed(tmp, probabilities=probs, classes=np.array(info.get("classes") or []))
    return out, int(vol.shape[0]), warnings


def predict(inp: str | Path, output: str | Path, checkpoint: str | Path | list, *, engine: str = "auto",
            device: str = "auto", precision: str = "fp32", batch_size: int = 16, save_probabilities: bool = False,
            tta: bool = False, inference: str | None = None, postprocess: str | dict | None = "auto",
            min_size: int = 0, output_type: str = "nifti", progress: bool = True,
            log: Callable[[str], None] = print, num_parts: int | None = None, part_id: int | None = None,
            torchrun: bool = False, compile_model: bool = False,
            deliver: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
    """Segment every case of ``inp`` into ``output`` with one checkpoint or an ensemble of several;
    failing cases are reported and skipped.

    ``postprocess`` is ``"auto"`` (the checkpoint's stored choice), ``"none"``, ``"lcc"``, ``"min_size"``
    (with ``min_size`` voxels) or a rule dict (``infer.members.resolve_postprocessing``). ``output_type``
    ``dicom-seg`` writes a DICOM SEG per DICOM series (``infer.dicom_seg``) instead of a NIfTI.
    ``num_parts``/``part_id`` (or, with ``torchrun=True``, torchrun's ranks) segment one share of the cases
    (``infer.parts``); the summary is then ``predict_part{K}_of_{N}.json``. ``deliver``: called with each
    written case (``infer.pacs`` stores it in an archive); an ``InputError`` it raises fails that case.
    """
    part = resolve_part(num_parts, part_id, torchrun=torchrun)
    paths = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
    cases, output = list_cases(inp), Path(output)
    single = cases == [Path(inp)]
    check_outputs(Path(inp), cases, output, single, output_type, [Path(c) for c in paths])
    clean_stale_temps(output.parent if output_is_file(output, single) else output)
    auto = str(device or "auto") == "auto"   # exported members then run where their runtime can
    device = part.device(resolve_device(device))
    members = load_members(paths, engine, device, compile_model=compile_model, auto_device=auto)
    settings = Settings(batch_size=batch_size, device=device, tta=tta, inference=inference,
                        precision=member_precision(members, precision, device, paths[0]),
                        postprocessing=resolve_postprocessing(postprocess, members, paths, min_size),
                        save_probabilities=save_probabilities, progress=progress, output_type=output_type)
    log(f"{len(members)} model(s): {describe_members(members_as_run(members, paths, device, settings.precision))}; "
        f"tta {'on' if tta else 'off'}, inference {inference or 'per checkpoint'}, post-processing "
        f"{describe_postprocessing(settings.postprocessing)}")
    if part.split:
        log(f"{part.describe()}: {len(part.take(cases))} of {len(cases)} cases")
        cases = part.take(cases)
    bar = cases
    if progress and len(cases) > 1:
        from tqdm.auto import tqdm

        bar = tqdm(cases, desc="cases", unit="case")
    results = []
    for case in bar:
        res = CaseResult(case)
        t0 = time.perf_counter()
        try:
            res.output, res.slices, res.warnings = predict_case(members, case, output, settings, single=single)
            for w in res.warnings:
                log(f"WARNING {w}")
        except Exception as e:  # noqa: BLE001 - one bad case must not stop the batch; reported below
            res.output, res.error = None, str(e).splitlines()[0] if str(e) else type(e).__name__
            log(f"FAILED {case}: {res.error}")
        res.seconds = time.perf_counter() - t0
        if res.error is None:
            log(f"{case} -> {res.output} ({res.slices} slices, {res.seconds:.1f} s)")
            if deliver is not None:
                try:
                    deliver(res)
                except InputError as e:     # the output stays written; the case is reported as failed
                    res.error = str(e)
                    log(f"FAILED {e}")
        results.append(res)
    _write_summary(output, single, members_as_run(members, paths, device, settings.precision), settings, results,
                   part.suffix())
    return results


def _write_summary(output: Path, single: bool, runs: list[dict], settings: Settings, results: list[CaseResult],
                   suffix: str = "") -> Path:
    """``predict.json`` beside the outputs (``<name>.json`` for a single output file; ``suffix`` names a part's
    own): the models as they ran (``members``), the settings asked for, and per case its output, time, guard
    warnings or error."""
    path = (output.with_name(case_stem(output) + suffix + ".json") if output_is_file(output, single)
            else output / f"predict{suffix}.json")
    doc = {"format": "smaformer-predictions", "version": 1, "checkpoints": [r["path"] for r in runs],
           "members": runs, "precision": settings.precision, "device": str(settings.device), "tta": settings.tta,
           "inference": settings.inference or "per checkpoint",
           "postprocessing": describe_postprocessing(settings.postprocessing),
           "cases": [{**asdict(r), "source": str(r.source), "output": r.output and str(r.output)} for r in results]}
    return write_text(path, json.dumps(doc, indent=1))

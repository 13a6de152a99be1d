"""Evaluate a checkpoint on a dataset of volumes: per case and per class metrics in both conventions.

``evaluate`` runs the volume protocol (``infer.volume.infer_volume``) on every case of a reader, scores
it with ``smaformer.metrics.case_metrics`` and writes, into ``out_dir``: ``metrics.json`` (nnU-Net-like
``metric_per_case`` / ``mean`` / ``foreground_mean``, both conventions, the config and the checkpoint's
SHA-256), ``summary.csv``, ``report.html``, overlay PNGs and, optionally, NIfTI predictions. A case that
fails is recorded and skipped. ``volume_dice`` is the light version training calls for validation.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smaformer import metrics as M
from smaformer.data.arrays import spacing_affine
from smaformer.data.sample import Sample, SampleList, iter_cases
from smaformer.errors import InputError
from smaformer.infer.postprocess import PostprocessingSearch, apply_postprocessing, describe_postprocessing
from smaformer.infer.volume import infer_ensemble, infer_volume
from smaformer.io_utils import atomic_path, check_output, file_sha256, write_text
from smaformer.runtime import resolve_device

log = logging.getLogger(__name__)

FORMAT = "smaformer-evaluation"
STANDARD_RULE = ("both masks empty -> NaN, left out of means (nanmean); exactly one empty -> Dice/IoU 0 and "
                 "HD95/ASSD = the volume diagonal; cases counted as pred_only / ref_only / both_empty")
LEGACY_RULE = ("TransUNet/Swin-Unet calculate_metric_percase: both non-empty -> medpy dc and hd95 in voxels "
               "(no spacing); prediction non-empty and reference empty -> (1, 0); otherwise (0, 0)")


def _nan_to_none(obj: Any) -> Any:
    """JSON has no NaN: write null instead."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def _mean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def aggregate(per_case: list[dict], labels: list[int]) -> tuple[dict, dict]:
    """Per-class means (``mean``) and their mean over classes (``foreground_mean``), per convention."""
    mean: dict[str, dict] = {}
    for k in labels:
        rows = [c["metrics"][str(k)] for c in per_case]
        mean[str(k)] = {
            "standard": {m: _mean([r["standard"][m] for r in rows]) for m in ("dice", "iou", "hd95", "assd")},
            "legacy": {m: _mean([r["legacy"][m] for r in rows]) for m in ("dice", "hd95")},
            "slice": {"dice": _mean([r["slice"]["dice"] for r in rows if "slice" in r])},
            "counts": {"n_cases": len(rows), "pred_only": sum(r["empty"] == "ref" for r in rows),
                       "ref_only": sum(r["empty"] == "pred" for r in rows),
                       "both_empty": sum(r["empty"] == "both" for r in rows)},
        }
    fg = {conv: {m: _mean([mean[str(k)][conv][m] for k in labels]) for m in keys}
          for conv, keys in (("standard", ("dice", "iou", "hd95", "assd")), ("legacy", ("dice", "hd95")),
                             ("slice", ("dice",)))}
    return mean, fg


def _case_fg(metrics: dict[str, dict]) -> dict:
    rows = list(metrics.values())
    return {"standard": {"dice": _mean([r["standard"]["dice"] for r in rows]),
                         "hd95": _mean([r["standard"]["hd95"] for r in rows])},
            "legacy": {"dice": _mean([r["legacy"]["dice"] for r in rows])}}


def _save_prediction(path: Path, pred: np.ndarray, meta: dict, classes: list[str]) -> Path:
    """NIfTI with the input's geometry when the reader kept it, else an affine from the spacing."""
    from smaformer.data.io import write_labels

    if meta.get("props") is not None:
        return write_labels(path, pred, meta["props"], classes)
    import nibabel as nib

    affine = spacing_affine(meta.get("spacing") or (1.0,) * pred.ndim)
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(pred.astype(np.uint8).T, affine), str(tmp))
    return path


def evaluate(checkpoint: str | Path | list, data: Any, out_dir: str | Path, *, split: str | None = "val",
             layout: str | None = None, legacy_resize: bool = False, postprocess: str | dict | None = "auto",
             min_size: int = 0, choose_postprocessing: bool = False, tta: bool = False,
             inference: str | None = None, engine: str = "auto", save_nifti: bool = False, overlays: int = 3,
             device: str | None = None, batch_size: int = 16, precision: str = "fp32",
             cases: list[str] | None = None, progress: bool = True, num_parts: int | None = None,
             part_id: int | None = None, torchrun: bool = False, compile_model: bool = False) -> dict:
    """Evaluate ``checkpoint`` (one path, or several averaged as an ensemble) on ``data`` (a dataset path
    for ``open_dataset``, a reader or a list of Samples) into ``out_dir``.

    ``postprocess`` is ``"auto"`` (what the checkpoint stores, chosen on validation; none if it stores
    nothing), ``"none"``, ``"lcc"``, ``"min_size"`` (with ``min_size`` voxels) or a rule dict
    (``infer.postprocess.apply_postprocessing``). ``choose_postprocessing``
    scores the raw predictions, chooses the per-class post-processing that helps validation Dice, reports
    it under ``postprocessing`` and stores it in a single checkpoint. ``overlays`` slices per case go to
    PNGs and into report.html. Returns the metrics.json dict.

    ``num_parts``/``part_id`` (or, with ``torchrun=True``, torchrun's ranks) score one share of the cases
    (``infer.parts``): under torchrun every rank returns the merged result and rank 0 writes it; a part writes
    ``metrics_part{K}_of_{N}.json`` for ``merge_part_files`` and returns its own result.
    """
    from smaformer.data import open_dataset
    from smaformer.infer.members import (
        describe_members,
        domain_warnings,
        load_members,
        member_precision,
        members_as_run,
    )
    from smaformer.infer.parts import gather, resolve_part
    from smaformer.infer.report import overlay_png, select_slices

    part = resolve_part(num_parts, part_id, torchrun=torchrun)
    if part.split and choose_postprocessing:
        raise InputError(None, "--choose-postprocessing needs every validation case in one process; run it "
                               "without --num-parts or torchrun")
    paths = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)
    out = check_output(out_dir, folder=True, inputs=[*paths, *([data] if isinstance(data, (str, Path)) else [])])
    auto = str(device or "auto") == "auto"   # exported members then run where their runtime can
    device = part.device(resolve_device(device))
    members = load_members(paths, engine, device, compile_model=compile_model, auto_device=auto)
    precision = member_precision(members, precision, device, paths[0])
    log.info("%d model(s): %s", len(members), describe_members(members_as_run(members, paths, device, precision)))
    info = members[0][1]
    decision = _postprocessing(postprocess, min_size, choose_postprocessing, members, paths)
    if isinstance(data, (list, tuple)):
        data = SampleList(list(data))
    reader = data if hasattr(data, "load_case") else open_dataset(data, layout=layout, split=split)
    if choose_postprocessing and getattr(reader, "split", None) == "test":
        raise InputError(getattr(reader, "root", None), "--choose-postprocessing on the test split would tune on "
                                                        "the cases you report: choose it on validation data")
    num_classes = int(info["model"]["kwargs"].get("num_classes", len(info["classes"])))
    names = list(info["classes"]) or [str(i) for i in range(num_classes)]
    data_classes = list(getattr(reader, "classes", None) or [])
    if data_classes and data_classes != names:
        log.warning("the data's classes %s differ from the checkpoint's %s: scores are reported under the "
                    "checkpoint's names", data_classes, names)
    labels = list(range(1, num_classes))
    class_map = {k: names[k] if k < len(names) else str(k) for k in labels}
    search = PostprocessingSearch(labels) if choose_postprocessing else None
    todo = part.take(list(cases) if cases is not None else list(reader.cases()))
    _warn_if_chosen_here(decision, todo)
    config = {"legacy_resize": legacy_resize, "postprocess": postprocess, "min_size": min_size,
              "postprocessing_applied": describe_postprocessing(decision), "postprocessing_rule": decision,
              "choose_postprocessing": choose_postprocessing, "tta": tta, "inference": inference or "per checkpoint",
              "batch_size": batch_size, "precision": precision, "device": str(device),
              "preprocessing": info["preprocessing"], "overlays": overlays, "save_nifti": save_nifti}

    per_case, failed, overlay_paths, units = [], [], {}, set()
    it = todo
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(todo, desc="cases", unit="case")
    for case, sample, fault in iter_cases(reader, it):
        if fault is not None:
            log.warning("case %s failed: %s", case, fault)
            failed.append({"case": case, "error": f"InputError: {fault}"})
            continue
        if sample.label is not None and sample.label.size and int(sample.label.max()) >= num_classes:
            # not a bad case: the checkpoint does not fit the data, so no case can be scored
            raise InputError(sample.meta.get("label_path") or sample.meta.get("path") or case,
                             f"label value {int(sample.label.max())} is outside the checkpoint's classes "
                             f"0..{num_classes - 1} ({', '.join(names)}): this checkpoint was not trained for "
                             "this data")
        try:
            if sample.label is None:
                raise ValueError("no ground-truth label to evaluate against")
            was_2d = not sample.is_volume
            vol = sample.as_volume()
            image, ref = vol.image, vol.label
            warnings = domain_warnings(members, image, sample.meta.get("spacing"), case)
            for w in warnings:
                log.warning("%s", w)
            t0 = time.perf_counter()
            pred = infer_ensemble([(m, i["preprocessing"]) for m, i in members], image, batch_size=batch_size,
                                  device=device, precision=precision, legacy_resize=legacy_resize, tta=tta,
                                  inference=inference)
            if search is not None:
                search.add(pred, ref)
            pred = apply_postprocessing(pred, decision)
            seconds = time.perf_counter() - t0
            spacing = sample.meta.get("spacing")
            units.add("voxel" if spacing is None else "mm")
            res = M.case_metrics(pred[0] if was_2d else pred, ref[0] if was_2d else ref, labels,
                                 spacing=spacing)
            metrics = {str(k): v for k, v in res.items()}
            entry = {"case": case, "shape": list(ref.shape[1:] if was_2d else ref.shape),
                     "spacing": None if spacing is None else [float(s) for s in spacing],
                     "reference_file": sample.meta.get("path"), "seconds": round(seconds, 3), "warnings": warnings,
                     "metrics": metrics,
                     "foreground_mean": _case_fg(metrics)}
            if save_nifti and not was_2d:
                entry["prediction_file"] = str(_save_prediction(out / "predictions" / f"{case}.nii.gz", pred,
                                                                sample.meta, names))
            overlay_paths[case] = [
                overlay_png(image[z], ref[z], pred[z], class_map, out / "overlays" / f"{case}_z{z:03d}.png",
                            title=f"{case} slice {z}") for z in select_slices(pred, ref, overlays)]
            per_case.append(entry)
        except Exception as e:  # noqa: BLE001 - a batch job records the failure and goes on
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.warning("case %s failed: %s", case, msg)
            failed.append({"case": case, "error": f"{type(e).__name__}: {msg}"})
    seen = {f["case"] for f in failed}
    failed += [{"case": c, "error": e} for c, e in getattr(reader, "skipped", []) if c not in seen]

    mean, fg = aggregate(per_case, labels)
    result = {
        "format": FORMAT, "version": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"path": str(paths[0]), "sha256": None, "model": info.get("model"),
                       "train_config": info.get("config", {})},
        "data": {"path": str(getattr(reader, "root", None) or reader), "layout": getattr(reader, "layout", layout),
                 "split": getattr(reader, "split", split), "n_cases": len(per_case), "n_failed": len(failed)},
        "config": config,
        "members": members_as_run(members, paths, device, precision),    # as they ran (compile fallbacks too)
        "classes": {str(k): v for k, v in class_map.items()},
        "conventions": {"standard": STANDARD_RULE, "legacy": LEGACY_RULE, "slice": M.SLICE_DICE_RULE,
                        "hd95_unit": "/".join(sorted(units)) or "mm", "legacy_hd95_unit": "voxel"},
        "metric_per_case": per_case,
        "failed_cases": failed,
        "mean": mean,
        "foreground_mean": fg,
    }
    if len(paths) > 1:
        result["ensemble"] = [{"path": str(p), "sha256": file_sha256(p), "model": i.get("model")}
                              for p, (_, i) in zip(paths, members, strict=True)]
    if search is not None:
        result["postprocessing"] = search.decide()
        result["postprocessing"]["chosen_on"] = {"data": result["data"]["path"], "split": result["data"]["split"],
                                                 "cases": [c["case"] for c in per_case]}
        result["postprocessing"]["stored_in"] = _store_decision(paths, result["postprocessing"])
    result["checkpoint"]["sha256"] = file_sha256(paths[0])    # after storing a decision into it
    result = _nan_to_none(result)
    if not part.split:
        write_results(result, overlay_paths, out)
        return result
    result["data"]["part"] = {"part_id": part.part_id, "num_parts": part.num_parts, "cases": todo}
    overlays = {c: [str(p) for p in ps] for c, ps in overlay_paths.items()}
    if not part.torchrun:
        write_text(out / f"metrics{part.suffix()}.json", json.dumps({**result, "overlays": overlays}, indent=1,
                                                                    default=str))
        return result
    merged, overlays = merge_results(gather((result, overlays), part))
    if part.part_id == 0:
        write_results(merged, overlays, out)
    return merged


def write_results(result: dict, overlays: dict[str, list], out: Path) -> None:
    """metrics.json, summary.csv and report.html (with the overlay PNGs that exist) into ``out``."""
    from smaformer.infer.report import write_html

    write_text(out / "metrics.json", json.dumps(result, indent=1, default=str))
    write_summary_csv(result, out / "summary.csv")
    write_html(result, {c: [Path(p) for p in ps if Path(p).is_file()] for c, ps in overlays.items()},
               out / "report.html")


def merge_results(pieces: list[tuple[dict, dict]], where: Path | None = None) -> tuple[dict, dict]:
    """One result from the parts' ``(result, overlays)``: per-case rows in the order one process gives,
    means recomputed over all of them. Every part of one split must be there, once, scoring one checkpoint."""
    from smaformer.infer.parts import interleave

    results = sorted((r for r, _ in pieces), key=lambda r: r["data"]["part"]["part_id"])
    n = results[0]["data"]["part"]["num_parts"]
    ids = [r["data"]["part"]["part_id"] for r in results]
    if ids != list(range(n)) or any(r["data"]["part"]["num_parts"] != n for r in results):
        raise InputError(where, f"parts {ids} given; need each of 0..{n - 1} of {n} once")
    for r in results[1:]:
        if r["checkpoint"]["sha256"] != results[0]["checkpoint"]["sha256"] or r["classes"] != results[0]["classes"]:
            raise InputError(where, f"part {r['data']['part']['part_id']} scored another checkpoint or classes "
                                    "than part 0")
    order = {c: i for i, c in enumerate(interleave([r["data"]["part"]["cases"] for r in results]))}
    per_case = sorted((row for r in results for row in r["metric_per_case"]), key=lambda row: order[row["case"]])
    failed = list({f["case"]: f for r in results for f in r["failed_cases"]}.values())  # reader skips: every part
    failed.sort(key=lambda f: order.get(f["case"], len(order)))
    mean, fg = aggregate(per_case, [int(k) for k in results[0]["classes"]])
    units = {u for r in results if r["metric_per_case"] for u in r["conventions"]["hd95_unit"].split("/")}
    data = {k: v for k, v in results[0]["data"].items() if k != "part"}
    merged = {**results[0], "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "data": {**data, "n_cases": len(per_case), "n_failed": len(failed), "parts": n},
              "conventions": {**results[0]["conventions"], "hd95_unit": "/".join(sorted(units)) or "mm"},
              "metric_per_case": per_case, "failed_cases": failed, "mean": mean, "foreground_mean": fg}
    merged.pop("overlays", None)
    overlays = {c: ps for _, o in pieces for c, ps in o.items()}
    return _nan_to_none(merged), overlays


def merge_part_files(out_dir: str | Path) -> dict:
    """Pool the ``metrics_part{K}_of_{N}.json`` that independent parts wrote into ``out_dir`` into one
    metrics.json, summary.csv and report.html there; returns the merged result."""
    out = Path(out_dir)
    files = sorted(out.glob("metrics_part*_of_*.json"))
    if not files:
        raise InputError(out, "no metrics_part*_of_*.json here: run evaluate with --num-parts N --part-id K first")
    pieces = []
    for f in files:
        try:
            r = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f, f"not valid JSON ({e})") from None
        pieces.append((r, r.pop("overlays", {})))
    merged, overlays = merge_results(pieces, out)
    write_results(merged, overlays, out)
    return merged


def _postprocessing(postprocess: str | dict | None, min_size: int, choose: bool, members: list,
                    paths: list) -> dict | None:
    """The rule the evaluation applies (None: raw predictions; always raw while choosing)."""
    from smaformer.infer.members import resolve_postprocessing

    if choose:
        if postprocess not in (None, "auto", "none"):
            raise InputError(None, "--choose-postprocessing scores the raw predictions; drop --postprocess")
        return None
    return resolve_postprocessing(postprocess, members, paths, min_size)


def _warn_if_chosen_here(decision: dict | None, cases: list[str]) -> None:
    """A stored post-processing choice made on some of the cases scored now makes their scores optimistic."""
    chosen = set(((decision or {}).get("chosen_on") or {}).get("cases") or [])
    both = chosen.intersection(cases)
    if both:
        log.warning("the stored post-processing was chosen on %d of these %d cases, so their scores are "
                    "optimistic; score them with --postprocess none", len(both), len(cases))


def _store_decision(paths: list, decision: dict) -> str | None:
    """Write the chosen post-processing into a single .pt checkpoint or safetensors sidecar; an ensemble's
    decision is reported only."""
    from smaformer.checkpoint import store_postprocessing

    if len(paths) != 1 or Path(paths[0]).suffix == ".onnx":
        log.warning("the post-processing chosen for %s is reported in metrics.json, not stored (stored only "
                    "for a single .pt or .safetensors checkpoint)", " ".join(map(str, paths)))
        return None
    keep = {k: decision[k] for k in ("per_class", "dice_before", "dice_after", "rule", "n_cases", "chosen_on")}
    return str(store_postprocessing(paths[0], keep))


CSV_FIELDS = ["case", "class_id", "class", "dice", "iou", "hd95", "assd", "legacy_dice", "legacy_hd95",
              "slice_dice", "tp", "fp", "fn", "n_pred", "n_ref", "empty"]


def write_summary_csv(result: dict, path: str | Path) -> Path:
    """One row per case and class, then one ``mean`` row per class."""
    def row(case: str, k: str, m: dict) -> dict:
        r = {"case": case, "class_id": k, "class": result["classes"][k]}
        r.update({f: m["standard"].get(f) for f in ("dice", "iou", "hd95", "assd")})
        r.update(legacy_dice=m["legacy"]["dice"], legacy_hd95=m["legacy"]["hd95"],
                 slice_dice=m.get("slice", {}).get("dice"))
        r.update({f: m.get(f, m.get("counts", {}).get(f)) for f in ("tp", "fp", "fn", "n_pred", "n_ref", "empty")})
        return r

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for c in result["metric_per_case"]:
        for k, m in c["metrics"].items():
            w.writerow(row(c["case"], k, m))
    for k, m in result["mean"].items():
        w.writerow(row("mean", k, m))
    return write_text(path, buf.getvalue())


def volume_dice(model: torch.nn.Module, volumes: Iterable, preprocessing: dict, num_classes: int, *,
                device: str | torch.device = "cpu", batch_size: int = 16, precision: str = "fp32") -> np.ndarray:
    """Volume-level Dice per foreground class, one row per volume: shape (n_volumes, num_classes - 1).

    ``volumes`` yields ``Sample`` objects or ``(image, label)`` pairs ((D,H,W) each; a 2D sample is one
    slice). Standard convention: NaN where both masks are empty. The model's train/eval mode is restored.
    """
    rows = []
    for item in volumes:
        sample = (item if isinstance(item, Sample) else Sample(np.asarray(item[0]), np.asarray(item[1]))).as_volume()
        pred = infer_volume(model, sample.image, preprocessing, batch_size=batch_size, device=device,
                            precision=precision)
        rows.append([M.dice(pred == k, sample.label == k) for k in range(1, num_classes)])
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), num_classes - 1)

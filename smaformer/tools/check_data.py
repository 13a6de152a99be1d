"""``smaformer check-data PATH``: detect the layout, read every case, and report shapes, spacings,
intensity ranges, the label histogram per class and every fault (missing pairs, shape mismatches,
labels outside the class range, NaN/inf, unreadable files), plus warnings (image/label affine
mismatches, classes never present, patients shared between splits).
Exits 1 when there is a fault, so it can gate a training script. With ``fingerprint=True`` each split
also gets its dataset fingerprint (``data.fingerprint``, cases grouped by patient as training groups
them), which ``write_fingerprint`` saves as JSON.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from smaformer.data.fingerprint import FingerprintBuilder
from smaformer.data.formats import LAYOUTS, detect_layout, open_dataset
from smaformer.data.sample import case_key, iter_cases
from smaformer.errors import InputError
from smaformer.io_utils import write_text


@dataclass
class SplitReport:
    split: str
    classes: list[str]
    rows: list[dict] = field(default_factory=list)
    faults: list[tuple[str, str]] = field(default_factory=list)
    voxels: dict[int, int] = field(default_factory=dict)
    cases_with: dict[int, int] = field(default_factory=dict)
    fingerprint: dict | None = None


@dataclass
class CheckReport:
    path: str
    layout: str
    splits: list[SplitReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def num_faults(self) -> int:
        return sum(len(s.faults) for s in self.splits)


def _fmt_tuple(t, digits: int = 3) -> str:
    return "-" if t is None else "x".join(f"{v:.{digits}g}" if isinstance(v, float) else str(v) for v in t)


def check_dataset(path, layout: str | None = None, split: str | None = None, limit: int | None = None,
                  classes: list[str] | None = None, fingerprint: bool = False) -> CheckReport:
    """Read every case of each split (or ``split`` only) and collect statistics and faults (and, with
    ``fingerprint``, each split's dataset fingerprint; the cases are then read patient by patient)."""
    layout = layout or detect_layout(path)
    report = CheckReport(str(path), layout)
    splits = [split] if split else list(LAYOUTS[layout].splits)
    case_sets = {}
    for sp in splits:
        kwargs = {"classes": classes} if classes else {}
        try:
            reader = open_dataset(path, layout=layout, split=sp, **kwargs)
            cases = reader.cases()
        except InputError as e:
            if split:  # asked for explicitly: its absence is a fault
                raise
            report.warnings.append(f"split {sp!r} not checked: {e}")
            continue
        rep = SplitReport(sp, list(reader.classes))
        case_sets[sp] = cases
        todo = sorted(cases[:limit], key=case_key) if fingerprint else cases[:limit]
        fp = FingerprintBuilder(case_key) if fingerprint else None
        for case, s, fault in iter_cases(reader, todo):
            if fp is not None and fault is None:
                fp.add(case, s)
            elif fp is not None:
                fp.fail(case, fault)
            if fault is not None:
                rep.faults.append((case, fault))
                rep.rows.append({"case": case, "status": "FAULT"})
                continue
            report.warnings.extend(f"case {case}: {w}" for w in s.meta.get("warnings", []))
            img = s.image
            row = {"case": case, "shape": img.shape, "spacing": s.meta.get("spacing"),
                   "range": (float(img.min()), float(img.max())), "status": "ok"}
            if s.label is not None:
                counts = np.bincount(s.label.ravel())
                present = [int(k) for k in np.nonzero(counts)[0]]
                row["labels"] = ",".join(map(str, present))
                for k in present:
                    rep.voxels[k] = rep.voxels.get(k, 0) + int(counts[k])
                    rep.cases_with[k] = rep.cases_with.get(k, 0) + 1
            else:
                row["labels"] = "(none)"
            rep.rows.append(row)
        rep.faults.extend(reader.skipped)
        rep.fingerprint = fp.result() if fp is not None else None
        n = len(rep.classes)
        missing = [rep.classes[k] for k in range(1, n) if k not in rep.voxels] if rep.voxels else []
        if missing:
            report.warnings.append(f"split {sp!r}: classes never present: {', '.join(missing)}")
        report.splits.append(rep)
    names = list(case_sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted({case_key(c) for c in case_sets[a]} & {case_key(c) for c in case_sets[b]})
            if shared:
                report.warnings.append(f"splits {a!r} and {b!r} share {len(shared)} case/patient ids "
                                       f"(e.g. {shared[0]}): possible leakage")
    return report


def write_fingerprint(report: CheckReport, path: str | Path) -> Path:
    """Write each checked split's dataset fingerprint as one JSON file (``{"splits": {split: ...}}``)."""
    doc = {"format": "smaformer-dataset-fingerprint", "path": report.path, "layout": report.layout,
           "splits": {rep.split: rep.fingerprint for rep in report.splits if rep.fingerprint is not None}}
    return write_text(path, json.dumps(doc, indent=1) + "\n")


def format_table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*headers), line.format(*("-" * w for w in widths))]
    out += [line.format(*map(str, r)) for r in rows]
    return "\n".join(s.rstrip() for s in out)


def format_report(report: CheckReport, max_rows: int | None = 20) -> str:
    out = [f"{report.path}: layout {report.layout}"]
    for rep in report.splits:
        out.append(f"\n[{rep.split}] {len(rep.rows)} cases checked, {len(rep.faults)} faults")
        rows = [[r["case"], _fmt_tuple(r.get("shape")), _fmt_tuple(r.get("spacing")),
                 "{:.4g}..{:.4g}".format(*r["range"]) if "range" in r else "-", r.get("labels", "-"), r["status"]]
                for r in rep.rows]
        shown = rows if max_rows is None else rows[:max_rows]
        if shown:
            out.append(format_table(shown, ["case", "shape", "spacing", "intensity", "labels", "status"]))
        if len(rows) > len(shown):
            out.append(f"... {len(rows) - len(shown)} more cases (--all shows them)")
        if rep.voxels:
            total = sum(rep.voxels.values())
            ids = sorted(set(rep.voxels) | set(range(len(rep.classes))))
            hist = [[k, rep.classes[k] if k < len(rep.classes) else "(unknown)", rep.voxels.get(k, 0),
                     f"{100 * rep.voxels.get(k, 0) / total:.3f}%", rep.cases_with.get(k, 0)] for k in ids]
            out.append("label histogram:")
            out.append(format_table(hist, ["id", "class", "voxels", "share", "cases"]))
        inten = (rep.fingerprint or {}).get("summary", {}).get("intensity", {})
        if inten.get("p50"):
            meds = " / ".join(f"{inten[k]['median']:.4g}" for k in ("p0.5", "p50", "p99.5"))
            out.append(f"intensity percentiles 0.5 / 50 / 99.5, median over {rep.fingerprint['num_cases']} "
                       f"cases: {meds}")
        for case, fault in rep.faults:
            out.append(f"FAULT {case}: {fault}")
    for w in report.warnings:
        out.append(f"warning: {w}")
    out.append(f"\n{report.num_faults} fault(s)" if report.num_faults else "\nno faults")
    return "\n".join(out)

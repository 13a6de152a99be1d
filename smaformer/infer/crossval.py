"""The cross-validation summary: the per-fold validation results of several run folders pooled into one
(``smaformer evaluate --cross-validation RUN...``), as nnU-Net's ``crossval_results``.

Each run folder holds ``validation/metrics.json``, written at the end of a ``train --fold K`` run. The
folds must score the same classes under the same splits, and no case may appear twice (the folds of one
splits file are disjoint); the per-case rows are pooled and the means recomputed over all of them, so a
class's mean weighs every validation case once, whatever its fold.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from smaformer.errors import InputError
from smaformer.infer.evaluate import _nan_to_none, aggregate, write_summary_csv
from smaformer.io_utils import check_output, write_text

FORMAT = "smaformer-cross-validation"


def _fold_result(run: Path) -> dict:
    path = run / "validation" / "metrics.json"
    if not path.is_file():
        raise InputError(path, "not found: a fold's run folder gets it when 'smaformer train --fold K' finishes")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"not valid JSON ({e})") from None


def _splits(run: Path) -> list | None:
    path = run / "splits.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"not valid JSON ({e})") from None


def pool_cross_validation(run_dirs: list[str | Path], out_dir: str | Path) -> dict:
    """Pool ``<run>/validation/metrics.json`` of every fold run into ``out_dir/metrics.json`` and
    ``summary.csv``; returns the pooled dict (``metric_per_case`` rows carry their ``fold``)."""
    runs = [Path(r) for r in run_dirs]
    check_output(out_dir, folder=True, inputs=runs)
    if not runs:
        raise InputError(None, "--cross-validation needs the run folders of the folds")
    results = [_fold_result(r) for r in runs]
    first = results[0]
    per_case, folds, seen = [], [], {}
    for run, res in zip(runs, results, strict=True):
        where = run / "validation" / "metrics.json"
        if res.get("classes") != first.get("classes"):
            raise InputError(where, f"classes {res.get('classes')} differ from {runs[0]}'s {first.get('classes')}")
        if _splits(run) != _splits(runs[0]):
            raise InputError(run / "splits.json", f"differs from {runs[0] / 'splits.json'}: these runs are folds of "
                                                  "different splits")
        fold = ((res.get("checkpoint") or {}).get("train_config") or {}).get("data", {}).get("fold")
        if fold is not None and fold in [f["fold"] for f in folds]:
            raise InputError(where, f"fold {fold} is given twice")
        for row in res.get("metric_per_case", []):
            if row["case"] in seen:
                raise InputError(where, f"case {row['case']} is also in {seen[row['case']]}: folds must be disjoint")
            seen[row["case"]] = run
            per_case.append({**row, "fold": fold})
        folds.append({"fold": fold, "run": str(run), "n_cases": len(res.get("metric_per_case", [])),
                      "foreground_mean": res.get("foreground_mean"),
                      "checkpoint": (res.get("checkpoint") or {}).get("path"),
                      "scored": (res.get("scored") or {}).get("checkpoint")})
    labels = [int(k) for k in first.get("classes", {})]
    mean, fg = aggregate(per_case, labels)
    pooled = {"format": FORMAT, "version": 1,
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "folds": folds, "n_cases": len(per_case), "classes": first.get("classes", {}),
              "conventions": first.get("conventions", {}), "metric_per_case": per_case,
              "mean": mean, "foreground_mean": fg}
    pooled = _nan_to_none(pooled)
    out = Path(out_dir)
    write_text(out / "metrics.json", json.dumps(pooled, indent=1, default=str))
    write_summary_csv(pooled, out / "summary.csv")
    return pooled

"""Post-processing of label volumes with 3D connected components (largest component, minimum size)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def _check_rule(mode: str, min_size: int) -> None:
    if mode not in ("lcc", "min_size"):
        raise ValueError(f"unknown post-processing {mode!r}; use 'lcc' or 'min_size'")
    if mode == "min_size" and min_size < 1:
        raise ValueError(f"min_size must be >= 1 voxel, got {min_size}")


def postprocess_labels(labels: np.ndarray, mode: str, *, min_size: int = 0, connectivity: int | None = None,
                       classes: list[int] | None = None) -> np.ndarray:
    """Clean a label volume per class with 3D connected components; removed voxels become background 0.

    ``mode="lcc"`` keeps each class's largest component; ``mode="min_size"`` drops components smaller than
    ``min_size`` voxels. Components are found in the full array dimensionality (3D for volumes, unlike the
    official scripts' slice-row version). ``connectivity`` defaults to full (26-neighbourhood in 3D), as in
    nnU-Net. ``classes`` limits which labels are touched (default: all non-zero labels present).
    """
    _check_rule(mode, min_size)
    out = np.array(labels, copy=True)
    structure = ndimage.generate_binary_structure(out.ndim, connectivity or out.ndim)
    boxes = ndimage.find_objects(out.astype(np.int64) if out.dtype.kind not in "iu" else out)
    for k, box in enumerate(boxes, start=1):
        if box is None or (classes is not None and k not in classes):
            continue
        view = out[box]
        comp, n = ndimage.label(view == k, structure=structure)
        if n <= 1 and mode == "lcc":
            continue
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        if mode == "lcc":  # exactly one component, the first of any tie
            keep = np.zeros(sizes.shape, dtype=bool)
            keep[int(np.argmax(sizes))] = True
        else:
            keep = sizes >= min_size
        keep[0] = True
        view[(comp > 0) & ~keep[comp]] = 0
    return out


# -------------------------------------------------------------------- post-processing chosen on validation
#: removal sizes (voxels) tried besides the largest component; validation decides which, if any, helps
MIN_SIZE_CANDIDATES = (10, 50, 250, 1000)
#: a candidate must beat "none" by more than this mean Dice to be chosen (ties keep the raw prediction)
MIN_GAIN = 1e-4


def _candidate_name(mode: str, size: int = 0) -> str:
    return f"min_size {size}" if mode == "min_size" else mode


def rule_for_all_classes(mode: str, min_size: int = 0) -> dict:
    """The decision ``--postprocess lcc`` / ``min-size N`` asks for: one rule for every class."""
    _check_rule(mode, min_size)
    return {"all": {"mode": mode, **({"min_size": int(min_size)} if mode == "min_size" else {})}}


def check_decision(decision: object) -> None:
    """ValueError unless ``decision`` is None/empty, ``{"all": rule}`` or ``{"per_class": {"<k>": rule}}`` with
    each rule ``{"mode": "none" | "lcc"}`` or ``{"mode": "min_size", "min_size": N >= 1}``: a stored choice is
    checked once, before any case runs, rather than failing every case."""
    if not decision:
        return
    rules = {"all": decision.get("all")} if isinstance(decision, dict) and "all" in decision else \
        decision.get("per_class") if isinstance(decision, dict) else None
    if not isinstance(rules, dict) or not rules:
        raise ValueError(f"expected {{'all': rule}} or {{'per_class': {{class: rule}}}}, got {decision!r:.80}")
    for k, rule in rules.items():
        if k != "all" and not str(k).isdigit():
            raise ValueError(f"class {k!r} is not a class index")
        mode = rule.get("mode") if isinstance(rule, dict) else None
        size = rule.get("min_size", 0) if isinstance(rule, dict) else 0
        if mode != "none":
            if not isinstance(size, int) or isinstance(size, bool):
                raise ValueError(f"class {k}: min_size {size!r} is not a voxel count")
            _check_rule(str(mode), size)


def apply_postprocessing(labels: np.ndarray, decision: dict | None) -> np.ndarray:
    """Apply a decision: ``{"all": rule}`` (``rule_for_all_classes``) or a stored per-class one
    (``{"per_class": {"1": {"mode": "lcc"}, ...}}``, as ``PostprocessingSearch.decide`` makes it); classes
    marked ``none`` or absent are left as they are."""
    if not decision:
        return labels
    if "all" in decision:
        rule = decision["all"]
        return postprocess_labels(labels, rule["mode"], min_size=int(rule.get("min_size", 0)))
    out = labels
    for k, rule in sorted(decision.get("per_class", {}).items(), key=lambda kv: int(kv[0])):
        if rule.get("mode", "none") != "none":
            out = postprocess_labels(out, rule["mode"], min_size=int(rule.get("min_size", 0)), classes=[int(k)])
    return out


class PostprocessingSearch:
    """Choose, per class, whether keeping the largest connected component or removing components under a
    size improves validation Dice, as nnU-Net's ``determine_postprocessing`` does.

    ``add(pred, ref)`` scores every candidate on one case from its components (one labelling per class);
    only the Dice values are kept, so memory does not grow with the cases. For the choice a case where a
    candidate leaves both masks empty counts Dice 1 (clearing false positives off an organ-free case is
    a gain); a class absent from reference and prediction of a case does not count.
    """

    def __init__(self, labels: list[int]):
        self.labels = list(labels)
        self.candidates = [("none", 0), ("lcc", 0)] + [("min_size", s) for s in MIN_SIZE_CANDIDATES]
        self.scores: dict[int, list[list[float]]] = {k: [] for k in self.labels}

    def add(self, pred: np.ndarray, ref: np.ndarray) -> None:
        structure = ndimage.generate_binary_structure(pred.ndim, pred.ndim)
        for k in self.labels:
            p, r = pred == k, ref == k
            n_ref = int(r.sum())
            if n_ref == 0 and not p.any():
                continue
            comp, _ = ndimage.label(p, structure=structure)
            sizes = np.bincount(comp.ravel())
            inter = np.bincount(comp[r], minlength=len(sizes))
            sizes[0], inter[0] = 0, 0
            row = []
            for mode, size in self.candidates:
                if mode == "none":
                    keep = sizes > 0
                elif mode == "lcc":
                    keep = np.zeros(len(sizes), dtype=bool)
                    if len(sizes) > 1:
                        keep[int(np.argmax(sizes))] = True
                else:
                    keep = sizes >= size
                denom = int(sizes[keep].sum()) + n_ref
                row.append(1.0 if denom == 0 else 2.0 * int(inter[keep].sum()) / denom)
            self.scores[k].append(row)

    def decide(self) -> dict:
        """``{"per_class": {k: rule}, "dice_before": {k: d}, "dice_after": {k: d}, "candidates": {k: {name:
        mean Dice}}, "n_cases": {k: n}}``; ``rule`` is ``{"mode": "none" | "lcc"}`` or
        ``{"mode": "min_size", "min_size": N}``."""
        names = [_candidate_name(m, s) for m, s in self.candidates]
        out: dict = {"per_class": {}, "dice_before": {}, "dice_after": {}, "candidates": {}, "n_cases": {},
                     "rule": f"per class, the candidate with the best mean validation Dice if it beats none by "
                             f"more than {MIN_GAIN}; both-empty counts 1"}
        for k in self.labels:
            rows = np.asarray(self.scores[k], dtype=np.float64).reshape(-1, len(self.candidates))
            key = str(k)
            out["n_cases"][key] = len(rows)
            if not len(rows):
                out["per_class"][key] = {"mode": "none"}
                continue
            means = rows.mean(axis=0)
            best = int(np.argmax(means))
            if means[best] - means[0] <= MIN_GAIN:
                best = 0
            mode, size = self.candidates[best]
            out["per_class"][key] = {"mode": mode, **({"min_size": size} if mode == "min_size" else {})}
            out["dice_before"][key], out["dice_after"][key] = float(means[0]), float(means[best])
            out["candidates"][key] = {n: float(v) for n, v in zip(names, means, strict=True)}
        return out


def describe_postprocessing(decision: dict | None) -> str:
    """``1: lcc, 2: none, 3: min_size 50`` (or ``none``)."""
    if not decision:
        return "none"
    if "all" in decision:
        return _candidate_name(decision["all"]["mode"], int(decision["all"].get("min_size", 0)))
    return ", ".join(f"{k}: {_candidate_name(r['mode'], int(r.get('min_size', 0)))}"
                     for k, r in sorted(decision.get("per_class", {}).items(), key=lambda kv: int(kv[0])))

"""Dataset fingerprints (as nnU-Net's ``dataset_fingerprint.json``) and the guard built on them.

A *case fingerprint* holds the case's spacing (or None), shape, intensity percentiles 0.5 / 50 / 99.5
of the image (over all voxels, every channel, foreground and background alike) and its class
frequencies (the voxel fraction of each label value). A *dataset fingerprint* lists them and summarises
them: min / median / max of each percentile over the cases, the spacing and shape ranges and the overall
class frequencies. Training stores the training set's fingerprint in the checkpoint; ``check-data
--fingerprint`` writes one per split.

Memory stays bounded: percentiles are computed on at most ``MAX_VOXELS`` voxels per case, drawn
uniformly at random with a fixed seed (so the same data always gives the same numbers) when a case
is bigger. A case made of several items (the 2D slices of one ACDC patient) is sampled uniformly over all
its voxels too, while it is read item by item (``_Case.add``), holding at most ``MAX_VOXELS``; its items
must come one after the other (``dataset_fingerprint`` sorts them).

``intensity_warnings`` compares one input image with the fingerprint a model was trained on, to catch
an input on another intensity scale (raw CT HU into a model trained on MRI scaled to [0, 1]).
"""
from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from smaformer.data.sample import Reader, Sample, iter_cases

VERSION = 1
PERCENTILES = (0.5, 50.0, 99.5)
KEYS = ("p0.5", "p50", "p99.5")
MAX_VOXELS = 1 << 22          # 4,194,304 voxels (16 MiB of float32) per case for the percentiles
FAR_SPANS = 1.0               # intensity: beyond the training range by more than this many training spans
NARROW = 0.1                  # intensity: an image span under this fraction of the narrowest training case's
SPACING_FACTOR = 4.0          # spacing: in-plane spacing beyond [min / 4, max * 4] of the training cases


def _voxels(image: np.ndarray, cap: int = MAX_VOXELS) -> np.ndarray:
    """All voxels as float32, or ``cap`` of them drawn with a fixed seed when there are more (drawn from the
    stored array before converting, so a big int16 CT is never copied whole as float32)."""
    flat = np.asarray(image).reshape(-1)
    if flat.size > cap:
        flat = flat[np.sort(np.random.default_rng(0).integers(0, flat.size, cap))]
    return flat.astype(np.float32, copy=False)


def _percentiles(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return dict.fromkeys(KEYS)
    return {k: float(v) for k, v in zip(KEYS, np.percentile(values, PERCENTILES), strict=True)}


class _Case:
    """One case's running fingerprint, fed item by item (a volume, or the slices of one patient)."""

    def __init__(self, name: str):
        self.name, self.items, self.slices = name, 0, 0
        self.shape: list[int] = []
        self.spacing: list[float] | None = None
        self.values: list[np.ndarray] = []
        self.seen = 0                                # voxels of the items added so far
        self.rng = np.random.default_rng(0)
        self.counts = np.zeros(0, np.int64)
        self.labelled = False

    def add(self, sample: Sample) -> None:
        self.items += 1
        self.slices += sample.num_slices()
        if self.items == 1:
            self.shape = [int(n) for n in (sample.image.shape if sample.is_volume else sample.image.shape[1:])]
            sp = sample.meta.get("spacing")
            self.spacing = None if sp is None else [float(v) for v in sp]
        self._sample(np.asarray(sample.image).reshape(-1))
        if sample.label is not None:
            self.labelled = True
            c = np.bincount(np.asarray(sample.label).reshape(-1).clip(0))
            if c.size > self.counts.size:
                self.counts = np.pad(self.counts, (0, c.size - self.counts.size))
            self.counts[: c.size] += c

    def _sample(self, flat: np.ndarray) -> None:
        """Keep every voxel while the case fits in ``MAX_VOXELS``; past that, a sample of ``MAX_VOXELS``
        voxels of which each is drawn uniformly from all the voxels seen: of the cap, a binomial share
        ``seen / (seen + n)`` comes from the sample held (without replacement), the rest from the new item."""
        cap, n = MAX_VOXELS, flat.size
        if self.seen + n <= cap:
            self.values.append(flat.astype(np.float32, copy=False))
        elif not self.values:
            self.values = [_voxels(flat, cap)]
        else:
            old = np.concatenate(self.values)
            k_old = min(int(self.rng.binomial(cap, self.seen / (self.seen + n))), old.size)
            keep = old[np.sort(self.rng.choice(old.size, k_old, replace=False))]
            new = flat[np.sort(self.rng.integers(0, n, cap - k_old))].astype(np.float32, copy=False)
            self.values = [keep, new]
        self.seen += n

    def result(self) -> dict:
        values = np.concatenate(self.values) if self.values else np.zeros(0, np.float32)
        # a volume keeps its shape; several items (slices, frames) are counted as stacked slices
        shape = self.shape if self.items == 1 else [self.slices, *self.shape[-2:]]
        total = int(self.counts.sum())
        freq = {str(k): float(c / total) for k, c in enumerate(self.counts) if c} if self.labelled and total else None
        return {"case": self.name, "items": self.items, "shape": shape, "spacing": self.spacing,
                "intensity": _percentiles(values), "class_frequencies": freq,
                "label_voxels": {str(k): int(c) for k, c in enumerate(self.counts) if c} if self.labelled else None}


class FingerprintBuilder:
    """Collect a dataset fingerprint item by item: ``add(name, sample)``, ``fail(name, fault)``, ``result()``.

    ``group`` maps an item's name to its case (e.g. ``data.sample.case_key``: slices to their patient);
    the items of one case must be added one after the other.
    """

    def __init__(self, group: Callable[[str], str] | None = None):
        self.group = group or (lambda n: n)
        self.cases: list[dict] = []
        self.failed: list[dict] = []
        self._open: _Case | None = None
        self._done: set[str] = set()

    def add(self, name: str, sample: Sample) -> None:
        key = self.group(name)
        if self._open is None or self._open.name != key:
            self._close()
            if key in self._done:
                raise ValueError(f"items of case {key!r} are not contiguous; sort them by case first")
            self._open = _Case(key)
        self._open.add(sample)

    def fail(self, name: str, fault: str) -> None:
        self.failed.append({"case": name, "error": fault})

    def _close(self) -> None:
        if self._open is not None:
            self.cases.append(self._open.result())
            self._done.add(self._open.name)
            self._open = None

    def result(self) -> dict:
        self._close()
        return {"format": "smaformer-fingerprint", "version": VERSION, "percentiles": list(PERCENTILES),
                "max_voxels": MAX_VOXELS, "num_cases": len(self.cases), "summary": summarise(self.cases),
                "cases": list(self.cases), "failed": list(self.failed)}


def _stats(values: list[float | None]) -> dict[str, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"min": float(min(values)), "median": float(statistics.median(values)), "max": float(max(values))}


def _per_axis(rows: list[list[float]]) -> dict[str, list[float]] | None:
    rows = [r for r in rows if r is not None]
    if not rows:
        return None
    rows = [r for r in rows if len(r) == len(rows[0])]
    axes = [_stats([float(r[i]) for r in rows]) for i in range(len(rows[0]))]
    return {k: [a[k] for a in axes] for k in ("min", "median", "max")}


def summarise(cases: list[dict]) -> dict:
    """min / median / max of each intensity percentile, of the span p99.5 - p0.5, the spacing and shape
    ranges (per axis), and the overall class frequencies."""
    inten = {k: _stats([c["intensity"][k] for c in cases]) for k in KEYS}
    spans = _stats([c["intensity"]["p99.5"] - c["intensity"]["p0.5"] for c in cases
                    if c["intensity"]["p0.5"] is not None])
    counts: dict[str, int] = {}
    for c in cases:
        for k, n in (c.get("label_voxels") or {}).items():
            counts[k] = counts.get(k, 0) + n
    total = sum(counts.values())
    freq = {k: counts[k] / total for k in sorted(counts, key=int)} if total else None
    return {"intensity": inten, "span": spans, "spacing": _per_axis([c["spacing"] for c in cases]),
            "shape": _per_axis([c["shape"] for c in cases]), "class_frequencies": freq}


def dataset_fingerprint(reader: Reader, cases: Iterable[str] | None = None,
                        group: Callable[[str], str] | None = None) -> dict:
    """The fingerprint of ``cases`` (default: all) of ``reader``, items grouped into cases by ``group``."""
    builder = FingerprintBuilder(group)
    names = list(reader.cases() if cases is None else cases)
    names.sort(key=builder.group)   # stable: a case's items stay in their order, and become contiguous
    for name, sample, fault in iter_cases(reader, names):
        if fault is not None:
            builder.fail(name, fault)
        else:
            builder.add(name, sample)
    return builder.result()


def check_fingerprint(fingerprint) -> None:
    """A ``ValueError`` naming the first field of a stored fingerprint that ``intensity_warnings`` reads and
    cannot use (None, or one without a summary, is fine: it gives no warnings)."""
    if fingerprint is None:
        return
    if not isinstance(fingerprint, dict):
        raise ValueError(f"a {type(fingerprint).__name__}, not a mapping")
    s = fingerprint.get("summary")
    if not s:
        return

    def field(*keys):
        v = s
        for k in keys:
            if not isinstance(v, dict) or k not in v:
                raise ValueError(f"summary.{'.'.join(keys)} is missing")
            v = v[k]
        return v

    def number(*keys):
        v = field(*keys)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"summary.{'.'.join(keys)}={v!r} is not a number")

    if not isinstance(s, dict):
        raise ValueError("summary is not a mapping")
    if (s.get("intensity") or {}).get("p0.5"):
        number("intensity", "p0.5", "min")
        number("intensity", "p99.5", "max")
    if s.get("span"):
        number("span", "min")
    if s.get("spacing"):
        for key in ("min", "max"):
            v = field("spacing", key)
            if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                raise ValueError(f"summary.spacing.{key}={v!r} is not a list of numbers")


def intensity_warnings(fingerprint: dict | None, image: np.ndarray, spacing: Any = None, case: str = "",
                       preprocessing: dict | None = None) -> list[str]:
    """One-line warnings naming ``case`` when ``image`` lies FAR outside what the model was trained on.

    ``fingerprint`` is the training set's (``info["fingerprint"]``; None gives no warnings). Far means,
    with the training envelope ``[lo, hi]`` = [lowest p0.5, highest p99.5 over the training cases] and
    ``span = hi - lo``:
    - the image's p0.5 is below ``lo - span`` or its p99.5 above ``hi + span`` (it reaches more than a
      whole training range beyond the training range), or
    - its span p99.5 - p0.5 is under a tenth of the narrowest training case's span (e.g. a [0, 1] image
      into a model trained on HU);
    - an in-plane spacing (last two axes) under a quarter of the smallest or over four times the largest
      training spacing on that axis (skipped when either side has no spacing).
    Every training case passes by construction, so normal variation does not fire. The intensity checks
    are skipped when ``preprocessing`` normalises each image on its own (``zscore`` / ``minmax``).
    """
    if not fingerprint or not fingerprint.get("summary"):
        return []
    s, out, who = fingerprint["summary"], [], f"case {case}: " if case else ""
    mode = ((preprocessing or {}).get("intensity") or {}).get("mode", "none")
    if mode not in ("zscore", "minmax") and s.get("intensity", {}).get("p0.5"):
        lo, hi = s["intensity"]["p0.5"]["min"], s["intensity"]["p99.5"]["max"]
        span = max(hi - lo, 1e-6 * max(abs(lo), abs(hi), 1.0))
        values = _voxels(image)
        p = _percentiles(values[np.isfinite(values)])   # a few NaN/Inf voxels must not make every percentile NaN
        if p["p0.5"] is None:
            out.append(f"{who}no finite intensity (every voxel NaN or infinite): nothing to segment; check the file")
        elif p["p0.5"] < lo - FAR_SPANS * span or p["p99.5"] > hi + FAR_SPANS * span:
            out.append(f"{who}intensities {p['p0.5']:.4g}..{p['p99.5']:.4g} (0.5-99.5th percentile) are far "
                       f"outside the training data's {lo:.4g}..{hi:.4g}; the input looks like another modality "
                       "or scaling (e.g. raw CT HU into a model trained on [0, 1]): results will be meaningless")
        elif s.get("span") and s["span"]["min"] > 0 and p["p99.5"] - p["p0.5"] < NARROW * s["span"]["min"]:
            out.append(f"{who}intensity span {p['p99.5'] - p['p0.5']:.4g} (0.5-99.5th percentile) is under "
                       f"{NARROW:g} of the narrowest training case's {s['span']['min']:.4g}; the input looks "
                       "rescaled (e.g. [0, 1] into a model trained on HU) or nearly constant")
    sp = s.get("spacing")
    if sp and spacing is not None and len(spacing) >= 2 and len(sp["min"]) >= 2:
        for axis, v, a, b in zip(("y", "x"), list(spacing)[-2:], sp["min"][-2:], sp["max"][-2:], strict=True):
            if float(v) < a / SPACING_FACTOR or float(v) > b * SPACING_FACTOR:
                out.append(f"{who}{axis} spacing {float(v):.4g} mm is far outside the training data's "
                           f"{a:.4g}..{b:.4g} mm; resample the input or check its header")
    return out

"""``smaformer convert``: NIfTI image/label pairs or any volume dataset (nnU-Net raw, images/+labels/,
ACDC raw, LiTS raw) into the TransUNet Synapse layout.

Training cases become ``train_npz/<case>_sliceNNN.npz`` (one axial slice each), test cases
``test_vol_h5/<case>.npy.h5`` volumes, listed in ``lists_Synapse/train.txt`` and ``test_vol.txt``.
Images are windowed (default: the Synapse HU window [-125, 275] -> [0, 1]); labels are remapped
(unmapped ids -> background) and stored as uint8, with a ``spacing`` array the official loaders
ignore. ``convert.json`` records the source of every case, the window, the label map and the split.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from smaformer.data.formats import open_dataset
from smaformer.data.formats.base import PairedReader, stem
from smaformer.data.formats.synapse import SYNAPSE_CLASSES
from smaformer.data.preprocess import normalize_intensity
from smaformer.data.sample import Reader, Sample, iter_cases
from smaformer.data.transforms import parse_window
from smaformer.errors import InputError
from smaformer.io_utils import atomic_path, check_output, write_text

log = logging.getLogger(__name__)

# TotalSegmentator v2 "total" ids -> Synapse ids (DESIGN.md order)
TOTALSEG_TO_SYNAPSE = {52: 1, 4: 2, 3: 3, 2: 4, 5: 5, 7: 6, 1: 7, 6: 8}
LABEL_PRESETS = {"totalseg": TOTALSEG_TO_SYNAPSE}


class PairsReader(PairedReader):
    """Explicit (image, label) NIfTI file pairs; case names are the image file stems."""

    layout = "pairs"

    def __init__(self, pairs: list[tuple[str | Path, str | Path]]):
        if not pairs:
            raise InputError(None, "no image/label pairs given")
        super().__init__(Path(pairs[0][0]).parent)
        self._given = [(Path(i), Path(lab)) for i, lab in pairs]

    def files(self) -> list[Path]:
        """Every image and label file given."""
        return [p for pair in self._given for p in pair]

    def _find_pairs(self):
        found = {}
        for img, lab in self._given:
            for p in (img, lab):
                if not p.exists():
                    raise InputError(p, "file not found")
            found[stem(img)] = (img, lab)
        return found


def parse_label_map(text: str | None) -> dict[int, int] | None:
    """``"1:7,2:4"``, a preset name (``totalseg``) or a JSON file ``{"1": 7, ...}`` -> {source: target}."""
    if not text:
        return None
    if text in LABEL_PRESETS:
        return dict(LABEL_PRESETS[text])
    if text.endswith(".json") or Path(text).is_file():
        try:
            raw = json.loads(Path(text).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(text, f"cannot read label map JSON ({type(e).__name__}: {e})") from None
        items = list(raw.items())
    else:
        items = [kv.split(":", 1) for kv in text.split(",") if kv.strip()]
    try:
        mapping = {int(str(k).strip()): int(str(v).strip()) for k, v in items}
    except (ValueError, TypeError):
        raise InputError(None, f"label map {text!r}: use 'src:dst,...', a JSON file or one of "
                               f"{', '.join(LABEL_PRESETS)}") from None
    if any(v < 0 or v > 255 for v in mapping.values()):
        raise InputError(None, f"label map {text!r}: target ids must be within 0..255")
    return mapping


def remap(label: np.ndarray, mapping: dict[int, int] | None) -> np.ndarray:
    """Apply ``mapping`` (unmapped ids -> 0) with a lookup table."""
    if mapping is None:
        return label
    lut = np.zeros(max(int(label.max(initial=0)), max(mapping, default=0)) + 1, np.int64)
    for src, dst in mapping.items():
        if src >= 0:
            lut[src] = dst
    return lut[label]


def split_cases(cases: list[str], test: list[str] | None, test_fraction: float, seed: int) -> set[str]:
    """The test cases: named ones, or a seeded random ``test_fraction`` (at least one of each when n >= 2)."""
    if test:
        unknown = sorted(set(test) - set(cases))
        if unknown:
            raise InputError(None, f"test case {unknown[0]!r} is not in the source (cases: {', '.join(cases[:8])}...)")
        return set(test)
    n = len(cases)
    k = int(round(test_fraction * n))
    if n >= 2 and test_fraction > 0:
        k = min(max(k, 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return {cases[i] for i in order[:k]}


def _save_npz(path: Path, **arrays) -> None:
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)


def _save_h5(path: Path, **arrays) -> None:
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v, compression="gzip" if v.ndim > 1 else None)


def _synapse_label(sample: Sample, label_map: dict[int, int] | None, num_classes: int | None) -> np.ndarray:
    """The sample's remapped label, or an InputError saying why the case cannot go into the Synapse layout."""
    if not sample.is_volume:
        raise InputError(sample.meta.get("path"), "2D image: the Synapse layout holds CT volumes")
    if sample.label is None:
        raise InputError(sample.meta.get("path"), "no label file")
    label = remap(sample.label, label_map)
    if num_classes and label.max(initial=0) >= num_classes:
        raise InputError(sample.meta.get("label_path"), f"label value {int(label.max())} outside "
                         f"0..{num_classes - 1} after remapping; pass --labels")
    return label


def convert_to_synapse(source: str | Path | Reader, out_dir: str | Path, *, window: str = "synapse",
                       label_map: dict[int, int] | None = None, num_classes: int | None = None,
                       test_cases: list[str] | None = None, test_fraction: float = 0.4, seed: int = 0,
                       keep_names: bool = False, layout: str | None = None) -> dict:
    """Convert ``source`` (a dataset folder or a reader) into the Synapse layout under ``out_dir``.

    Returns the ``convert.json`` record: per output case its source, split, shape and spacing, plus
    ``failed`` (case, fault) for cases skipped because they could not be read.
    """
    if isinstance(source, PairsReader):
        inputs = source.files()
    else:
        root = getattr(source, "root", None) if isinstance(source, Reader) else source
        inputs = [root] if root else []
    out = check_output(out_dir, folder=True, inputs=inputs)
    reader = source if isinstance(source, Reader) else open_dataset(source, layout=layout)
    intensity = {"mode": "none"} if window == "none" else ({"mode": window} if window in ("zscore", "minmax")
                                                           else parse_window(window))
    num_classes = num_classes or (len(SYNAPSE_CLASSES) if label_map else (reader.num_classes or None))
    if label_map and num_classes and max(label_map.values()) >= num_classes:
        raise InputError(None, f"label map targets reach {max(label_map.values())}; num_classes is {num_classes}")
    for d in ("train_npz", "test_vol_h5", "lists_Synapse"):
        (out / d).mkdir(parents=True, exist_ok=True)
    cases = reader.cases()
    test = split_cases(cases, test_cases, test_fraction, seed)
    record = {"source": str(getattr(reader, "root", source)), "layout": reader.layout, "window": window,
              "intensity": intensity, "label_map": {str(k): v for k, v in (label_map or {}).items()},
              "classes": SYNAPSE_CLASSES[:num_classes] if label_map and num_classes else reader.classes,
              "cases": {}, "failed": list(reader.skipped)}
    train_list, test_list = [], []
    for i, (case, sample, fault) in enumerate(iter_cases(reader, cases), 1):
        name = case if keep_names else f"case{i:04d}"
        if keep_names and not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise InputError(None, f"case name {name!r} is not file-name safe; drop --keep-names")
        try:
            label = _synapse_label(sample, label_map, num_classes) if fault is None else None
        except InputError as e:
            fault = str(e)
        if fault is not None:
            log.warning("skipping case %s: %s", case, fault)
            record["failed"].append((case, fault))
            continue
        image = normalize_intensity(sample.image, intensity)
        label = label.astype(np.uint8)
        spacing = np.asarray(sample.meta.get("spacing") or (1.0, 1.0, 1.0), np.float64)
        split = "test" if case in test else "train"
        if split == "test":
            _save_h5(out / "test_vol_h5" / f"{name}.npy.h5", image=image, label=label, spacing=spacing)
            test_list.append(name)
        else:
            for z in range(image.shape[0]):
                sl = f"{name}_slice{z:03d}"
                _save_npz(out / "train_npz" / f"{sl}.npz", image=image[z], label=label[z], spacing=spacing)
                train_list.append(sl)
        record["cases"][name] = {"source_case": case, "source_path": sample.meta.get("path"), "split": split,
                                 "shape": list(image.shape), "spacing": spacing.tolist()}
        log.info("%s -> %s (%s, %d slices)", case, name, split, image.shape[0])
    write_text(out / "lists_Synapse" / "train.txt", "".join(f"{s}\n" for s in train_list))
    write_text(out / "lists_Synapse" / "test_vol.txt", "".join(f"{s}\n" for s in test_list))
    write_text(out / "convert.json", json.dumps(record, indent=1))
    return record

"""Cross-validation folds of the training split, with nnU-Net ``splits_final.json`` semantics.

``make_folds`` splits the training cases into K folds grouped by ``case_key`` (the patient for ACDC, so
both frames of a patient and every slice of a case such as ``patient001_frame01_slice_3`` land in the
same fold), balanced by the number of groups and deterministic from the seed (``train.seed``). A split
file is a JSON list with one ``{"train": [...], "val": [...]}`` per fold; the lists hold the case names
*as the training reader names them* (ACDC h5: the slice names), the identifiers nnU-Net lists too.
A user's split file may also name whole groups (``patient001``), which select all their names.

The test split is never part of a fold: a split file that names a test case is refused.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smaformer.data.sample import SLICE_NAME, case_key, volume_key
from smaformer.errors import InputError
from smaformer.io_utils import check_readable, write_text

log = logging.getLogger(__name__)


@dataclass
class FoldSplit:
    """Fold ``fold`` of ``splits`` (every fold's ``{"train", "val"}`` names), where it came from."""

    fold: int
    folds: int
    seed: int | None          # None for a user's split file
    source: str               # "generated" or the split file's path
    splits: list[dict]

    @property
    def train(self) -> list[str]:
        return list(self.splits[self.fold]["train"])

    @property
    def val(self) -> list[str]:
        return list(self.splits[self.fold]["val"])

    def record(self) -> dict:
        """What checkpoints store under ``"splits"`` (plain lists and numbers, ``weights_only``-safe)."""
        return {"fold": self.fold, "folds": self.folds, "seed": self.seed, "source": self.source,
                "splits": [{"train": list(s["train"]), "val": list(s["val"])} for s in self.splits]}


def make_folds(names: list[str], folds: int = 5, seed: int = 1234) -> list[dict]:
    """``folds`` x ``{"train": [...], "val": [...]}`` over ``names``, grouped by ``case_key``.

    The groups are shuffled with ``seed`` and dealt round-robin, so fold sizes (in groups) differ by at
    most one; every name is in exactly one ``val`` list.
    """
    groups = sorted({case_key(n) for n in names})
    if folds < 2:
        raise InputError(None, f"data.folds={folds}: cross-validation needs at least 2 folds")
    if len(groups) < folds:
        raise InputError(None, f"{len(groups)} training case(s) cannot make {folds} folds; lower data.folds")
    order = np.random.default_rng(int(seed)).permutation(len(groups))
    fold_of = {groups[g]: i % folds for i, g in enumerate(order)}
    out = []
    for k in range(folds):
        val = sorted(n for n in names if fold_of[case_key(n)] == k)
        train = sorted(n for n in names if fold_of[case_key(n)] != k)
        out.append({"train": train, "val": val})
    return out


def write_splits(splits: list[dict], path: str | Path) -> Path:
    """Write a split file (nnU-Net ``splits_final.json`` shape)."""
    return write_text(path, json.dumps(splits, indent=1) + "\n")


def _expand(listed: list[str], names: list[str], by_key: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """The reader names that ``listed`` selects (names, or whole groups) and the entries matching none."""
    known, out, unknown = set(names), [], []
    for n in listed:
        if n in known:
            out.append(n)
        elif n in by_key:
            out.extend(by_key[n])
        else:
            unknown.append(n)
    return sorted(set(out)), unknown


def read_splits(path: str | Path, names: list[str], test_names: list[str] = ()) -> list[dict]:
    """A user's split file, checked against the training split; each entry expanded to reader names.

    Refused (one-line ``InputError`` naming the file): a missing or empty file, invalid JSON, a shape other
    than a non-empty list of ``{"train": [names], "val": [names]}``, names not in the training split,
    names in both ``train`` and ``val`` of a fold, names validating in two folds, and names whose case is in
    the test split.
    """
    path = check_readable(path, "splits file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"splits file is not valid JSON ({e})") from None
    if not isinstance(data, list) or not data:
        raise InputError(path, 'a splits file is a non-empty JSON list of {"train": [...], "val": [...]}')
    by_key: dict[str, list[str]] = {}
    for n in names:
        by_key.setdefault(case_key(n), []).append(n)
    test = {case_key(c) for c in test_names}
    out, validated_in = [], {}
    for k, entry in enumerate(data):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(p), list) and
                                                  all(isinstance(n, str) for n in entry[p]) for p in ("train", "val")):
            raise InputError(path, f'fold {k} is not {{"train": [names], "val": [names]}}')
        fold = {}
        for part in ("train", "val"):
            leaked = sorted({case_key(n) for n in entry[part]} & test)
            if leaked:
                raise InputError(path, f"fold {k} {part} names {len(leaked)} case(s) of the test split "
                                       f"({', '.join(leaked[:5])}); the test split is never part of a fold")
            fold[part], unknown = _expand(entry[part], names, by_key)
            if unknown:
                raise InputError(path, f"fold {k} {part}: {len(unknown)} name(s) not in the training split "
                                       f"({', '.join(unknown[:5])})")
        if not fold["val"] or not fold["train"]:
            raise InputError(path, f"fold {k} has an empty {'val' if not fold['val'] else 'train'} list")
        both = sorted(set(fold["train"]) & set(fold["val"]))
        if both:
            raise InputError(path, f"fold {k}: {len(both)} name(s) in both train and val ({', '.join(both[:5])})")
        shared = sorted({case_key(n) for n in fold["train"]} & {case_key(n) for n in fold["val"]})
        if shared:
            log.warning("%s: fold %d puts %d case(s) in both train and val with different names (%s): the "
                        "folds are not grouped by patient", path, k, len(shared), ", ".join(shared[:5]))
        for n in fold["val"]:
            if n in validated_in:
                raise InputError(path, f"{n} validates in folds {validated_in[n]} and {k}; each case validates in "
                                       "one fold only (the pooled cross-validation counts every case once)")
            validated_in[n] = k
        out.append(fold)
    return out


def fold_split(d: dict, seed: int, names: list[str], test_names: list[str] = ()) -> FoldSplit:
    """The fold the data section asks for (``data.fold``, ``data.folds``, ``data.splits_file``)."""
    fold = int(d["fold"])
    if d.get("splits_file"):
        splits, seed_used, source = read_splits(d["splits_file"], names, test_names), None, str(d["splits_file"])
        if fold >= len(splits):
            raise InputError(d["splits_file"], f"fold {fold} is out of range: the splits file has {len(splits)} "
                                               f"fold(s) (0..{len(splits) - 1})")
    else:
        splits, seed_used, source = make_folds(names, int(d["folds"]), seed), int(seed), "generated"
    return FoldSplit(fold, len(splits), seed_used, source, splits)


def describe_fold(split: FoldSplit | None) -> str | None:
    """One line for the plan of a run (``--dry-run``), or None without cross-validation."""
    if split is None:
        return None
    origin = f"seed {split.seed}" if split.seed is not None else split.source
    parts = []
    for what, names in (("train", split.train), ("val", split.val)):
        groups, volumes = len({case_key(n) for n in names}), len({volume_key(n) for n in names})
        unit = "slices" if any(SLICE_NAME.search(n) for n in names) else "names"
        counts = ([f"{volumes} volumes"] if groups < volumes < len(names) else []) + \
            ([f"{len(names)} {unit}"] if len(names) != groups else [])
        parts.append(f"{what} {groups} cases" + (f" ({', '.join(counts)})" if counts else ""))
    return f"fold {split.fold} of {split.folds} ({origin}): {', '.join(parts)}"

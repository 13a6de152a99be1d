"""``SliceDataset``: 2D training/validation slices from any reader (or a list of samples) as tensors.

Each item is ``{"image": FloatTensor (C,H,W), "label": LongTensor (H,W), "case": str, "slice": int}``.
Per case the intensity spec is applied once on load, with the statistics volume inference uses: a volume's
for a volume; for slice-stored layouts (Synapse npz, ACDC h5: ``case0005_slice012``) zscore/minmax take
the statistics of the volume the slice belongs to (all the slices with its name less the slice suffix),
computed once per volume, unless ``per_slice`` asks for each slice's own. Per slice the augmentation (or a
plain resize) runs, then the channel mode.
Volumes are cached in memory up to ``cache_bytes`` per process, because shuffled slice sampling would
otherwise decode the same volume again and again.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from smaformer.data.preprocess import fix_volume_statistics, make_channels, normalize_intensity
from smaformer.data.sample import SLICE_NAME, Reader, Sample, volume_key
from smaformer.data.transforms import RandomGenerator, random_crop, resize_pair
from smaformer.errors import InputError

log = logging.getLogger(__name__)

Augment = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class SliceDataset(Dataset):
    """Slices of ``source`` (a :class:`Reader` or a sequence of :class:`Sample`).

    Args:
        preprocessing: a checkpoint preprocessing block (``img_size``, ``in_chans``, ``channel_mode``,
            ``intensity``); the explicit keyword arguments below override its entries.
        augment: ``True`` for the official :class:`RandomGenerator` at ``img_size``, a callable
            ``(image (C,H,W), label (H,W)) -> (image, label)`` at the output size, or ``False``.
        img_size: output size; ``None`` keeps each slice's own size (then batch only equal sizes).
        skip_empty: drop slices whose label is all background (some recipes train on these only).
        crop: take a random ``img_size`` crop of each slice at its own resolution (zero-padded where the
            slice is smaller) instead of resizing the whole slice; such a model predicts with a sliding
            window. The augmentation then runs on the crop.
    Cases that fail while indexing are left out; a case that fails later is replaced by the next good
    slice. Both are listed in ``self.skipped`` (per process: DataLoader workers keep their own lists).
    """

    def __init__(self, source: Reader | Sequence[Sample], *, preprocessing: dict | None = None,
                 augment: bool | Augment = False, img_size: int | tuple[int, int] | None = None,
                 intensity: dict | None = None, channel_mode: str | None = None, in_chans: int | None = None,
                 skip_empty: bool = False, cache_bytes: int = 2 << 30, crop: bool = False):
        prep = dict(preprocessing or {})
        self.img_size = img_size if img_size is not None else prep.get("img_size")
        self.intensity = dict(intensity or prep.get("intensity") or {"mode": "none"})
        self.channel_mode = channel_mode or prep.get("channel_mode", "repeat")
        self.in_chans = int(in_chans or prep.get("in_chans", 1))
        if augment is True:
            if self.img_size is None:
                raise ValueError("augment=True needs img_size (the official augmentation zooms to it)")
            augment = RandomGenerator(tuple(self._size()))
        self.augment: Augment | None = augment or None
        if crop and self.img_size is None:
            raise ValueError("crop=True needs img_size (the crop size)")
        self.crop = bool(crop)
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[str, Sample] = OrderedDict()
        self._cached_bytes = 0
        self.skipped: list[tuple[str, str]] = []
        self._bad: set[str] = set()
        if isinstance(source, Reader):
            self.reader: Reader | None = source
            self._samples: dict[str, Sample] = {}
            self.classes = list(source.classes)
            counts = self._count_reader(source)
            self.skipped[:0] = source.skipped  # missing pairs found while listing the cases
        else:
            self.reader = None
            self._samples = {s.case or f"sample{i}": s for i, s in enumerate(source)}
            self.classes = list(source[0].meta.get("classes", [])) if len(source) else []
            counts = [(c, s.num_slices()) for c, s in self._samples.items()]
        self.index: list[tuple[str, int]] = [(c, i) for c, n in counts for i in range(n)]
        self._slices_of: dict[str, list[str]] = {}    # volume -> its stored slices, for volume statistics
        if self.intensity.get("mode") in ("zscore", "minmax") and not self.intensity.get("per_slice"):
            for c, _ in counts:
                if SLICE_NAME.search(c):
                    self._slices_of.setdefault(volume_key(c), []).append(c)
        self._volume_spec: dict[str, dict] = {}
        if skip_empty:
            self.index = [(c, i) for c, i in self.index if self._has_foreground(c, i)]
        if not self.index:
            where = getattr(source, "root", None) or "the given samples"
            raise InputError(where, "no slices to train on" + (f" ({len(self.skipped)} cases skipped: "
                                                               f"{self.skipped[0][1]})" if self.skipped else ""))

    def _size(self) -> tuple[int, int]:
        s = self.img_size
        return (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))

    def _count_reader(self, reader: Reader) -> list[tuple[str, int]]:
        counts = []
        for case in reader.cases():
            try:
                counts.append((case, reader.num_slices(case)))
            except InputError as e:
                log.warning("skipping case %s: %s", case, e)
                self.skipped.append((case, str(e)))
        return counts

    def _load(self, case: str) -> Sample:
        """The case with the intensity spec applied, through the per-process cache."""
        if case in self._cache:
            self._cache.move_to_end(case)
            return self._cache[case]
        raw = self._raw(case)
        if raw.label is None:
            raise InputError(raw.meta.get("path", case), "no label: a training/validation slice needs one")
        image = (normalize_intensity(raw.image, self.intensity) if raw.is_volume  # a 2D image is a stack of one
                 else normalize_intensity(raw.image[None], self._spec_of_slice(case))[0])
        sample = Sample(image, raw.label, raw.meta)
        self._cache[case] = sample
        self._cached_bytes += sample.image.nbytes + sample.label.nbytes
        while len(self._cache) > 1 and self._cached_bytes > self.cache_bytes:
            old = self._cache.popitem(last=False)[1]
            self._cached_bytes -= old.image.nbytes + old.label.nbytes
        return sample

    def _raw(self, case: str) -> Sample:
        return self._samples[case] if self.reader is None else self.reader.load_case(case)

    def _spec_of_slice(self, case: str) -> dict:
        """The intensity spec of a stored 2D slice: zscore/minmax with the statistics of its whole volume
        (its sibling slices that load; fixed once per volume), as volume inference normalises it."""
        volume = volume_key(case)
        if volume not in self._slices_of:
            return self.intensity
        if volume not in self._volume_spec:
            values = []
            for name in self._slices_of[volume]:
                try:
                    values.append(np.asarray(self._raw(name).image, dtype=np.float32).reshape(-1))
                except InputError:
                    continue     # that slice is dropped when it is loaded itself
            self._volume_spec[volume] = fix_volume_statistics(np.concatenate(values), self.intensity)
        return self._volume_spec[volume]

    def _has_foreground(self, case: str, index: int) -> bool:
        if case in self._bad:
            return False
        try:
            return bool(self._load(case).slice(index).label.any())
        except InputError as e:
            self._drop(case, e)
            return False

    def _drop(self, case: str, e: InputError) -> None:
        """Log a case that failed to load, remember it and record it in ``skipped``."""
        log.warning("skipping case %s: %s", case, e)
        self._bad.add(case)
        self.skipped.append((case, str(e)))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        """Slice ``i``; a case that fails to load is logged, remembered and replaced by the next good slice,
        so one bad file never stops a training run (faults found while indexing are in ``skipped``)."""
        for j in range(len(self.index)):
            case, k = self.index[(i + j) % len(self.index)]
            if case in self._bad:
                continue
            try:
                return self._item(case, k)
            except InputError as e:
                self._drop(case, e)
        raise InputError(getattr(self.reader, "root", None), "every case failed to load; see the warnings")

    def _item(self, case: str, k: int) -> dict:
        sl = self._load(case).slice(k)
        image, label = sl.image, sl.label
        if self.crop:
            image, label = random_crop(image, label, self._size())
        if self.augment is not None:
            image, label = self.augment(image, label)
        elif self.img_size is not None:
            image, label = resize_pair(image, label, self._size())
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        if self.channel_mode == "pseudo_hdr" or x.shape[0] != self.in_chans:
            x = make_channels(x[None], self.channel_mode, self.in_chans)[0]
        y = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
        return {"image": x, "label": y, "case": case, "slice": k}

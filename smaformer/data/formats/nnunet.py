"""nnU-Net v2 raw datasets: ``dataset.json``, ``imagesTr/CASE_0000<ending>``, ``labelsTr/CASE<ending>``
(``imagesTs/`` for ``split="test"``, labelled when ``labelsTs/`` exists). Class names come from
``dataset.json`` ``labels``; region-based label sets are not supported. Multi-channel cases: ``channel``
picks one (default 0), or ``channel=None`` stacks all for 2D images."""
from __future__ import annotations

import json
import logging
import re

import numpy as np

from smaformer.data.formats.base import PairedReader, list_files, register_layout
from smaformer.data.io import read_image
from smaformer.data.sample import Sample
from smaformer.errors import InputError

log = logging.getLogger(__name__)


@register_layout
class NnUNetReader(PairedReader):
    layout = "nnunet"
    splits = ("train", "test")

    @classmethod
    def detect(cls, root) -> bool:
        return (root / "dataset.json").is_file() and (root / "imagesTr").is_dir()

    def __init__(self, root, split=None, classes=None, frame=None, channel: int | None = 0):
        super().__init__(root, split, classes, frame)
        js = self.root / "dataset.json"
        try:
            self.info = json.loads(js.read_text(encoding="utf-8"))
            labels = self.info["labels"]
            self.file_ending = self.info.get("file_ending", ".nii.gz")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(js, f"not a valid nnU-Net dataset.json ({type(e).__name__}: {e})") from None
        if any(not isinstance(v, int) for v in labels.values()):
            raise InputError(js, "region-based labels (lists of ids) are not supported; give one id per class")
        ids = sorted(labels.values())
        if ids != list(range(len(ids))):
            raise InputError(js, f"label ids must be 0..{len(ids) - 1} without gaps, got {ids}")
        if not classes:
            self.classes = [name for name, _ in sorted(labels.items(), key=lambda kv: kv[1])]
        self.num_channels = len(self.info.get("channel_names", self.info.get("modality", {"0": ""})))
        self.channel = channel
        if channel is not None and not 0 <= channel < self.num_channels:
            raise InputError(js, f"channel {channel} out of range 0..{self.num_channels - 1}")
        if channel is not None and self.num_channels > 1:
            log.warning("%s: %d channels; reading channel %d only", js, self.num_channels, channel)
        self.labeled = self.split == "train" or (self.root / "labelsTs").is_dir()

    def _find_pairs(self):
        images = self.root / ("imagesTr" if self.split == "train" else "imagesTs")
        labels = self.root / ("labelsTr" if self.split == "train" else "labelsTs")
        end = self.file_ending
        pat = re.compile(r"^(.+)_(\d{4})" + re.escape(end) + "$")
        found: dict[str, list] = {}
        for p in list_files(images, (end,)):
            m = pat.match(p.name)
            if m and int(m.group(2)) == (self.channel or 0):
                found.setdefault(m.group(1), [None, None])[0] = p
        for p in list_files(labels, (end,)):
            found.setdefault(p.name[: -len(end)], [None, None])[1] = p
        return {c: tuple(v) for c, v in sorted(found.items())}

    def load_case(self, case: str) -> Sample:
        sample = super().load_case(case)
        if self.channel is None and self.num_channels > 1:
            if sample.is_volume:
                raise InputError(self.root, "stacking channels works for 2D datasets only; pass channel=N")
            img_path = self.pairs()[case][0]
            chans = [sample.image]
            for c in range(1, self.num_channels):
                path = img_path.with_name(f"{case}_{c:04d}{self.file_ending}")
                chans.append(read_image(path)[0])
            sample.image = np.concatenate(chans)
        return sample

"""Resumable, rank-aware sampling and per-item seeding: what makes a resumed run bit-identical.

- ``ResumableSampler`` draws one permutation per epoch from ``(seed, epoch)`` (so any epoch can be
  rebuilt), shards it across DDP ranks like ``DistributedSampler`` and can start mid-epoch.
- It yields ``epoch * n + index``; ``SeededItems`` decodes that and seeds Python, NumPy and torch from
  ``(seed, epoch, index)`` around each ``__getitem__``. Augmentations then depend on neither the worker
  that loads the item nor where a run was resumed, and the caller's global RNG streams are left untouched.
- ``capture_rng`` / ``restore_rng`` store every RNG state as tensors, lists and numbers, so they fit in a
  checkpoint loadable with ``weights_only=True``.
"""
from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class ResumableSampler(Sampler[int]):
    """Shuffled (or ordered) indices for one rank, restartable at any position of any epoch."""

    def __init__(self, n: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1):
        if n < 1:
            raise ValueError("the dataset is empty")
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, int(seed), rank, world_size
        self.per_rank = -(-n // world_size)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and skip its first ``start`` samples on this rank (mid-epoch resume)."""
        self.epoch, self.start = int(epoch), int(start)

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        order += order[: self.per_rank * self.world - self.n]    # pad so every rank gets as many samples
        return order[self.rank::self.world]

    def __iter__(self) -> Iterator[int]:
        base = self.epoch * self.n
        return iter([base + i for i in self.indices()[self.start:]])

    def __len__(self) -> int:
        return self.per_rank - self.start


def _item_seed(seed: int, epoch: int, index: int) -> int:
    return (int(seed) * 1_000_003 + epoch * 7_919 + index * 104_729) % (2 ** 31 - 1)


class SeededItems(Dataset):
    """Wrap a dataset whose items are augmented randomly; item ``epoch*n + i`` is seeded from (seed, epoch, i)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.n = dataset, int(seed), len(dataset)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int):
        epoch, index = divmod(int(key), self.n)
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        s = _item_seed(self.seed, epoch, index)
        random.seed(s)
        np.random.seed(s)
        torch.default_generator.manual_seed(s)    # CPU only: torch.manual_seed also queues lazy CUDA seeding
        try:
            return self.dataset[index]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


def capture_rng() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as checkpoint-safe values."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": [version, list(state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict) -> None:
    """Inverse of ``capture_rng``."""
    version, st, gauss = state["python"]
    random.setstate((version, tuple(st), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """One seed for Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)

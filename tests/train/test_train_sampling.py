"""Resumable sampling: batches do not depend on worker count or on where an epoch was resumed."""
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from smaformer.train.sampling import ResumableSampler, SeededItems, capture_rng, restore_rng


class Noisy(Dataset):
    """Each item draws from Python, NumPy and torch RNGs, like an augmentation pipeline."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.tensor([i, random.random(), np.random.rand(), torch.rand(()).item()], dtype=torch.float64)


def _epoch(epoch, start=0, workers=0, rank=0, world=1):
    sampler = ResumableSampler(10, seed=3, rank=rank, world_size=world)
    sampler.set_epoch(epoch, start)
    loader = DataLoader(SeededItems(Noisy(), seed=3), batch_size=2, sampler=sampler, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    return torch.cat(list(loader))


def test_items_independent_of_workers_and_resume_point():
    full = _epoch(1)
    assert torch.equal(full, _epoch(1, workers=2))
    assert torch.equal(full[4:], _epoch(1, start=4))
    assert not torch.equal(full, _epoch(2))                  # a new order and new augmentations each epoch
    assert sorted(full[:, 0].tolist()) == list(range(10))


def test_ranks_partition_the_epoch():
    parts = [_epoch(0, rank=r, world=3) for r in range(3)]
    ids = torch.cat(parts)[:, 0].long().tolist()
    assert len(ids) == 12 and set(ids) == set(range(10))     # padded to a multiple of the world size


def test_item_seeding_leaves_global_streams_alone():
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    expected = (random.random(), np.random.rand(), torch.rand(()).item())
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    SeededItems(Noisy(), seed=0)[5]
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected


def test_rng_state_round_trip_is_checkpoint_safe(tmp_path):
    state = capture_rng()
    torch.save(state, tmp_path / "rng.pt")
    a = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])

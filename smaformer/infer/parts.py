"""Split the cases of ``predict`` / ``evaluate`` over several processes: ``--num-parts N --part-id K`` for
independent jobs (SLURM arrays, Kubernetes jobs), or the ranks ``torchrun`` describes.

Cases are dealt round-robin from the sorted case list, as nnU-Net's ``-num_parts/-part_id`` does: part K
takes cases K, K+N, K+2N, ... So N processes that list the same input cover every case exactly once, with
no coordination, and the parts differ in size by at most one case.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the parts are the ranks: rank R of W is part R of W, on
``cuda:LOCAL_RANK`` when the device is CUDA. ``evaluate`` then gathers the per-rank results to every rank
with ``all_gather_object`` over a gloo group, and rank 0 writes the one ``metrics.json``. Gloo rather than
per-rank files merged from disk: the rows are small Python objects, gloo carries them on CPU and GPU
nodes alike, and no shared file system, polling or stale partial files are needed across nodes.
Independent parts (no torchrun) cannot talk to each other: each writes ``metrics_part{K}_of_{N}.json`` and
``infer.evaluate.merge_part_files`` pools them once all are done (``smaformer evaluate --merge-parts -o OUT``).
"""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from smaformer.errors import InputError

T = TypeVar("T")
# A rank that finishes early waits in the gather for the slowest; torchrun stops every rank when one dies,
# so this only bounds a hung rank. Big cohorts take hours per rank, hence not gloo's default 30 minutes.
GATHER_TIMEOUT = _dt.timedelta(hours=24)


@dataclass(frozen=True)
class Part:
    """Which share of the cases this process handles."""

    part_id: int = 0
    num_parts: int = 1
    torchrun: bool = False
    local_rank: int = 0

    @property
    def split(self) -> bool:
        return self.num_parts > 1

    def take(self, items: list[T]) -> list[T]:
        """This part's items: every ``num_parts``-th from ``part_id`` on."""
        return list(items[self.part_id::self.num_parts])

    def suffix(self) -> str:
        """``""`` for a whole run, else ``_part{K}_of_{N}`` (for file names that must not clobber each other)."""
        return f"_part{self.part_id}_of_{self.num_parts}" if self.split else ""

    def describe(self) -> str:
        how = "torchrun rank" if self.torchrun else "part"
        return f"{how} {self.part_id} of {self.num_parts}"

    def device(self, device: torch.device) -> torch.device:
        """Under torchrun a bare ``cuda`` becomes ``cuda:LOCAL_RANK`` (modulo the visible GPUs, so more ranks
        than GPUs share them); an explicit index or another device is kept."""
        if not self.torchrun or device.type != "cuda" or device.index is not None:
            return device
        device = torch.device("cuda", self.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
        return device


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InputError(None, f"environment variable {name}={value!r} is not an integer") from None


def resolve_part(num_parts: int | None = None, part_id: int | None = None, *, torchrun: bool = False) -> Part:
    """The part of this process, from ``--num-parts/--part-id``, or (``torchrun=True``, as the CLI asks) from
    torchrun's RANK/WORLD_SIZE/LOCAL_RANK when WORLD_SIZE > 1.

    The API asks for the environment only when told: a DDP training run calls ``evaluate`` on rank 0 alone.
    Both at once is refused: under torchrun the ranks are the parts (``torchrun --nnodes`` spans nodes)."""
    world = (_env_int("WORLD_SIZE") or 1) if torchrun else 1
    if world > 1:
        if num_parts not in (None, 1) or part_id not in (None, 0):
            raise InputError(None, f"under torchrun (WORLD_SIZE={world}) each rank is one part; "
                                   "drop --num-parts/--part-id")
        rank = _env_int("RANK")
        if rank is None or not 0 <= rank < world:
            raise InputError(None, f"torchrun environment: RANK={os.environ.get('RANK')} is not in 0..{world - 1}")
        return Part(rank, world, torchrun=True, local_rank=_env_int("LOCAL_RANK") or 0)
    n = 1 if num_parts is None else num_parts
    k = 0 if part_id is None else part_id
    if n < 1:
        raise InputError(None, f"--num-parts {n}: must be at least 1")
    if not 0 <= k < n:
        raise InputError(None, f"--part-id {k}: must be in 0..{n - 1} for --num-parts {n}")
    return Part(k, n)


def gather(obj: Any, part: Part) -> list[Any]:
    """Every rank's ``obj``, ordered by rank (``[obj]`` outside torchrun). Joins a gloo group for the call
    when none exists, and leaves it afterwards."""
    if not part.torchrun:
        return [obj]
    import torch.distributed as dist

    own = not dist.is_initialized()
    if own:
        dist.init_process_group("gloo", timeout=GATHER_TIMEOUT)
    try:
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
    finally:
        if own:
            dist.destroy_process_group()
    return out


def interleave(part_lists: list[list[T]]) -> list[T]:
    """Undo the dealing: item j of part k is item j*N + k of the whole list (parts given in part order)."""
    out: list[T] = []
    for j in range(max((len(p) for p in part_lists), default=0)):
        out += [p[j] for p in part_lists if j < len(p)]
    return out

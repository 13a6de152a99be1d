"""DDP plumbing for ``torchrun --nproc_per_node=N -m smaformer train ...``.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything runs as a single process.
The backend is NCCL on CUDA and gloo on CPU.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "none"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Dist:
    """Join the process group torchrun describes (no-op when WORLD_SIZE is unset or 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if device_kind == "cuda":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Dist(dist.get_rank(), dist.get_world_size(), local, backend)


def _comm_device(d: Dist) -> torch.device:
    return torch.device("cuda", d.local_rank) if d.backend == "nccl" else torch.device("cpu")


def leave() -> None:
    """Leave the process group joined through torchrun, if any (also after a run that failed to start).

    Drop every DDP wrapper first: if DDP's reducer holds the last reference to a gloo group, freeing it joins
    gloo's worker threads while holding the GIL, and a worker still freeing the last collective's tensors
    waits for the GIL: the process hangs at exit (seen on rank 1, which skips the final validation).
    ``gc.collect`` frees wrappers caught in reference cycles while the group is still registered."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def all_reduce_sum(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum a tensor over ranks (returns the input when not distributed)."""
    if not d.enabled:
        return x
    y = x.detach().to(_comm_device(d), copy=True)
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y.to(x.device)


def gather_objects(obj, d: Dist) -> list:
    """Every rank's ``obj`` as a list ordered by rank (``[obj]`` when not distributed)."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_flag(flag: bool, d: Dist) -> bool:
    """Rank 0's decision, on every rank (e.g. early stopping)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_comm_device(d))
    dist.broadcast(t, src=0)
    return bool(t.item())

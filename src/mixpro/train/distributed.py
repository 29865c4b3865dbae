"""Distributed set-up for ``torchrun --nproc_per_node=N mixpro train``.

Owns: reading torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), initialising
the process group (NCCL on CUDA, gloo on CPU), picking each rank's device, and the small
collectives the app needs (sums for evaluation, broadcasting a decision from rank 0).
Without torchrun everything degrades to a single process (rank 0 of 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world`` and its device."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:<local_rank>`` when CUDA is available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    return torch.device(name)


def setup(device: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE > 1``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, dev)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64)."""
    t = torch.tensor(values, dtype=torch.float64)
    if info.distributed:
        t = t.to(info.device)
        dist.all_reduce(t)
    return t.cpu().tolist()


def agree(ok: bool, info: DistInfo) -> bool:
    """True only when every rank says ``ok`` (all ranks fail together on a user error)."""
    if not info.distributed:
        return ok
    t = torch.tensor([0.0 if ok else 1.0], device=info.device)
    dist.all_reduce(t)
    return float(t) == 0.0


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True when any rank says ``flag`` (so that all ranks stop at the same step)."""
    if not info.distributed:
        return flag
    return all_sum([float(flag)], info)[0] > 0

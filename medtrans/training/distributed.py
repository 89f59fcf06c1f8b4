"""Several processes under ``torchrun`` (PyTorch DDP): one process group for the whole command, set up once.

A single ``train`` and every member of an ensemble share it, so that rank 0 alone writes the run's records and the
other ranks wait for them at a barrier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    local: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def ranks() -> Ranks:
    """This process's rank, the world size and the local rank; the process group is created on first use."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("MEDTRANS_DDP_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if world > 1 else 0
    return Ranks(rank, world, int(os.environ.get("LOCAL_RANK", "0")))


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def finish() -> None:
    """Leave the process group (at the very end of the command)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

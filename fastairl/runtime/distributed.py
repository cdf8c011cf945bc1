"""Process-group setup and the few collectives the methods need.

Runs under torchrun (env:// rendezvous: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)
or as a single plain process. NCCL on CUDA, gloo on CPU. The global rank comes from
torchrun's RANK, which already includes the node's rank (the reference's multi-node rank
bug cannot happen here).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def cuda_index(local_rank: int) -> int:
    """The GPU of this process: ``LOCAL_RANK`` among the visible GPUs. A launcher that shows
    each process only its own GPU (SLURM with per-task binding) gives every process index 0."""
    n = torch.cuda.device_count()
    return local_rank % n if n else 0


def init(device_type: str) -> DistInfo:
    """Initialise the default process group when launched by torchrun with >1 process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(cuda_index(local_rank))
        timeout = datetime.timedelta(minutes=30)
        # After a torchrun restart the agent's store still holds the dead generation's keys;
        # a per-restart prefix keeps the new process group from connecting to them.
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or "0"
        store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=timeout))
        store = dist.PrefixStore(f"fastairl/restart{restart}", store)
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world, timeout=timeout)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@torch.no_grad()
def gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0 (no gradient; equal sizes)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


def broadcast_(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    if world_size() > 1:
        dist.broadcast(x, src)
    return x


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= world_size()
    return x


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s python object on every rank (for decisions only rank 0 may make)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()

"""A distributed sampler that can start mid-epoch.

Same order rule as torch's DistributedSampler (a permutation seeded by seed + epoch,
every rank takes a strided slice), plus ``start_batch``: a resumed run skips the batches
it already trained on without reading them, which is what makes mid-epoch resume exact.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableDistributedSampler(Sampler[int]):
    def __init__(self, n: int, rank: int, world_size: int, batch_size: int, shuffle: bool = True,
                 drop_last: bool = True, seed: int = 0):
        if n <= 0:
            raise ValueError("the dataset is empty")
        self.n, self.rank, self.world, self.batch = n, rank, world_size, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.epoch = 0
        self.start_batch = 0
        if drop_last:
            self.per_rank = (n // world_size // batch_size) * batch_size
        else:
            self.per_rank = math.ceil(n / world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if not self.drop_last:
            total = self.per_rank * self.world
            order = order + order[: total - len(order)]  # pad (eval only), like torch's sampler
        mine = order[self.rank::self.world][: self.per_rank]
        return mine[self.start_batch * self.batch:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return max(self.per_rank - self.start_batch * self.batch, 0)

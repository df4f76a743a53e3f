"""Samplers for evaluation under DDP."""

from __future__ import annotations

from collections.abc import Iterator

import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler


class ShardedEvalSampler(DistributedSampler):
    """This process's share of an eval set, in order, each sample on exactly one process.

    Lightning's DistributedSampler pads the set with repeats so every process gets as many batches,
    which would count those samples twice in the test metrics. Being a DistributedSampler, Lightning
    keeps this one; the shares are read when iterating, once the process group exists.
    """

    def __init__(self, dataset: Dataset) -> None:
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=False)

    def _indices(self) -> range:
        if dist.is_available() and dist.is_initialized():
            return range(dist.get_rank(), len(self.dataset), dist.get_world_size())
        return range(len(self.dataset))

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())

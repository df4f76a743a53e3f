"""More than one process, and bigger jobs: exact DDP test metrics, and out-of-memory advice."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import LightningDataModule, Trainer
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, DistributedSampler

log = logging.getLogger(__name__)


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


def ddp_test_args(trainer: Trainer, datamodule: LightningDataModule) -> dict[str, Any]:
    """Arguments for `trainer.test`: the datamodule, or under DDP its test loader with exact shards."""
    if trainer.world_size == 1:
        return {"datamodule": datamodule}
    loader = datamodule.test_dataloader()
    exact = DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=ShardedEvalSampler(loader.dataset),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        persistent_workers=loader.persistent_workers,
    )
    return {"dataloaders": exact}


@contextlib.contextmanager
def oom_advice(cfg: DictConfig) -> Iterator[None]:
    """Re-raise out-of-memory with the batch size that caused it and the overrides to try."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        batch = int(cfg.data.batch_size)
        accumulate = int(cfg.trainer.get("accumulate_grad_batches") or 1)
        plus = "" if "accumulate_grad_batches" in cfg.trainer else "+"  # not in every trainer config
        message = (
            f"Out of memory with data.batch_size={batch} (per device). Rerun with "
            f"data.batch_size={max(1, batch // 2)} {plus}trainer.accumulate_grad_batches={2 * accumulate} "
            f"(the same effective batch of {batch * accumulate}), or a smaller data.image_size or model. "
            f"({str(e).strip().splitlines()[0] if str(e).strip() else 'torch.OutOfMemoryError'})"
        )
        log.error(message)
        raise torch.OutOfMemoryError(message) from e

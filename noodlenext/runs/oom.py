"""Out-of-memory advice that names the batch size and the overrides to retry with."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from omegaconf import DictConfig

log = logging.getLogger(__name__)


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

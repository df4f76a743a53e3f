"""What every entry point shares: precision, callbacks and loggers from config, and a safe shutdown."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import hydra
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def resolve_precision(precision: Any) -> Any:
    """`auto` -> bf16-mixed on a GPU that supports it, else 32-true."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a callbacks/logger group (null entries switch one off)."""
    if not group:
        return []
    return [hydra.utils.instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def instantiate_callbacks(cfg: DictConfig, with_logger: bool = True) -> list[Callback]:
    """The callbacks group; LearningRateMonitor is dropped without a logger (it would refuse to start)."""
    callbacks = instantiate_group(cfg.get("callbacks"))
    return [c for c in callbacks if with_logger or not isinstance(c, LearningRateMonitor)]


def instantiate_loggers(cfg: DictConfig) -> list[Logger]:
    return instantiate_group(cfg.get("logger"))


def config_as_dict(cfg: DictConfig) -> dict[str, Any]:
    """The composed config, resolved, as plain data (for checkpoints and the W&B run)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def task_wrapper(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Log a crash with the run directory, and always close W&B so the next sweep job starts clean."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except Exception:
            log.exception(
                "%s failed; what it wrote so far stays in %s", cfg.get("task_name"), cfg.paths.output_dir
            )
            raise
        finally:
            try:
                import wandb

                if wandb.run is not None:
                    wandb.finish()
            except ImportError:
                pass

    return wrapped

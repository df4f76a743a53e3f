"""Callbacks and loggers from the Hydra config, and the composed config as plain data."""

from __future__ import annotations

from typing import Any

import hydra
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf


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
    """The logger group (empty for logger=none)."""
    return instantiate_group(cfg.get("logger"))


def config_as_dict(cfg: DictConfig) -> dict[str, Any]:
    """The composed config, resolved, as plain data (for checkpoints and the W&B run)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)

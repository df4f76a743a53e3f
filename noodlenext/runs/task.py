"""Wrappers around an entry point's task: a safe shutdown, and sweeps that go on past a failed job."""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from noodlenext.callbacks.sweep_comparison import ERROR_FILE
from noodlenext.core.files import write_json_atomic

log = logging.getLogger(__name__)


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


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def keep_sweeping(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """In a multirun, a failing job writes error.json into its directory and returns None, so the
    other jobs still run and the comparison lists it as failed (Hydra's basic sweeper would re-raise the
    first failure after the batch and skip `on_multirun_end`; Optuna marks a None trial as failed).
    A single run still raises."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except Exception as e:
            if not _in_multirun():
                raise
            job_dir = Path(HydraConfig.get().runtime.output_dir)
            error = f"{type(e).__name__}: {e}"
            write_json_atomic(job_dir / ERROR_FILE, {"error": error, "traceback": traceback.format_exc()})
            log.error("job %s failed (%s); the sweep goes on", job_dir, error)
            return None

    return wrapped

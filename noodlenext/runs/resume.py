"""Resuming a run: `resume=auto` finds the checkpoint, the run directory and W&B run id to continue.

`resume=auto` picks `<run dir>/checkpoints/last.ckpt` when the run directory is given
(`hydra.run.dir=...`, or a sweep job's own directory), else the newest `last.ckpt` among the run
directories of the same task (`outputs/<task_name>/*/checkpoints/last.ckpt`), and then writes into that
run directory. It starts from scratch when there is none, so a preemptible job can always pass it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from noodlenext.models.classifier import CHECKPOINT_KEY
from noodlenext.runs.checkpoint_io import is_complete_checkpoint

log = logging.getLogger(__name__)

# DDP worker processes re-run the command line (Lightning's subprocess launcher): rank 0 hands them
# the checkpoint it chose, so every rank continues from the same one.
RESUME_ENV = "NOODLENEXT_RESUME"


def find_last_checkpoint(run_dir: Path, siblings: bool) -> Path | None:
    """`run_dir/checkpoints/last.ckpt`, else (siblings) the newest complete one beside run_dir."""
    own = run_dir / "checkpoints" / "last.ckpt"
    candidates = [own] if own.is_file() else []
    if not candidates and siblings:
        found = run_dir.parent.glob("*/checkpoints/last.ckpt")
        candidates = sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        if is_complete_checkpoint(path):
            return path
        log.warning("resume=auto: skipping %s, it is not a complete checkpoint", path)
    return None


def _run_dir_was_given() -> bool:
    hydra = HydraConfig.get()
    return hydra.mode == RunMode.MULTIRUN or any(
        o.startswith("hydra.run.dir=") for o in hydra.overrides.hydra
    )


def _wandb_entries(cfg: DictConfig) -> list[DictConfig]:
    loggers = cfg.get("logger") or {}
    return [c for c in loggers.values() if c and str(c.get("_target_", "")).endswith("WandbLogger")]


def _stored_wandb_id(ckpt: Path) -> str | None:
    meta = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True).get(CHECKPOINT_KEY, {})
    loggers = ((meta.get("config") or {}).get("logger")) or {}
    return next((c["id"] for c in loggers.values() if isinstance(c, dict) and c.get("id")), None)


def prepare_resume(cfg: DictConfig) -> str | None:
    """The checkpoint to fit from (`ckpt_path`, or what `resume=auto` finds), or None.

    Resuming keeps the W&B run id stored in the checkpoint's config; `resume=auto` also points
    `paths.output_dir` at the run directory it continues. A fresh run gets a new W&B id here, so its
    checkpoints carry it (in the composed config they store). Call before anything reads
    `paths.output_dir` or records the config.
    """
    mode = cfg.get("resume")
    if mode not in (None, "auto"):
        raise ValueError(f"resume={mode}: use resume=auto, or ckpt_path=<file> for a given checkpoint")
    ckpt, run_dir = cfg.get("ckpt_path"), None
    handoff = json.loads(os.environ.get(RESUME_ENV, "{}"))
    if mode == "auto" and ckpt:
        log.info("resume=auto: ckpt_path=%s is given, resuming from it", ckpt)
    elif mode == "auto" and handoff.get("hydra_dir") == HydraConfig.get().runtime.output_dir:
        ckpt, run_dir = handoff["ckpt"], handoff["run_dir"]
    elif mode == "auto":
        here = Path(cfg.paths.output_dir)
        found = find_last_checkpoint(here, siblings=not _run_dir_was_given())
        if found is None:
            log.info("resume=auto: no last.ckpt for %s, starting a new run", here)
        else:
            ckpt, run_dir = str(found), str(found.parent.parent)
            log.info("resume=auto: resuming from %s, continuing the run in %s", ckpt, run_dir)
        os.environ[RESUME_ENV] = json.dumps(
            {"hydra_dir": HydraConfig.get().runtime.output_dir, "ckpt": ckpt, "run_dir": run_dir}
        )
    wandb_id = _stored_wandb_id(Path(ckpt)) if ckpt and Path(ckpt).is_file() else None
    with open_dict(cfg):
        if run_dir is not None:
            cfg.paths.output_dir = run_dir
        for entry in _wandb_entries(cfg):
            entry.id = entry.get("id") or wandb_id or secrets.token_hex(4)
            if ckpt:
                log.info("W&B run id %s (%s)", entry.id, "continued" if wandb_id else "new")
    return ckpt

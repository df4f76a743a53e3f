"""Where the Hydra configs live and the resolvers they use."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from omegaconf import OmegaConf


def config_dir() -> Path:
    """The directory holding train.yaml: packaged `noodlenext/conf`, else the checkout's `conf/`."""
    packaged = Path(__file__).resolve().parent / "conf"
    if (packaged / "train.yaml").is_file():
        return packaged
    checkout = Path(__file__).resolve().parent.parent / "conf"
    if (checkout / "train.yaml").is_file():
        return checkout
    raise FileNotFoundError(
        f"noodlenext configs not found in {packaged} or {checkout}; reinstall the package"
    )


CONFIG_DIR = str(config_dir())

# One id per process: the time alone collides when two runs start in the same second.
RUN_ID = f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{os.getpid()}{secrets.token_hex(2)}"


def wandb_offline() -> bool:
    """W&B stays offline unless WANDB_MODE or WANDB_API_KEY say otherwise: no account needed."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun")  # Lightning sets dryrun in-process after the first run
    return not os.environ.get("WANDB_API_KEY")


def register_resolvers() -> None:
    """Register the `${run_id:}` and `${wandb_offline:}` resolvers (idempotent)."""
    for name, fn in {"run_id": lambda: RUN_ID, "wandb_offline": wandb_offline}.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()

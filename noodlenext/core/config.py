"""Where the Hydra configs live, and the resolvers they use (`${run_id:}`, `${wandb_offline:}`,
`${timm_input:...}`, `${scale_size:...}`)."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any

from omegaconf import ListConfig, OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def config_dir() -> Path:
    """The directory holding train.yaml: packaged `noodlenext/conf`, else the checkout's `conf/`."""
    packaged = PACKAGE_DIR / "conf"
    if (packaged / "train.yaml").is_file():
        return packaged
    checkout = PACKAGE_DIR.parent / "conf"
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


TIMM_INPUT_KEYS = ("image_size", "mean", "std")


def timm_input(name: str, key: str) -> Any:
    """`image_size`, `mean` or `std` from timm's pretrained config of model `name`: the one source of
    a model's input size and normalisation (`model.image_size: ${timm_input:${.name},image_size}`)."""
    if key not in TIMM_INPUT_KEYS:
        raise ValueError(f"${{timm_input:{name},{key}}}: the key must be one of {TIMM_INPUT_KEYS}")
    import timm

    cfg = timm.models.get_pretrained_cfg(str(name))
    if cfg is None:
        raise ValueError(
            f"model.name={name!r}: timm has no pretrained config to take its input size and "
            f"normalisation from; set model.image_size, model.mean and model.std"
        )
    if key == "image_size":
        return int(cfg.input_size[-1])
    # A ListConfig, not a list: OmegaConf.resolve (`--cfg job --resolve`) only accepts containers.
    return ListConfig([float(v) for v in (cfg.mean if key == "mean" else cfg.std)])


def scale_size(image_size: int, size: int, at: int) -> int:
    """`size` px at an input of `at` px, scaled to `image_size` (the write-up's Resize 420 at 384)."""
    return round(int(image_size) * int(size) / int(at))


RESOLVERS = {
    "run_id": lambda: RUN_ID,
    "wandb_offline": wandb_offline,
    "timm_input": timm_input,
    "scale_size": scale_size,
}


def register_resolvers() -> None:
    """Register the resolvers above (idempotent)."""
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()

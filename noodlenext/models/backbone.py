"""Building a timm backbone, with pretrained weights when they can be had (decided in seconds offline)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import timm
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from noodlenext.core.hub import hub_reachable

log = logging.getLogger(__name__)


def cached_weights(name: str) -> Path | None:
    """A pretrained weights file for `name` already in the Hugging Face or torch hub cache, if any."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        for filename in ("model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
    if cfg.url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        if candidate.is_file():
            return candidate
    return None


def _how_to_get(name: str) -> str:
    return (
        f"To use pretrained weights for {name}: on a machine with internet run "
        f"`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` and copy its "
        "~/.cache/huggingface to this machine, or pass a local file with "
        "model.weights=/path/to/weights.safetensors; "
        "model.pretrained=false trains from random initialisation."
    )


def create_backbone(
    name: str,
    num_classes: int,
    pretrained: bool | str = "auto",
    weights: str | Path | None = None,
    **kwargs: Any,
) -> tuple[nn.Module, bool]:
    """timm model with a fresh `num_classes` head; returns (model, whether pretrained weights were loaded).

    pretrained: `auto` uses hub or cached weights when they can be had and warns once otherwise,
    `true` fails fast when they cannot, `false` is random init. `weights` is a local file whose
    backbone is loaded (its classifier is replaced).
    """
    if name.split(".")[0] not in timm.list_models():
        raise ValueError(f"model.name={name!r} is not a timm model (see timm.list_models())")
    mode = str(pretrained).lower()
    if mode not in ("auto", "true", "false"):
        raise ValueError(f"model.pretrained={pretrained!r}: use auto, true or false")
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.weights={weights}: no such file")
        return _from_file(name, num_classes, path, **kwargs), True
    if mode == "false":
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs), False

    cfg = timm.models.get_pretrained_cfg(name)
    has_weights = cfg is not None and bool(cfg.hf_hub_id or cfg.url or cfg.file)
    cached = cached_weights(name) if has_weights else None
    if cached is not None:
        return _from_file(name, num_classes, cached, **kwargs), True
    if has_weights and hub_reachable():
        return timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs), True
    why = (
        "timm has no pretrained weights for it"
        if not has_weights
        else "the hub is unreachable and none are cached"
    )
    if mode == "true":
        raise RuntimeError(f"model.pretrained=true but no weights for {name}: {why}. {_how_to_get(name)}")
    rank_zero_warn(
        f"\n{'!' * 100}\nNO PRETRAINED WEIGHTS for {name} ({why}): training from RANDOM INITIALISATION. "
        f"Expect far lower accuracy than a fine-tuned model.\n{_how_to_get(name)}\n{'!' * 100}"
    )
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs), False


def _from_file(name: str, num_classes: int, path: Path, **kwargs: Any) -> nn.Module:
    """timm's own pretrained loader on a local file: it adapts the weights and drops a mismatched head."""
    log.info("loading backbone weights for %s from %s", name, path)
    try:
        return timm.create_model(
            name,
            pretrained=True,
            pretrained_cfg_overlay={"file": str(path)},
            num_classes=num_classes,
            **kwargs,
        )
    except (RuntimeError, KeyError, ValueError) as e:
        raise RuntimeError(f"{path}: could not load weights for {name}: {e}") from e

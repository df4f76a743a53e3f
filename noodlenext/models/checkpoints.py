"""Reading a checkpoint without running code: `torch.load(weights_only=True)` and a small allow-list.

A `.ckpt` is a pickle, and unpickling an arbitrary file can run any code it names. Every noodlenext
command and library function that opens one (`load_classifier`, eval, predict, explain, chat, the app,
`resume=auto`, `Trainer.fit(ckpt_path=...)` through `AtomicCheckpointIO`) reads it here, as plain data:
tensors, numbers, strings, lists, tuples and dicts, which is all a noodlenext checkpoint holds
(`plain` turns OmegaConf containers and paths into those before a save). The allow-list adds only the
OmegaConf containers an older checkpoint (or one of a model built from an unconverted Hydra config) may
hold in its hyper-parameters. Anything else is refused with `UntrustedCheckpointError`, naming the file
and what it needs; `trust_checkpoint=true` (`trust=True` here) is the explicit opt-in to a full unpickle.
"""

from __future__ import annotations

import collections
import logging
import pickle
import typing
from functools import cache
from pathlib import Path, PurePath
from typing import IO, Any

import torch

log = logging.getLogger(__name__)

TRUST_OPTION = "trust_checkpoint"


class UntrustedCheckpointError(ValueError):
    """A checkpoint that needs more than plain data (and the allow-list) to unpickle."""


@cache
def safe_globals() -> tuple[tuple[Any, str], ...]:
    """(object, the name a pickle calls it by) for what an OmegaConf DictConfig/ListConfig pickles to,
    beyond torch's own weights-only allow-list."""
    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode

    found = (
        DictConfig,
        ListConfig,
        ContainerMetadata,
        Metadata,
        AnyNode,
        dict,
        list,
        int,
        collections.defaultdict,
    )
    # The builtins and typing.Any are the containers' key/element/object types, stored as classes
    # (typing.Any named explicitly: before Python 3.11 it has no __qualname__).
    return (*((g, f"{g.__module__}.{g.__qualname__}") for g in found), (typing.Any, "typing.Any"))


def _refusal(path: str | Path, error: Exception) -> Exception:
    """Why a weights-only load failed, as an error that names the file and the opt-in."""
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a torch.save zip: junk, or the pre-1.6 format that the scan cannot read
        return ValueError(
            f"{path}: not a torch.save zip file (a PyTorch < 1.6 checkpoint that you trust loads with "
            f"{TRUST_OPTION}=true)"
        )
    allowed = {name for _, name in safe_globals()}
    extra = [g for g in needed if g not in allowed]
    what = f"it needs {', '.join(extra)}" if extra else f"torch says: {str(error).splitlines()[0]}"
    return UntrustedCheckpointError(
        f"{path}: refusing to unpickle this checkpoint: {what}, beyond the plain data a noodlenext "
        "checkpoint holds, and unpickling that can run code. If you trust where the file came from, "
        f"pass {TRUST_OPTION}=true (in Python: {TRUST_OPTION}=True) to load it with a full unpickle."
    )


def load_checkpoint(
    path: str | Path | IO[bytes],
    map_location: Any = "cpu",
    *,
    trust: bool = False,
    mmap: bool = False,
) -> dict[str, Any]:
    """`torch.load` as plain data plus `safe_globals()`; `trust=True`: a full unpickle (can run code).

    mmap: map the file instead of reading it (cheap metadata reads of a large checkpoint; paths only).
    Raises UntrustedCheckpointError when the file needs anything else, before any of it is built.
    """
    kwargs: dict[str, Any] = {"map_location": map_location, "mmap": mmap}
    if trust:
        log.warning("%s=true: unpickling %s in full (weights_only=False)", TRUST_OPTION, path)
        return torch.load(path, weights_only=False, **kwargs)
    try:
        with torch.serialization.safe_globals(list(safe_globals())):
            return torch.load(path, weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        if isinstance(path, (str, PurePath)):
            raise _refusal(path, e) from None
        raise UntrustedCheckpointError(
            f"refusing to unpickle this checkpoint ({str(e).splitlines()[0]}); pass {TRUST_OPTION}=true "
            "if you trust where it came from"
        ) from None


def plain(value: Any) -> Any:
    """`value` with OmegaConf containers turned into dicts and lists and paths into strings, so a
    checkpoint holding it loads as plain data."""
    from omegaconf import Container, OmegaConf

    if isinstance(value, Container):
        try:
            value = OmegaConf.to_container(value, resolve=True)
        except Exception:  # an interpolation that cannot be resolved outside its config: keep it as text
            value = OmegaConf.to_container(value, resolve=False)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, PurePath):
        return str(value)
    return value

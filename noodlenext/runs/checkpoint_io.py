"""Checkpoints written atomically, so a kill mid-save never leaves a truncated file to resume from, and
read by Lightning (`fit`/`test` with `ckpt_path`) as plain data, like every other checkpoint load."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from noodlenext.core.files import atomic_write
from noodlenext.models.checkpoints import load_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temp file next to the target, fsync, then rename over it.

    Lightning's own save stages the bytes in the system temp dir and moves them over: a rename only
    when that is the same filesystem, else a copy that a kill can cut short (and it leaves the temp file).

    Loading goes through `models.checkpoints.load_checkpoint` (weights_only=True, the allow-list), so a
    checkpoint that would run code is refused; trust_checkpoint=True is the opt-in to a full unpickle.
    """

    def __init__(self, trust_checkpoint: bool = False) -> None:
        super().__init__()
        self.trust_checkpoint = trust_checkpoint

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        # core.files: a hidden `.tmp` beside it (a leftover never looks like a checkpoint, and the next
        # start removes it), fsync, the umask's mode, rename, fsync of the folder.
        with atomic_write(path, binary=True) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Lightning's `weights_only` (None unless fit/test were given one) is ignored: the trust is ours."""
        if "://" in str(path):  # fsspec (s3://...), as Lightning's own loader supports
            from lightning.fabric.utilities.cloud_io import get_filesystem

            with get_filesystem(path).open(path, "rb") as f:
                return load_checkpoint(f, map_location, trust=self.trust_checkpoint)
        if not Path(path).is_file():
            raise FileNotFoundError(f"ckpt_path={path}: no such checkpoint file")
        return load_checkpoint(Path(path), map_location, trust=self.trust_checkpoint)


def is_complete_checkpoint(path: Path) -> bool:
    """A torch.save zip with its central directory, i.e. not cut short."""
    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False

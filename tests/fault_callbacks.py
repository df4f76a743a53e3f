"""Test-only callbacks that make faults happen on cue: a run that waits to be killed, an out-of-memory
forward."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class WaitForKill(Callback):
    """Writes `<epoch> <global_step>` to `progress` after the first training step of epoch `epoch`, then
    waits for good: the test kills the run there, mid-epoch, whatever the machine's speed."""

    def __init__(self, progress: str, epoch: int = 1) -> None:
        self.progress, self.epoch = Path(progress), epoch

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.current_epoch == self.epoch:
            self.progress.write_text(f"{trainer.current_epoch} {trainer.global_step}")
            threading.Event().wait()


class OutOfMemoryInForward(Callback):
    """Raises the real torch.OutOfMemoryError from inside the model's forward, as CUDA would."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        pl_module.net.register_forward_hook(self._raise)

    @staticmethod
    def _raise(*args: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (test)")

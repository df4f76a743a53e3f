"""SampleCollector: every evaluated sample's target, prediction, loss and probabilities, for the
callbacks that pick samples to explain (gathered onto rank 0 under DDP)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer


@dataclass
class Sample:
    """One evaluated image: where it is in the dataset and how the model did on it."""

    index: int
    target: int
    pred: int
    loss: float
    probs: list[float]


def worst_mistakes(samples: list[Sample], k: int) -> list[Sample]:
    """The k misclassified samples with the largest loss."""
    return sorted((s for s in samples if s.pred != s.target), key=lambda s: -s.loss)[:k]


def surest_hits(samples: list[Sample], k: int) -> list[Sample]:
    """The k correctly classified samples with the smallest loss."""
    return sorted((s for s in samples if s.pred == s.target), key=lambda s: s.loss)[:k]


def single_loader(loaders: Any) -> Any:
    """The one dataloader of a stage (Lightning may hand a list)."""
    return loaders[0] if isinstance(loaders, (list, tuple)) else loaders


class SampleCollector(Callback):
    """Collects every test sample's target, prediction, loss and probabilities (and, for subclasses
    that ask, every N validation epochs'), and hands them to `_render` at epoch end.

    Under DDP every rank sends its samples to rank 0, which alone renders; the others get [].
    """

    every_n_val_epochs: int = 0

    def __init__(self) -> None:
        self._samples: list[Sample] = []
        self._order: list[int] = []

    def _start(self, loader: Any) -> None:
        self._samples = []
        # The dataset index of each position: the sampler's order (a DistributedSampler's share under DDP).
        self._order = list(iter(loader.sampler))

    def _collect(self, outputs: Any, batch: Any, batch_idx: int, batch_size: int) -> None:
        logits = outputs["logits"].detach().float()
        targets = batch[1]
        losses = F.cross_entropy(logits, targets, reduction="none").cpu().tolist()
        # The test step's `probs` are the calibrated ones (calibration=temperature); preds stay the metrics'.
        probs = outputs["probs"].detach().float().cpu() if "probs" in outputs else logits.softmax(dim=1).cpu()
        preds, targets = logits.argmax(dim=1).cpu().tolist(), targets.cpu().tolist()
        start = batch_idx * batch_size
        for i, (loss, target, pred) in enumerate(zip(losses, targets, preds, strict=True)):
            self._samples.append(Sample(self._order[start + i], target, pred, loss, probs[i].tolist()))

    def _gathered(self, trainer: Trainer) -> list[Sample]:
        """All ranks' samples on rank 0 (each once: DistributedSampler pads with repeats), [] elsewhere."""
        samples, self._samples = self._samples, []
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[list[Sample]] = [[] for _ in range(trainer.world_size)]
            torch.distributed.all_gather_object(gathered, samples)
            samples = [s for part in gathered for s in part]
        return list({s.index: s for s in samples}.values()) if trainer.is_global_zero else []

    def _val_epoch_active(self, trainer: Trainer) -> bool:
        n = self.every_n_val_epochs
        return n > 0 and not trainer.sanity_checking and (trainer.current_epoch + 1) % n == 0

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(single_loader(trainer.test_dataloaders))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self._collect(outputs, batch, batch_idx, single_loader(trainer.test_dataloaders).batch_size)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        samples = self._gathered(trainer)
        if samples:
            self._render(trainer, pl_module, single_loader(trainer.test_dataloaders).dataset, "test", samples)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._val_epoch_active(trainer):
            self._start(single_loader(trainer.val_dataloaders))

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:  # noqa: ANN001
        if self._val_epoch_active(trainer):
            self._collect(outputs, batch, batch_idx, single_loader(trainer.val_dataloaders).batch_size)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._val_epoch_active(trainer):
            samples = self._gathered(trainer)
            if samples:
                dataset = single_loader(trainer.val_dataloaders).dataset
                self._render(trainer, pl_module, dataset, f"val_epoch_{trainer.current_epoch:03d}", samples)

    def _render(
        self, trainer: Trainer, pl_module: LightningModule, dataset: Any, stage: str, samples: list[Sample]
    ) -> None:
        raise NotImplementedError

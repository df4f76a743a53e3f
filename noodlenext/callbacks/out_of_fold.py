"""OutOfFoldPredictions: in a cross-validation job (data.fold set), the held-out fold's probabilities
from the best checkpoint, for `python -m noodlenext.data.label_issues` (see data/confident_learning.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

from noodlenext.data.confident_learning import OOF_CSV, write_out_of_fold
from noodlenext.models.classifier import load_classifier

log = logging.getLogger(__name__)


class OutOfFoldPredictions(Callback):
    """At fit end (rank 0), when the data module holds a fold out (`heldout_set`): predict it with the
    best checkpoint (the last weights without one) and write oof_probs.csv/.json to output_dir."""

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = trainer.datamodule
        held = getattr(dm, "heldout_set", None)
        if held is None or not trainer.is_global_zero:
            return
        best = next((c.best_model_path for c in trainer.checkpoint_callbacks if c.monitor), "")
        model = load_classifier(best).to(pl_module.device) if best else pl_module
        was_training = model.training
        model.eval()
        probs = []
        loader = DataLoader(held, batch_size=dm.batch_size, num_workers=dm.num_workers)
        with torch.inference_mode():
            for x, _ in loader:
                probs.append(model(x.to(pl_module.device)).float().softmax(dim=1).cpu())
        model.train(was_training)
        p = torch.cat(probs).numpy() if probs else torch.empty(0, len(dm.class_names)).numpy()
        write_out_of_fold(
            self.output_dir, held.samples, p, dm.class_names, dm.root, dm.fold, dm.folds, dm.file_list
        )
        log.info(
            "fold %d/%d: held-out predictions of %d images in %s (checkpoint: %s)",
            dm.fold,
            dm.folds,
            len(held),
            self.output_dir / OOF_CSV,
            best or "last weights",
        )

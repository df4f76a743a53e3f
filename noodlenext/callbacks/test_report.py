"""TestReport: the write-up's per-class table, metrics.json and the confusion matrix, at test end."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from rich.console import Console
from rich.table import Table

from noodlenext.core.files import write_json_atomic


def results_table(results: dict[str, Any], title: str = "Test results") -> Table:
    """class | accuracy | count, then the overall row, as in the write-up."""
    table = Table(title=title)
    for column, justify in (("class", "left"), ("accuracy", "right"), ("count", "right")):
        table.add_column(column, justify=justify)
    for name, r in results["per_class"].items():
        table.add_row(name, f"{100 * r['accuracy']:.2f}%", str(r["count"]))
    total = sum(r["count"] for r in results["per_class"].values())
    table.add_row("[b]all[/b]", f"[b]{100 * results['acc']:.2f}%[/b]", f"[b]{total}[/b]")
    return table


def save_confusion_png(confusion: Sequence[Sequence[float]], class_names: Sequence[str], path: Path) -> None:
    """Confusion matrix (rows: true class) as a PNG with counts in the cells (torchmetrics' plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchmetrics.classification import MulticlassConfusionMatrix

    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.2 * n + 2))
    values = torch.as_tensor(confusion, dtype=torch.long)
    MulticlassConfusionMatrix(n).plot(val=values, ax=ax, labels=list(class_names), cmap="Blues")
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def best_epoch(ckpt_path: str | Path) -> int | None:
    """The (0-based) epoch a checkpoint was saved in; mmap reads only the metadata."""
    if not ckpt_path or not Path(ckpt_path).is_file():
        return None
    return torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=False).get("epoch")


class TestReport(Callback):
    """At test end (rank 0): print the table, write metrics.json and confusion_matrix.png, log to W&B."""

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self.fit_stats: dict[str, float] = {}
        self._val_start = self._val_time = 0.0

    # Fit timing for sweep comparisons: wall time, and training images/s with validation time excluded.
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_start, self._val_time, self._train_images = time.perf_counter(), 0.0, 0

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._val_time += time.perf_counter() - self._val_start

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._train_images += len(batch[0]) * trainer.world_size

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        fit_time = time.perf_counter() - self._fit_start
        train_time = max(fit_time - self._val_time, 1e-9)
        self.fit_stats = {"train/time_s": fit_time, "train/images_per_s": self._train_images / train_time}

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        results = getattr(pl_module, "test_results", None)
        if not trainer.is_global_zero or not results:
            return
        names = pl_module.class_names
        Console().print(results_table(results))
        summary = {
            "test/acc": results["acc"],
            "test/f1": results["f1"],
            "test/loss": results["loss"],
            "test/acc_per_class": {n: r["accuracy"] for n, r in results["per_class"].items()},
            "test/count_per_class": {n: r["count"] for n, r in results["per_class"].items()},
            "confusion_matrix": {"classes": names, "rows_true_cols_pred": results["confusion"]},
            "model": pl_module.hparams.name,
            "pretrained": pl_module.pretrained_loaded,
            "params": sum(p.numel() for p in pl_module.parameters()),
            **self.fit_stats,
            "checkpoint": getattr(pl_module, "checkpoint_path", None) or trainer.ckpt_path,
        }
        checkpoint_cb = next(
            (c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None
        )
        if checkpoint_cb is not None and checkpoint_cb.best_model_score is not None:
            summary["val/acc_best"] = float(checkpoint_cb.best_model_score)
            summary["best_checkpoint"] = checkpoint_cb.best_model_path
            summary["best_epoch"] = best_epoch(checkpoint_cb.best_model_path)
        write_json_atomic(self.output_dir / "metrics.json", summary)
        save_confusion_png(results["confusion"], names, self.output_dir / "confusion_matrix.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, results, names, pl_module.pretrained_loaded)

    @staticmethod
    def _log_wandb(logger: WandbLogger, results: dict[str, Any], names: list[str], pretrained: bool) -> None:
        import wandb

        rows = [
            [names[i], names[j], results["confusion"][i][j]]
            for i in range(len(names))
            for j in range(len(names))
        ]
        table = wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=rows)
        plot = wandb.plot_table(
            "wandb/confusion_matrix/v1",
            table,
            {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
            {"title": "Test confusion matrix"},
        )
        logger.experiment.log({"test/confusion_matrix": plot})
        logger.experiment.summary["pretrained"] = pretrained

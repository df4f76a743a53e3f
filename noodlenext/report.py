"""TestReport: the write-up's per-class table, metrics.json and the confusion matrix, at test end."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from rich.console import Console
from rich.table import Table


def write_text_atomic(path: Path, text: str) -> None:
    """Write then rename: a crash mid-write never leaves a truncated file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        f.write(text)
    os.replace(f.name, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Pretty JSON, written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2))


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
    """Confusion matrix (rows: true class) as a PNG with counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.2 * n + 2))
    ax.imshow(confusion, cmap="Blues")
    ax.set(
        xticks=range(n),
        yticks=range(n),
        xticklabels=class_names,
        yticklabels=class_names,
        xlabel="predicted",
        ylabel="true",
        title="Confusion matrix",
    )
    peak = max(max(row) for row in confusion) or 1
    for i in range(n):
        for j in range(n):
            value = confusion[i][j]
            ax.text(
                j,
                i,
                f"{int(value)}",
                ha="center",
                va="center",
                color="white" if value > peak / 2 else "black",
            )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class TestReport(Callback):
    """At test end (rank 0): print the table, write metrics.json and confusion_matrix.png, log to W&B."""

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)

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
            "checkpoint": getattr(pl_module, "checkpoint_path", None) or trainer.ckpt_path,
        }
        checkpoint_cb = next(
            (c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None
        )
        if checkpoint_cb is not None and checkpoint_cb.best_model_score is not None:
            summary["val/acc_best"] = float(checkpoint_cb.best_model_score)
            summary["best_checkpoint"] = checkpoint_cb.best_model_path
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

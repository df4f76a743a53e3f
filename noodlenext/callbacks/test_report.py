"""TestReport: the write-up's per-class table, metrics.json, the confusion matrix and the calibration
(ECE/MCE before and after temperature scaling, a reliability diagram), at test end."""

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
from noodlenext.models.checkpoints import UntrustedCheckpointError, load_checkpoint

TOP_CONFUSIONS = 5


def per_class_scores(confusion: Sequence[Sequence[float]], class_names: Sequence[str]) -> dict[str, Any]:
    """Precision, recall (the class's accuracy) and F1 of each class present in the split (rows of the
    confusion matrix: true class, columns: predicted). A class never predicted has precision 0."""
    matrix = torch.as_tensor(confusion, dtype=torch.float64)
    tp, support, predicted = matrix.diagonal(), matrix.sum(dim=1), matrix.sum(dim=0)
    out = {}
    for i, name in enumerate(class_names):
        if support[i] == 0:
            continue
        precision = float(tp[i] / predicted[i]) if predicted[i] > 0 else 0.0
        recall = float(tp[i] / support[i])
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        out[name] = {"precision": precision, "recall": recall, "f1": f1, "count": int(support[i])}
    return out


def top_confusions(
    confusion: Sequence[Sequence[float]], class_names: Sequence[str], k: int = TOP_CONFUSIONS
) -> list[dict[str, Any]]:
    """The k most frequent mistakes as {true, predicted, count}, most first (ties in class order)."""
    pairs = [
        {"true": class_names[i], "predicted": class_names[j], "count": int(n)}
        for i, row in enumerate(confusion)
        for j, n in enumerate(row)
        if i != j and n > 0
    ]
    return sorted(pairs, key=lambda p: -p["count"])[:k]


def results_table(results: dict[str, Any], title: str = "Test results") -> Table:
    """class | accuracy (its recall) | precision | F1 | count, then the overall row (micro accuracy,
    macro F1), as in the write-up."""
    table = Table(title=title)
    columns = (("class", "left"), ("accuracy", "right"), ("precision", "right"), ("F1", "right"))
    for column, justify in (*columns, ("count", "right")):
        table.add_column(column, justify=justify)
    names = list(results["per_class"])
    scores = per_class_scores(results["confusion"], names) if "confusion" in results else {}
    for name, r in results["per_class"].items():
        s = scores.get(name)
        precision, f1 = (f"{100 * s['precision']:.2f}%", f"{100 * s['f1']:.2f}%") if s else ("", "")
        table.add_row(name, f"{100 * r['accuracy']:.2f}%", precision, f1, str(r["count"]))
    total = sum(r["count"] for r in results["per_class"].values())
    f1 = f"[b]{100 * results['f1']:.2f}%[/b]" if "f1" in results else ""
    table.add_row("[b]all[/b]", f"[b]{100 * results['acc']:.2f}%[/b]", "", f1, f"[b]{total}[/b]")
    return table


def confusions_table(pairs: Sequence[dict[str, Any]], title: str = "Most frequent confusions") -> Table:
    """true -> predicted | count."""
    table = Table(title=title)
    table.add_column("true → predicted")
    table.add_column("count", justify="right")
    for p in pairs:
        table.add_row(f"{p['true']} → {p['predicted']}", str(p["count"]))
    return table


def calibration_table(calibration: dict[str, Any], title: str = "Calibration") -> Table:
    """ECE, MCE and NLL before and after temperature scaling, and the temperature."""
    table = Table(title=title)
    for column, justify in (
        ("", "left"),
        ("raw", "right"),
        (f"T = {calibration['temperature']:.3g}", "right"),
    ):
        table.add_column(column, justify=justify)
    for key, label in (("ece", "ECE"), ("mce", "MCE")):
        table.add_row(
            label, f"{100 * calibration[key]:.2f}%", f"{100 * calibration[f'{key}_calibrated']:.2f}%"
        )
    table.add_row("NLL", f"{calibration['nll']:.4f}", f"{calibration['nll_calibrated']:.4f}")
    return table


def save_reliability_png(calibration: dict[str, Any], path: Path) -> None:
    """Reliability diagrams before and after temperature scaling: each confidence bin's accuracy as a
    bar, its gap to the bin's mean confidence shaded; a calibrated model's bars follow the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5), sharey=True)
    panels = (
        ("raw", "ece", "before"),
        ("calibrated", "ece_calibrated", f"temperature scaled (T = {calibration['temperature']:.3g})"),
    )
    for ax, (key, ece, name) in zip(axes, panels, strict=True):
        bins = calibration["reliability"][key]
        full = [i for i, c in enumerate(bins["count"]) if c > 0]
        left = [bins["lower"][i] for i in full]
        width = [bins["upper"][i] - bins["lower"][i] for i in full]
        accuracy = [bins["accuracy"][i] for i in full]
        confidence = [bins["confidence"][i] for i in full]
        ax.bar(left, accuracy, width, align="edge", color="tab:blue", edgecolor="black", label="accuracy")
        gap = [c - a for a, c in zip(accuracy, confidence, strict=True)]
        ax.bar(
            left,
            gap,
            width,
            bottom=accuracy,
            align="edge",
            color="tab:red",
            alpha=0.3,
            edgecolor="tab:red",
            hatch="//",
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="calibrated")
        ax.set(
            xlim=(0, 1), ylim=(0, 1), xlabel="confidence", title=f"{name}\nECE {100 * calibration[ece]:.2f}%"
        )
        ax.set_aspect("equal")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    """The (0-based) epoch a checkpoint was saved in; mmap reads only the metadata, as plain data."""
    if not ckpt_path or not Path(ckpt_path).is_file():
        return None
    try:
        return load_checkpoint(ckpt_path, mmap=True).get("epoch")
    except UntrustedCheckpointError:  # the epoch is only informational: never a full unpickle for it
        return None


class TestReport(Callback):
    """At test end (rank 0): print the tables, write metrics.json, confusion_matrix.png and
    reliability.png, log to W&B."""

    __test__ = False  # not a pytest class

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
        scores = per_class_scores(results["confusion"], names)
        confusions = top_confusions(results["confusion"], names)
        calibration = results.get("calibration")
        console = Console()
        console.print(results_table(results))
        if confusions:
            console.print(confusions_table(confusions))
        if calibration:
            console.print(calibration_table(calibration))
        summary = {
            "test/acc": results["acc"],
            "test/f1": results["f1"],
            "test/loss": results["loss"],
            "test/acc_per_class": {n: r["accuracy"] for n, r in results["per_class"].items()},
            "test/count_per_class": {n: r["count"] for n, r in results["per_class"].items()},
            **{
                f"test/{k}_per_class": {n: s[k] for n, s in scores.items()}
                for k in ("precision", "recall", "f1")
            },
            "test/top_confusions": confusions,
            "confusion_matrix": {"classes": names, "rows_true_cols_pred": results["confusion"]},
            "tta": getattr(pl_module, "tta", "none"),
            "model": pl_module.hparams.name,
            "pretrained": pl_module.pretrained_loaded,
            "params": sum(p.numel() for p in pl_module.parameters()),
            **self.fit_stats,
            **({f"test/{k}": v for k, v in calibration.items()} if calibration else {}),
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
        reliability = self.output_dir / "reliability.png" if calibration else None
        if reliability is not None:
            save_reliability_png(calibration, reliability)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, results, names, pl_module.pretrained_loaded, reliability)

    @staticmethod
    def _log_wandb(
        logger: WandbLogger,
        results: dict[str, Any],
        names: list[str],
        pretrained: bool,
        reliability: Path | None = None,
    ) -> None:
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
        if reliability is not None:
            logger.experiment.log({"test/reliability": wandb.Image(str(reliability))})
        logger.experiment.summary["pretrained"] = pretrained

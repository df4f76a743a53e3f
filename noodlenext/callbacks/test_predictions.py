"""TestPredictions: every test image's label, prediction and probabilities (test_predictions.csv), which
the sweep comparison pairs across jobs for McNemar's test and the images two models disagree on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer

from noodlenext.callbacks.samples import Sample, SampleCollector
from noodlenext.callbacks.significance import PREDICTIONS_FILE
from noodlenext.core.files import write_text_atomic
from noodlenext.data.confident_learning import relative_name


def predictions_csv(rows: list[dict[str, Any]], class_names: list[str]) -> str:
    """file (relative to the data root), path, label, pred, correct, one probability column per class."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "path", "label", "pred", "correct", *(f"prob_{c}" for c in class_names)])
    for r in rows:
        writer.writerow(
            [r["file"], r["path"], r["label"], r["pred"], int(r["label"] == r["pred"])]
            + [f"{p:.6g}" for p in r["probs"]]
        )
    return out.getvalue()


class TestPredictions(SampleCollector):
    """At test end (rank 0): <output_dir>/test_predictions.csv, one row per test image in dataset order."""

    __test__ = False  # not a pytest class

    def __init__(self, output_dir: str | Path) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)

    def _render(
        self, trainer: Trainer, pl_module: LightningModule, dataset: Any, stage: str, samples: list[Sample]
    ) -> None:
        if stage != "test":
            return
        names = list(pl_module.class_names)
        root = getattr(trainer.datamodule, "root", None)
        rows = []
        for s in sorted(samples, key=lambda s: s.index):
            path = Path(dataset.samples[s.index][0])
            file = relative_name(path, root) if root is not None else str(path.resolve())
            rows.append(
                {"file": file, "path": str(path.resolve()), "label": names[s.target], "pred": names[s.pred]}
                | {"probs": s.probs}
            )
        write_text_atomic(self.output_dir / PREDICTIONS_FILE, predictions_csv(rows, names))

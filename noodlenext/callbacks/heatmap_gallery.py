"""HeatmapGallery: ScoreCAM and GradCAM on the worst mistakes and surest hits, in W&B and the run dir."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from noodlenext.callbacks.samples import Sample, SampleCollector, surest_hits, worst_mistakes
from noodlenext.core.files import write_json_atomic
from noodlenext.data.images import load_rgb
from noodlenext.explain.faithfulness import deletion_insertion
from noodlenext.explain.heatmaps import Heatmap, explain_batch
from noodlenext.explain.overlays import overlay
from noodlenext.explain.registry import parse_methods
from noodlenext.explain.settings import HeatmapSettings

log = logging.getLogger(__name__)


class HeatmapGallery(SampleCollector):
    """At test end (and every N validation epochs): heatmaps for the K misclassified samples with the
    largest loss and the K correct ones with the smallest, explaining the predicted class.

    Writes `<output_dir>/<stage>/{misclassified,correct}.png` and `heatmaps.json` (with each method's
    deletion/insertion AUC, to check which explains better), and a W&B table. The last test maps stay
    in `test_heatmaps` (dataset index -> {method: Heatmap}) for later callbacks to reuse.
    """

    def __init__(
        self,
        output_dir: str | Path,
        num_misclassified: int = 6,
        num_correct: int = 3,
        every_n_val_epochs: int = 0,
        methods: str | list[str] = "both",
        settings: HeatmapSettings | None = None,
    ) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.num_misclassified, self.num_correct = num_misclassified, num_correct
        self.every_n_val_epochs = every_n_val_epochs
        self.methods = parse_methods(methods)
        self.settings = HeatmapSettings.of(settings)
        self.test_heatmaps: dict[int, dict[str, Heatmap]] = {}

    # ---------------------------------------------------------------------------- rendering
    def _pick(self, samples: list[Sample]) -> list[tuple[str, Sample]]:
        return [("misclassified", s) for s in worst_mistakes(samples, self.num_misclassified)] + [
            ("correct", s) for s in surest_hits(samples, self.num_correct)
        ]

    def _render(
        self, trainer: Trainer, pl_module: LightningModule, dataset: Any, stage: str, samples: list[Sample]
    ) -> None:
        picked = self._pick(samples)
        if not picked:
            return
        images = torch.stack([dataset[s.index][0] for _, s in picked])
        heatmaps = explain_batch(pl_module, images, [s.pred for _, s in picked], self.methods, self.settings)
        if stage == "test":
            self.test_heatmaps = {s.index: maps for (_, s), maps in zip(picked, heatmaps, strict=True)}
        rows = [
            self._row(kind, s, maps, dataset, pl_module.class_names)
            for (kind, s), maps in zip(picked, heatmaps, strict=True)
        ]
        summary = self._faithfulness(pl_module, images, [s.pred for _, s in picked], heatmaps, rows)
        out = self.output_dir / stage
        out.mkdir(parents=True, exist_ok=True)
        for kind in ("misclassified", "correct"):
            mine = [r for r in rows if r["kind"] == kind]
            if mine:
                save_grid(mine, self.methods, out / f"{kind}.png")
        samples_json = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
        write_json_atomic(out / "heatmaps.json", {"faithfulness": summary, "samples": samples_json})
        prefix = stage.split("_")[0]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                log_wandb_table(logger, rows, self.methods, f"{prefix}/heatmaps")
                faithfulness = {
                    f"{prefix}/faithfulness/{m}/{k}": v for m, d in summary.items() for k, v in d.items()
                }
                logger.experiment.log(faithfulness)
        log.info("heatmaps for %d %s samples in %s", len(rows), stage, out)

    def _faithfulness(
        self, pl_module: LightningModule, images: torch.Tensor, targets: list[int],
        heatmaps: list[dict[str, Heatmap]], rows: list[dict[str, Any]],
    ) -> dict[str, dict[str, float]]:  # fmt: skip
        """Deletion AUC (lower is better) and insertion AUC (higher is better) per sample and method."""
        summary = {}
        for method in self.methods:
            cams = np.stack([maps[method].cam for maps in heatmaps])
            scores = deletion_insertion(pl_module.net, images.to(pl_module.device), cams, targets)
            for row, deletion, insertion in zip(rows, scores["deletion"], scores["insertion"], strict=True):
                row["heatmaps"][method] |= {
                    "deletion_auc": float(deletion),
                    "insertion_auc": float(insertion),
                }
            summary[method] = {k: float(scores[k].mean()) for k in ("deletion", "insertion")}
        return summary

    @staticmethod
    def _row(
        kind: str, s: Sample, maps: dict[str, Heatmap], dataset: Any, names: list[str]
    ) -> dict[str, Any]:
        path = dataset.samples[s.index][0]
        size = next(iter(maps.values())).cam.shape
        photo = load_rgb(path).resize((size[1], size[0]))
        return {
            "kind": kind,
            "file": str(path),
            "true": names[s.target],
            "predicted": names[s.pred],
            "confidence": s.probs[s.pred],
            "loss": s.loss,
            "probabilities": dict(zip(names, s.probs, strict=True)),
            "heatmaps": {
                m: {**h.facts.to_dict(), "description": h.facts.describe()} for m, h in maps.items()
            },
            "_photo": photo,
            "_overlays": {m: overlay(photo, h.cam) for m, h in maps.items()},
        }


def save_grid(rows: list[dict[str, Any]], methods: tuple[str, ...], path: Path) -> None:
    """One row per sample: the photo, then one overlay per method, titled with true/predicted/confidence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 1 + len(methods)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.6 * cols, 2.8 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows, strict=True):
        panels = [("photo", row["_photo"])] + [(m, row["_overlays"][m]) for m in methods]
        for ax, (title, image) in zip(ax_row, panels, strict=True):
            ax.imshow(np.asarray(image))
            ax.set_axis_off()
            ax.set_title(title, fontsize=8)
        ax_row[0].set_title(
            f"true {row['true']} | pred {row['predicted']} ({100 * row['confidence']:.0f}%)", fontsize=8
        )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def log_wandb_table(
    logger: WandbLogger, rows: list[dict[str, Any]], methods: tuple[str, ...], key: str
) -> None:
    """A W&B table: kind, photo, one overlay per method, labels, confidence, probabilities, heatmap facts."""
    import json

    import wandb

    columns = ["kind", "image", *methods, "true", "predicted", "confidence", "probabilities", "facts"]
    table = wandb.Table(columns=columns)
    for r in rows:
        overlays = [wandb.Image(r["_overlays"][m]) for m in methods]
        facts = " ".join(f"{m}: {r['heatmaps'][m]['description']}" for m in methods)
        table.add_data(
            r["kind"], wandb.Image(r["_photo"]), *overlays, r["true"], r["predicted"], r["confidence"],
            json.dumps({k: round(v, 4) for k, v in r["probabilities"].items()}), facts,
        )  # fmt: skip
    logger.experiment.log({key: table})

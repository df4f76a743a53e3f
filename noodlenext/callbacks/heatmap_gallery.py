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
from noodlenext.data.datamodule import NoodleImages
from noodlenext.data.images import load_rgb
from noodlenext.data.transforms import eval_transform
from noodlenext.explain.evidence import Evidence
from noodlenext.explain.gather import gather_evidence
from noodlenext.explain.heatmaps import Heatmap, explain_batch
from noodlenext.explain.neighbours import FEATURE_INDEX_FILE, FeatureIndex
from noodlenext.explain.overlays import overlay
from noodlenext.explain.registry import parse_methods
from noodlenext.explain.settings import HeatmapSettings

log = logging.getLogger(__name__)


class HeatmapGallery(SampleCollector):
    """At test end (and every N validation epochs): heatmaps for the K misclassified samples with the
    largest loss and the K correct ones with the smallest, explaining the predicted class.

    Each sample also gets its Evidence (noodlenext.explain.evidence): a contrastive map (the predicted
    class over the true one, or over the runner-up when right), what the model predicts with the hot
    region hidden or kept alone, what the hot region looks like, the `num_neighbours` nearest training
    photos in the classifier's feature space (0: none) and a trust check of each map against a random
    one. Writes `<output_dir>/<stage>/{misclassified,correct}.png` (photo | each map | contrastive) and
    `heatmaps.json` (facts, evidence and its numbered lines per sample; per method the mean deletion and
    insertion AUC against random), `<output_dir>/train_features.npz` (the neighbours' index) and a W&B
    table. The last test maps and evidence stay in `test_heatmaps` and `test_evidence` (dataset index
    -> ...) for later callbacks to reuse.
    """

    def __init__(
        self,
        output_dir: str | Path,
        num_misclassified: int = 6,
        num_correct: int = 3,
        every_n_val_epochs: int = 0,
        methods: str | list[str] = "both",
        settings: HeatmapSettings | None = None,
        num_neighbours: int = 5,
    ) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.num_misclassified, self.num_correct = num_misclassified, num_correct
        self.every_n_val_epochs = every_n_val_epochs
        self.methods = parse_methods(methods)
        self.settings = HeatmapSettings.of(settings)
        self.num_neighbours = num_neighbours
        self.test_heatmaps: dict[int, dict[str, Heatmap]] = {}
        self.test_evidence: dict[int, Evidence] = {}
        self._index: FeatureIndex | None = None

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
        names = pl_module.class_names
        images = torch.stack([dataset[s.index][0] for _, s in picked])
        heatmaps = explain_batch(pl_module, images, [s.pred for _, s in picked], self.methods, self.settings)
        files = [str(dataset.samples[s.index][0]) for _, s in picked]
        size = images.shape[-1], images.shape[-2]
        photos = [load_rgb(f, size).resize(size) for f in files]
        contrastive: list[np.ndarray] = []
        evidence = gather_evidence(
            pl_module,
            images,
            photos,
            [s.pred for _, s in picked],
            [s.target for _, s in picked],
            heatmaps,
            index=self._feature_index(trainer, pl_module),
            settings=self.settings,
            files=files,
            class_names=names,
            k=self.num_neighbours,
            contrastive_out=contrastive,
        )
        if stage == "test":
            self.test_heatmaps = {s.index: maps for (_, s), maps in zip(picked, heatmaps, strict=True)}
            self.test_evidence = {s.index: ev for (_, s), ev in zip(picked, evidence, strict=True)}
        rows = [
            self._row(kind, s, maps, ev, photo, cmap, names)
            for (kind, s), maps, ev, photo, cmap in zip(
                picked, heatmaps, evidence, photos, contrastive, strict=True
            )
        ]
        summary = self._faithfulness(evidence)
        out = self.output_dir / stage
        out.mkdir(parents=True, exist_ok=True)
        for kind in ("misclassified", "correct"):
            mine = [r for r in rows if r["kind"] == kind]
            if mine:
                save_grid(mine, (*self.methods, "contrastive"), out / f"{kind}.png")
        samples_json = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
        write_json_atomic(out / "heatmaps.json", {"faithfulness": summary, "samples": samples_json})
        prefix = stage.split("_")[0]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                log_wandb_table(logger, rows, (*self.methods, "contrastive"), f"{prefix}/heatmaps")
                faithfulness = {
                    f"{prefix}/faithfulness/{m}/{k}": v for m, d in summary.items() for k, v in d.items()
                }
                logger.experiment.log(faithfulness)
        log.info("heatmaps for %d %s samples in %s", len(rows), stage, out)

    def _feature_index(self, trainer: Trainer, pl_module: LightningModule) -> FeatureIndex | None:
        """The training photos in the classifier's feature space (for nearest neighbours), built once per
        model and saved as train_features.npz for the chat and the page; None without a training set."""
        datamodule = getattr(trainer, "datamodule", None)
        train_set = getattr(datamodule, "train_set", None)
        if not self.num_neighbours or train_set is None or not len(train_set):
            return None
        if self._index is None or self._index.model is not pl_module.net:
            hp = pl_module.hparams
            photos = NoodleImages(train_set.samples, eval_transform(hp.image_size, hp.mean, hp.std))
            self._index = FeatureIndex.build(pl_module, photos, class_names=pl_module.class_names)
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._index.save(self.output_dir / FEATURE_INDEX_FILE)
        return self._index

    def _faithfulness(self, evidence: list[Evidence]) -> dict[str, dict[str, float]]:
        """Per method: mean deletion AUC (lower is better) and insertion AUC (higher is better) of its maps
        and of random maps on the same images, and the share of maps that beat random on both."""
        summary = {}
        for method in self.methods:
            trust = [ev.trust[method] for ev in evidence if method in ev.trust]
            if trust:
                summary[method] = {
                    "deletion": float(np.mean([t.deletion for t in trust])),
                    "insertion": float(np.mean([t.insertion for t in trust])),
                    "random_deletion": float(np.mean([t.random_deletion for t in trust])),
                    "random_insertion": float(np.mean([t.random_insertion for t in trust])),
                    "informative_share": float(np.mean([t.informative for t in trust])),
                }
        return summary

    @staticmethod
    def _row(
        kind: str,
        s: Sample,
        maps: dict[str, Heatmap],
        evidence: Evidence,
        photo: Any,
        contrastive: np.ndarray,
        names: list[str],
    ) -> dict[str, Any]:
        heat = {m: {**h.facts.to_dict(), "description": h.facts.describe()} for m, h in maps.items()}
        for method, trust in evidence.trust.items():
            heat[method] |= {"deletion_auc": trust.deletion, "insertion_auc": trust.insertion}
        return {
            "kind": kind,
            "file": evidence.file,
            "true": names[s.target],
            "predicted": names[s.pred],
            "confidence": s.probs[s.pred],
            "loss": s.loss,
            "probabilities": dict(zip(names, s.probs, strict=True)),
            "heatmaps": heat,
            "evidence": evidence.to_dict(),
            "evidence_lines": evidence.lines(),
            "_photo": photo,
            "_overlays": {
                **{m: overlay(photo, h.cam) for m, h in maps.items()},
                "contrastive": overlay(photo, contrastive),
            },
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
    """A W&B table: kind, photo, one overlay per map, labels, confidence, probabilities, heatmap facts and
    the numbered evidence lines."""
    import json

    import wandb

    columns = ["kind", "image", *methods, "true", "predicted", "confidence", "probabilities", "facts"]
    table = wandb.Table(columns=[*columns, "evidence"])
    for r in rows:
        overlays = [wandb.Image(r["_overlays"][m]) for m in methods]
        facts = " ".join(f"{m}: {h['description']}" for m, h in r["heatmaps"].items())
        table.add_data(
            r["kind"],
            wandb.Image(r["_photo"]),
            *overlays,
            r["true"],
            r["predicted"],
            r["confidence"],
            json.dumps({k: round(v, 4) for k, v in r["probabilities"].items()}),
            facts,
            "\n".join(r.get("evidence_lines", [])),
        )
    logger.experiment.log({key: table})

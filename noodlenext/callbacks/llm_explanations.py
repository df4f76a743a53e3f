"""LLMExplanations: at test end, a language model explains the worst mistakes, in W&B and the run dir."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from noodlenext.callbacks.heatmap_gallery import HeatmapGallery
from noodlenext.callbacks.samples import Sample, SampleCollector, worst_mistakes
from noodlenext.core.files import write_text_atomic
from noodlenext.data.images import load_rgb
from noodlenext.explain.facts import heatmap_facts
from noodlenext.explain.heatmaps import explain_batch
from noodlenext.explain.overlays import overlay
from noodlenext.explain.settings import HeatmapSettings
from noodlenext.llm.load import load_backend
from noodlenext.llm.prompt import ExplainRequest, explain_messages

log = logging.getLogger(__name__)


class LLMExplanations(SampleCollector):
    """Explains the `llm.num_explanations` misclassified test samples with the largest loss.

    Each gets its ScoreCAM map for the predicted class (reused from a HeatmapGallery that ran first),
    a prompt built from `prompt` (conf/prompt/*.yaml) and one answer from the `llm` backend, all in one
    batched call. Writes `explanations.jsonl` (one record per sample, with the messages sent) and the
    photos and overlays under `<output_dir>/llm/`, and logs the W&B table `test/llm_explanations`.
    A backend that fails to load or answer is logged and written into every record and table row:
    it never fails the run, so checkpoints, metrics and the other logs are kept.
    """

    def __init__(
        self,
        llm: Any,
        prompt: Any,
        output_dir: str | Path,
        settings: HeatmapSettings | Any = None,
    ) -> None:
        super().__init__()
        self.llm, self.prompt = llm, prompt
        self.output_dir = Path(output_dir)
        # _recursive_ is off (the LLM is built at test end), so the settings arrive as a config.
        self.settings = HeatmapSettings.of(settings)

    @property
    def enabled(self) -> bool:
        return self.llm is not None and self.llm.get("backend") is not None

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.enabled:
            super().on_test_epoch_start(trainer, pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        if self.enabled:
            super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.enabled:
            super().on_test_epoch_end(trainer, pl_module)

    def _render(
        self, trainer: Trainer, pl_module: LightningModule, dataset: Any, stage: str, samples: list[Sample]
    ) -> None:
        mistakes = worst_mistakes(samples, int(self.llm.get("num_explanations", 4)))
        requests = self._requests(trainer, pl_module, dataset, mistakes)
        answers, error = self._answers(requests)
        records = [
            {
                **r.to_dict(),
                "confidence": r.confidence,
                "loss": s.loss,
                "llm": self.llm.get("name"),
                "explanation": answer,
                "error": error,
                "messages": messages,
            }
            for s, r, (messages, answer) in zip(mistakes, requests, answers, strict=True)
        ]
        text = "".join(json.dumps(r) + "\n" for r in records)
        write_text_atomic(self.output_dir / "explanations.jsonl", text)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                log_wandb_table(logger, records, f"{stage}/llm_explanations")
        log.info("LLM explanations of %d %s mistakes in %s", len(records), stage, self.output_dir)

    def _requests(
        self, trainer: Trainer, pl_module: LightningModule, dataset: Any, mistakes: list[Sample]
    ) -> list[ExplainRequest]:
        gallery = next((c for c in trainer.callbacks if isinstance(c, HeatmapGallery)), None)
        cached = gallery.test_heatmaps if gallery is not None else {}
        missing = [s for s in mistakes if "scorecam" not in cached.get(s.index, {})]
        if missing:
            images = torch.stack([dataset[s.index][0] for s in missing])
            maps = explain_batch(pl_module, images, [s.pred for s in missing], "scorecam", self.settings)
            cached = {**cached, **{s.index: m for s, m in zip(missing, maps, strict=True)}}
        names = pl_module.class_names
        image_dir = self.output_dir / "llm"
        image_dir.mkdir(parents=True, exist_ok=True)
        requests = []
        for i, s in enumerate(mistakes):
            cam = cached[s.index]["scorecam"].cam
            path = dataset.samples[s.index][0]
            photo = load_rgb(path).resize((cam.shape[1], cam.shape[0]))
            photo_path, overlay_path = image_dir / f"{i:02d}_photo.png", image_dir / f"{i:02d}_scorecam.png"
            photo.save(photo_path)
            overlay(photo, cam).save(overlay_path)
            requests.append(
                ExplainRequest(
                    file=str(path),
                    class_names=list(names),
                    probabilities=dict(zip(names, s.probs, strict=True)),
                    predicted=names[s.pred],
                    facts=heatmap_facts(cam),
                    true_label=names[s.target],
                    images=[str(photo_path), str(overlay_path)],
                )
            )
        return requests

    def _answers(self, requests: list[ExplainRequest]) -> tuple[list[tuple[list, str | None]], str | None]:
        """(messages, answer) per request and the error that stopped the LLM, if any."""
        if not requests:
            return [], None
        backend = None
        conversations = [explain_messages(r, self.prompt, multimodal=False) for r in requests]
        try:
            backend = load_backend(self.llm)
            conversations = [explain_messages(r, self.prompt, backend.multimodal) for r in requests]
            answers = backend.generate(
                conversations, int(self.llm.max_new_tokens), float(self.llm.get("temperature", 0.0))
            )
            return [(c, a.strip()) for c, a in zip(conversations, answers, strict=True)], None
        except Exception as err:  # noqa: BLE001 - the run's results matter more than its explanations
            error = f"{type(err).__name__}: {err}"
            log.error("LLM explanations failed (llm=%s): %s", self.llm.get("name"), error)
            return [(c, None) for c in conversations], error
        finally:
            if backend is not None:
                backend.close()


def log_wandb_table(logger: WandbLogger, records: list[dict[str, Any]], key: str) -> None:
    """image | overlay | true | predicted | confidence | explanation (or why there is none)."""
    import wandb

    columns = ["image", "scorecam", "true", "predicted", "confidence", "explanation"]
    table = wandb.Table(columns=columns)
    for r in records:
        photo, heat = r["images"]
        text = r["explanation"] if r["error"] is None else f"LLM failed: {r['error']}"
        table.add_data(
            wandb.Image(photo), wandb.Image(heat), r["true_label"], r["predicted"], r["confidence"], text
        )
    logger.experiment.log({key: table})

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
from noodlenext.explain.evidence import Evidence
from noodlenext.explain.gather import gather_evidence
from noodlenext.explain.heatmaps import explain_batch
from noodlenext.explain.overlays import overlay
from noodlenext.explain.settings import HeatmapSettings
from noodlenext.llm.base import Message, generation_options
from noodlenext.llm.grounding import FEEDBACK, MAX_WORDS, GroundedText, grounded_batch, template_explanation
from noodlenext.llm.load import load_backend
from noodlenext.llm.prompt import evidence_messages

log = logging.getLogger(__name__)


class LLMExplanations(SampleCollector):
    """Explains the `llm.num_explanations` misclassified test samples with the largest loss.

    Each gets its Evidence (reused from a HeatmapGallery that ran first): numbered facts the model itself
    produced. The prompt (conf/prompt/*.yaml, the `evidence_*` templates) lists them and asks for a short
    explanation citing them; every answer goes through the grounding gate (noodlenext.llm.grounding): a
    rejected draft is regenerated once with the reasons named, then replaced by the template written from
    the evidence, and `source` says whose words reached the reader (llm | llm_retry | template). All
    first drafts go out in one batched call, the retries in a second. Writes `explanations.jsonl` (one
    record per sample: evidence, explanation, source, the gate's verdicts and rejected drafts, messages)
    and the photos and overlays under `<output_dir>/llm/`, and logs the W&B table
    `test/llm_explanations`. A backend that fails to load or answer is logged and written into every
    record (which then holds the template's explanation): it never fails the run.
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
        try:  # the run's results matter more than its explanations: nothing here may fail it
            evidences, images = self._evidence(trainer, pl_module, dataset, mistakes)
        except Exception as err:  # noqa: BLE001
            log.exception("LLM explanations: gathering the evidence failed")
            evidences, images, failure = [], [], f"{type(err).__name__}: {err}"
        else:
            failure = None
        results, conversations, error = self._explain(evidences, images)
        records = [
            {
                "file": ev.file,
                "class_names": ev.class_names,
                "probabilities": ev.probabilities,
                "predicted": ev.predicted,
                "true_label": ev.true_label,
                "confidence": ev.confidence,
                "loss": s.loss,
                "llm": self.llm.get("name"),
                "explanation": result.text,
                "source": result.source,  # llm | llm_retry | template: whose words these are
                "grounding": result.to_dict(),
                "error": error,
                "evidence": ev.to_dict(),
                "evidence_lines": ev.lines(),
                "images": paths,
                "messages": messages,
            }
            for s, ev, paths, result, messages in zip(
                mistakes, evidences, images, results, conversations, strict=True
            )
        ]
        if failure is not None:
            records = [{"loss": s.loss, "llm": self.llm.get("name"), "explanation": None, "error": failure}
                       for s in mistakes]  # fmt: skip
        text = "".join(json.dumps(r) + "\n" for r in records)
        write_text_atomic(self.output_dir / "explanations.jsonl", text)
        if failure is None:
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    log_wandb_table(logger, records, f"{stage}/llm_explanations")
        sources = [r.get("source") for r in records]
        log.info(
            "LLM explanations of %d %s mistakes in %s (%d passed the grounding gate as written, %d after a "
            "retry, %d from the evidence template)", len(records), stage, self.output_dir,
            sources.count("llm"), sources.count("llm_retry"), sources.count("template"),
        )  # fmt: skip

    def _evidence(
        self, trainer: Trainer, pl_module: LightningModule, dataset: Any, mistakes: list[Sample]
    ) -> tuple[list[Evidence], list[list[str]]]:
        """Each mistake's Evidence (reused from a HeatmapGallery that ran first) and [photo, map] paths."""
        gallery = next((c for c in trainer.callbacks if isinstance(c, HeatmapGallery)), None)
        cached_maps = gallery.test_heatmaps if gallery is not None else {}
        cached = gallery.test_evidence if gallery is not None else {}
        missing = [
            s for s in mistakes if s.index not in cached or "scorecam" not in cached_maps.get(s.index, {})
        ]
        if missing:
            batch = torch.stack([dataset[s.index][0] for s in missing])
            maps = explain_batch(pl_module, batch, [s.pred for s in missing], "both", self.settings)
            files = [str(dataset.samples[s.index][0]) for s in missing]
            size = batch.shape[-1], batch.shape[-2]
            index = gallery._feature_index(trainer, pl_module) if gallery is not None else None
            found = gather_evidence(
                pl_module, batch, [load_rgb(f).resize(size) for f in files], [s.pred for s in missing],
                [s.target for s in missing], maps, index=index, settings=self.settings, files=files,
                class_names=pl_module.class_names,
            )  # fmt: skip
            cached_maps = {**cached_maps, **{s.index: m for s, m in zip(missing, maps, strict=True)}}
            cached = {**cached, **{s.index: ev for s, ev in zip(missing, found, strict=True)}}
        image_dir = self.output_dir / "llm"
        image_dir.mkdir(parents=True, exist_ok=True)
        images = []
        for i, s in enumerate(mistakes):
            cam = cached_maps[s.index]["scorecam"].cam
            photo = load_rgb(dataset.samples[s.index][0]).resize((cam.shape[1], cam.shape[0]))
            photo_path, overlay_path = image_dir / f"{i:02d}_photo.png", image_dir / f"{i:02d}_scorecam.png"
            photo.save(photo_path)
            overlay(photo, cam).save(overlay_path)
            images.append([str(photo_path), str(overlay_path)])
        return [cached[s.index] for s in mistakes], images

    def _explain(
        self, evidences: list[Evidence], images: list[list[str]]
    ) -> tuple[list[GroundedText], list[list[Message]], str | None]:
        """A gated explanation per evidence (the model's, its retry, or the template's), the messages sent
        and the error that stopped the model, if any (then every explanation is the template's)."""
        if not evidences:
            return [], [], None
        max_words = int(self.prompt.get("max_words", MAX_WORDS))
        feedback = str(self.prompt.get("retry", FEEDBACK))
        conversations = [
            evidence_messages(ev, self.prompt, False, paths)
            for ev, paths in zip(evidences, images, strict=True)
        ]
        backend = None
        try:
            backend = load_backend(self.llm)
            conversations = [
                evidence_messages(ev, self.prompt, backend.multimodal, paths)
                for ev, paths in zip(evidences, images, strict=True)
            ]
            results = grounded_batch(
                backend, conversations, evidences, max_words, feedback, **generation_options(self.llm)
            )
            return results, conversations, None
        except Exception as err:  # noqa: BLE001 - the run's results matter more than its explanations
            error = f"{type(err).__name__}: {err}"
            log.error("LLM explanations failed (llm=%s): %s", self.llm.get("name"), error)
            templates = [GroundedText(template_explanation(ev, max_words), "template") for ev in evidences]
            return templates, conversations, error
        finally:
            if backend is not None:
                backend.close()


def log_wandb_table(logger: WandbLogger, records: list[dict[str, Any]], key: str) -> None:
    """image | overlay | true | predicted | confidence | explanation | whose words | gate | evidence."""
    import wandb

    columns = ["image", "scorecam", "true", "predicted", "confidence", "explanation", "source", "grounding"]
    table = wandb.Table(columns=[*columns, "evidence"])
    for r in records:
        photo, heat = r["images"]
        source = r["source"] if r["error"] is None else f"{r['source']} (LLM failed: {r['error']})"
        verdicts = r["grounding"]["verdicts"]
        gate = "; ".join(
            f"draft {i + 1}: {'passed' if v['passed'] else 'rejected: ' + '; '.join(v['reasons'])}"
            for i, v in enumerate(verdicts)
        )  # fmt: skip
        table.add_data(
            wandb.Image(photo), wandb.Image(heat), r["true_label"], r["predicted"], r["confidence"],
            r["explanation"], source, gate or "no model draft", "\n".join(r["evidence_lines"]),
        )  # fmt: skip
    logger.experiment.log({key: table})

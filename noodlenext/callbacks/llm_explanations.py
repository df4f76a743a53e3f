"""LLMExplanations: at test end, a language model explains the worst mistakes, in W&B and the run dir."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from noodlenext.callbacks.guarded import GuardedCollector, step_error
from noodlenext.callbacks.heatmap_gallery import HeatmapGallery
from noodlenext.callbacks.samples import Sample, worst_mistakes
from noodlenext.core.files import write_text_atomic
from noodlenext.data.images import load_rgb
from noodlenext.explain.evidence import Evidence
from noodlenext.explain.gather import gather_evidence
from noodlenext.explain.heatmaps import Heatmap, explain_batch
from noodlenext.explain.overlays import overlay
from noodlenext.explain.settings import HeatmapSettings
from noodlenext.explain.templates import photo_template
from noodlenext.llm.base import Message, generation_options
from noodlenext.llm.grounding import GroundedText, grounded_batch, photo_check, photo_fallback
from noodlenext.llm.load import load_backend
from noodlenext.llm.prompt import PromptSettings, evidence_messages, examples_of, structured_instruction

log = logging.getLogger(__name__)

# The steps of an explanation, in order; a record's `error` names the one that failed ("explain": a
# failure outside them).
STEPS = ("collect", "select", "load_image", "evidence", "save_images", "llm")


@dataclass
class _Item:
    """One mistake on its way to a record; `error` stops it at the step that failed."""

    sample: Sample
    file: str | None = None
    photo: Image.Image | None = None
    tensor: torch.Tensor | None = None
    maps: dict[str, Heatmap] | None = None
    evidence: Evidence | None = None
    images: list[str] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    result: GroundedText | None = None
    error: dict[str, str] | None = None

    def fail(self, step: str, err: BaseException) -> None:
        self.error = step_error(step, err)
        log.warning(
            "LLM explanations: %s (%s) failed at %s: %s",
            self.file,
            self.sample.index,
            step,
            self.error["message"],
        )


class LLMExplanations(GuardedCollector):
    """Explains the `llm.num_explanations` misclassified test samples with the largest loss.

    Each gets its Evidence (reused from a HeatmapGallery that ran first): numbered facts the model itself
    produced. The prompt (conf/prompt/*.yaml, the `evidence_*` templates) lists them and asks for a short
    explanation citing them; every answer goes through the grounding gate (noodlenext.llm.grounding): a
    rejected draft is regenerated once with the reasons named, then replaced by the template written from
    the evidence, and `source` says whose words reached the reader (llm | llm_retry | template). All
    first drafts go out in one batched call, the retries in a second. Writes `explanations.jsonl` (one
    record per sample: evidence, explanation, source, the gate's verdicts and rejected drafts, messages)
    and the photos and overlays under `<output_dir>/llm/`, and logs the W&B table
    `test/llm_explanations`.

    It never fails the run: every step is guarded, per sample where it can be. A record's `error` is
    None, or {"step", "message"} for the step that stopped it (STEPS: collecting the test outputs,
    selecting the mistakes, loading the photo, computing the heatmaps and the evidence, saving the photo
    and overlay, the language model); a sample without evidence has no explanation, one with evidence
    gets the template's when the model did not answer. A step that fails for all (no sample collected)
    leaves one record with the error and no file.
    """

    label = "LLM explanations"

    def __init__(
        self,
        llm: Any,
        prompt: Any,
        output_dir: str | Path,
        settings: HeatmapSettings | Any = None,
    ) -> None:
        super().__init__()
        self.llm = llm
        self.prompt = PromptSettings.of(prompt) if prompt is not None else PromptSettings.default()
        self.output_dir = Path(output_dir)
        # _recursive_ is off (the LLM is built at test end), so the settings arrive as a config.
        self.settings = HeatmapSettings.of(settings)
        self._written = False  # explanations.jsonl was written this epoch

    @property
    def enabled(self) -> bool:
        return self.llm is not None and self.llm.get("backend") is not None

    def _start_epoch(self) -> None:
        self._written = False

    def _render_failed(self, err: BaseException) -> None:
        if not self._written:
            self._fail_all("explain", err)

    def _report_failure(self, trainer: Trainer, error: dict[str, Any]) -> None:
        self._write([self._failure_record(error)])

    def _failure_record(self, error: dict[str, str]) -> dict[str, Any]:
        """The one record of a run whose explanations failed before any sample was picked."""
        keys = (
            "file",
            "class_names",
            "probabilities",
            "predicted",
            "true_label",
            "confidence",
            "loss",
            "explanation",
            "source",
            "grounding",
            "evidence",
        )
        return {
            **dict.fromkeys(keys),
            "llm": self.llm.get("name"),
            "error": error,
            "evidence_lines": [],
            "images": [],
            "messages": [],
        }

    # ---------------------------------------------------------------------------- the steps
    def _render(
        self, trainer: Trainer, pl_module: LightningModule, dataset: Any, stage: str, samples: list[Sample]
    ) -> None:
        if self._failure is not None:  # the outputs were not all collected: nothing to pick from
            return
        try:
            mistakes = worst_mistakes(samples, int(self.llm.get("num_explanations", 4)))
        except Exception as err:  # noqa: BLE001
            self._fail_all("select", err)
            return
        items = [_Item(s) for s in mistakes]
        self._load(dataset, items)
        self._evidence(trainer, pl_module, items)
        self._save_images(items)
        self._explain(items)
        records = [self._record(item, pl_module) for item in items]
        self._write(records)
        try:
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    log_wandb_table(logger, records, f"{stage}/llm_explanations")
        except Exception:  # noqa: BLE001
            log.exception("LLM explanations: logging the W&B table failed (explanations.jsonl has them)")
        sources = [r["source"] for r in records]
        failed = [f"{r['file']}: {r['error']['step']}" for r in records if r["error"] is not None]
        log.info(
            "LLM explanations of %d %s mistakes in %s (%d passed the grounding gate as written, %d after a "
            "retry, %d from the evidence template, %d failed%s)",
            len(records),
            stage,
            self.output_dir,
            sources.count("llm"),
            sources.count("llm_retry"),
            sources.count("template"),
            len(failed),
            f": {'; '.join(failed)}" if failed else "",
        )

    def _load(self, dataset: Any, items: list[_Item]) -> None:
        """Each mistake's file, photo and model input (step load_image)."""
        for item in items:
            try:
                item.file = str(dataset.samples[item.sample.index][0])
                item.photo = load_rgb(item.file)
                item.tensor = dataset[item.sample.index][0]
            except Exception as err:  # noqa: BLE001 - e.g. the file was deleted or damaged since training
                item.fail("load_image", err)

    def _evidence(self, trainer: Trainer, pl_module: LightningModule, items: list[_Item]) -> None:
        """Each loaded mistake's maps and Evidence (step evidence): a HeatmapGallery's when it ran first,
        else computed in one batch, and one by one when the batch fails (to find the sample at fault)."""
        gallery = next((c for c in trainer.callbacks if isinstance(c, HeatmapGallery)), None)
        cached_maps = gallery.test_heatmaps if gallery is not None else {}
        cached = gallery.test_evidence if gallery is not None else {}
        todo = []
        for item in (i for i in items if i.error is None):
            index = item.sample.index
            if index in cached and "scorecam" in cached_maps.get(index, {}):
                item.maps, item.evidence = cached_maps[index], cached[index]
            else:
                todo.append(item)
        if not todo:
            return
        try:
            self._compute(trainer, pl_module, gallery, todo)
        except Exception as err:  # noqa: BLE001
            if len(todo) == 1:
                todo[0].fail("evidence", err)
                return
            log.warning("LLM explanations: the evidence batch failed (%s); one sample at a time", err)
            for item in todo:
                try:
                    self._compute(trainer, pl_module, gallery, [item])
                except Exception as one:  # noqa: BLE001
                    item.fail("evidence", one)

    def _compute(
        self, trainer: Trainer, pl_module: LightningModule, gallery: HeatmapGallery | None, items: list[_Item]
    ) -> None:
        batch = torch.stack([item.tensor for item in items])
        preds = [item.sample.pred for item in items]
        maps = explain_batch(pl_module, batch, preds, "both", self.settings)
        size = batch.shape[-1], batch.shape[-2]
        index = gallery._feature_index(trainer, pl_module) if gallery is not None else None
        found = gather_evidence(
            pl_module,
            batch,
            [item.photo.resize(size) for item in items],
            preds,
            [item.sample.target for item in items],
            maps,
            index=index,
            settings=self.settings,
            files=[item.file for item in items],
            class_names=pl_module.class_names,
        )
        for item, m, ev in zip(items, maps, found, strict=True):
            item.maps, item.evidence = m, ev

    def _save_images(self, items: list[_Item]) -> None:
        """Each explained mistake's photo and ScoreCAM overlay under llm/ (step save_images)."""
        image_dir = self.output_dir / "llm"
        for i, item in enumerate(items):
            if item.error is not None:
                continue
            try:
                image_dir.mkdir(parents=True, exist_ok=True)
                cam = item.maps["scorecam"].cam
                photo = item.photo.resize((cam.shape[1], cam.shape[0]))
                photo_path, overlay_path = (
                    image_dir / f"{i:02d}_photo.png",
                    image_dir / f"{i:02d}_scorecam.png",
                )
                photo.save(photo_path)
                overlay(photo, cam).save(overlay_path)
                item.images = [str(photo_path), str(overlay_path)]
            except Exception as err:  # noqa: BLE001 - e.g. a full disk
                item.fail("save_images", err)

    def _explain(self, items: list[_Item]) -> None:
        """A gated explanation for every mistake that got this far (step llm): the model's, its retry, or
        the template's; when the model cannot load or answer, the template's, and the error, for all."""
        todo = [item for item in items if item.error is None]
        max_words = self.prompt.max_words
        backend = None
        try:
            if todo:
                examples = examples_of(self.llm)
                for item in todo:  # what is recorded if the model never loads
                    item.messages = evidence_messages(
                        item.evidence, self.prompt, False, item.images, examples
                    )
                backend = load_backend(self.llm)
                conversations = [
                    evidence_messages(item.evidence, self.prompt, backend.multimodal, item.images, examples)
                    for item in todo
                ]
                for item, messages in zip(todo, conversations, strict=True):
                    item.messages = messages
                results = grounded_batch(
                    backend,
                    conversations,
                    [photo_check(item.evidence, max_words) for item in todo],
                    [photo_fallback(item.evidence, max_words) for item in todo],
                    self.prompt.retry,
                    structured=structured_instruction(self.prompt, self.llm),
                    **generation_options(self.llm),
                )
                for item, result in zip(todo, results, strict=True):
                    item.result = result
        except Exception as err:  # noqa: BLE001 - the run's results matter more than its explanations
            log.error(
                "LLM explanations failed (llm=%s): %s: %s", self.llm.get("name"), type(err).__name__, err
            )
            for item in todo:
                item.error, item.result = step_error("llm", err), None
        finally:
            if backend is not None:
                try:
                    backend.close()
                except Exception:  # noqa: BLE001
                    log.exception("LLM explanations: closing the language model failed")
        for item in items:  # the template's words wherever there is evidence but no gated answer
            if item.result is None and item.evidence is not None:
                try:
                    item.result = GroundedText(photo_template(item.evidence, max_words), "template")
                except Exception:  # noqa: BLE001
                    log.exception("LLM explanations: the template failed for %s", item.file)

    def _record(self, item: _Item, pl_module: LightningModule) -> dict[str, Any]:
        """One line of explanations.jsonl: the same keys for every record, None where a step failed."""
        s, ev, result = item.sample, item.evidence, item.result
        names = list(getattr(pl_module, "class_names", None) or [])
        probabilities = ev.probabilities if ev is not None else _probabilities(s, names)
        return {
            "file": ev.file if ev is not None else item.file,
            "class_names": ev.class_names if ev is not None else names,
            "probabilities": probabilities,
            "predicted": ev.predicted if ev is not None else _name(names, s.pred),
            "true_label": ev.true_label if ev is not None else _name(names, s.target),
            "confidence": ev.confidence if ev is not None else max(s.probs, default=None),
            "loss": s.loss,
            "llm": self.llm.get("name"),
            "explanation": result.text if result is not None else None,
            "source": result.source if result is not None else None,  # llm | llm_retry | template
            "grounding": result.to_dict() if result is not None else None,
            "error": item.error,
            "evidence": ev.to_dict() if ev is not None else None,
            "evidence_lines": ev.lines() if ev is not None else [],
            "images": item.images,
            "messages": item.messages,
        }

    def _write(self, records: list[dict[str, Any]]) -> None:
        try:
            text = "".join(json.dumps(r) + "\n" for r in records)
            write_text_atomic(self.output_dir / "explanations.jsonl", text)
            self._written = True
        except Exception:  # noqa: BLE001
            log.exception("LLM explanations: writing %s failed", self.output_dir / "explanations.jsonl")


def _name(names: list[str], index: int) -> str | int:
    return names[index] if 0 <= index < len(names) else index


def _probabilities(sample: Sample, names: list[str]) -> dict[str, float]:
    return {str(_name(names, i)): p for i, p in enumerate(sample.probs)}


def log_wandb_table(logger: WandbLogger, records: list[dict[str, Any]], key: str) -> None:
    """image | overlay | true | predicted | confidence | explanation | whose words | gate | evidence; a
    record that failed has no images and says at which step in `source`."""
    import wandb

    columns = ["image", "scorecam", "true", "predicted", "confidence", "explanation", "source", "grounding"]
    table = wandb.Table(columns=[*columns, "evidence"])
    for r in records:
        photo, heat = r["images"] if len(r["images"]) == 2 else (None, None)
        error = r["error"]
        source = r["source"] or "none"
        if error is not None:
            source = f"{source} ({error['step']} failed: {error['message']})"
        verdicts = r["grounding"]["verdicts"] if r["grounding"] else []
        gate = "; ".join(
            f"draft {i + 1}: {'passed' if v['passed'] else 'rejected: ' + '; '.join(v['reasons'])}"
            for i, v in enumerate(verdicts)
        )
        table.add_data(
            wandb.Image(photo) if photo else None,
            wandb.Image(heat) if heat else None,
            r["true_label"],
            r["predicted"],
            r["confidence"],
            r["explanation"],
            source,
            gate or "no model draft",
            "\n".join(r["evidence_lines"]),
        )
    logger.experiment.log({key: table})

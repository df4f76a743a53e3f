"""MistakeGroups: what the test mistakes have in common, per confusion pair (true -> predicted).

At test end every misclassified test photo is put in the group of its pair (`mistake_groups`); the
largest groups (at most `max_groups`) each get the Evidence of their mistakes with the largest loss (at
most `max_per_group`, GradCAM maps by default: cheap on a CPU), and the group its Evidence and the claims
of what its photos share (`explain.groups`). The run's language model writes one paragraph per group,
checked by the grounding gate (`mistake_paragraphs`). Writes `mistakes.md`, `mistakes.json` and
`mistakes/<group>/*.png` in the run directory, and logs the W&B table `test/mistakes` and the page
`test/mistakes_report` (`mistake_report`). It never fails the run: each step is guarded, per group where
it can be, and a failed step is written into the report ("error") and the table.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from noodlenext.callbacks.guarded import GuardedCollector, step_error
from noodlenext.callbacks.heatmap_gallery import HeatmapGallery
from noodlenext.callbacks.mistake_groups import (
    MistakeGroup,
    confusion_groups,
    examine,
    save_images,
)
from noodlenext.callbacks.mistake_paragraphs import explain_groups
from noodlenext.callbacks.mistake_report import log_wandb, report_head, report_markdown
from noodlenext.callbacks.samples import Sample
from noodlenext.core.files import write_json_atomic, write_text_atomic
from noodlenext.data.datamodule import NoodleImages
from noodlenext.data.transforms import eval_transform
from noodlenext.explain.evidence import primary_method
from noodlenext.explain.neighbours import FeatureIndex
from noodlenext.explain.registry import parse_methods
from noodlenext.explain.settings import HeatmapSettings
from noodlenext.llm.prompt import PromptSettings

log = logging.getLogger(__name__)


class MistakeGroups(GuardedCollector):
    """At test end: the test mistakes grouped by confusion pair (true -> predicted), what each group's
    evidence shares, and one gated paragraph per group (see the module docstring).

    llm: the run's `llm` config (llm=none: template paragraphs only); prompt: the run's `prompt` config
    (its `group_system`, `group_question`, `retry` and `max_words`); methods: the heatmap methods whose
    first is summarised (default gradcam, cheap; scorecam costs one forward pass per channel per photo);
    max_groups, max_per_group: how many pairs, and how many photos of each, are examined; num_neighbours:
    nearest training photos per photo (0: none; a HeatmapGallery's index is reused when it ran).
    """

    label = "mistake groups"

    def __init__(
        self,
        output_dir: str | Path,
        llm: Any = None,
        prompt: Any = None,
        settings: HeatmapSettings | Any = None,
        methods: str | list[str] = "gradcam",
        max_groups: int = 6,
        max_per_group: int = 8,
        num_neighbours: int = 5,
    ) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.llm = llm
        self.prompt = PromptSettings.of(prompt) if prompt is not None else PromptSettings.default()
        self.settings = HeatmapSettings.of(settings)  # _recursive_ is off: a config arrives
        self.methods = parse_methods(list(methods) if not isinstance(methods, str) else methods)
        for option, value in (
            ("max_groups", max_groups),
            ("max_per_group", max_per_group),
            ("num_neighbours", num_neighbours),
        ):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"callbacks.mistakes.{option}={value!r}: use a whole number >= 0")
        self.max_groups, self.max_per_group, self.num_neighbours = max_groups, max_per_group, num_neighbours
        self.groups: list[MistakeGroup] = []  # the last test's, for whoever wants them
        self._index: FeatureIndex | None = None

    def _report_failure(self, trainer: Trainer, error: dict[str, Any]) -> None:
        self._report(trainer, [], 0, 0, 0, [error])

    def _render(
        self, trainer: Trainer, pl_module: LightningModule, dataset: Any, stage: str, samples: list[Sample]
    ) -> None:
        if self._failure is not None or stage != "test":
            return
        start = time.monotonic()
        names = list(pl_module.class_names)
        try:
            groups = confusion_groups(samples, names, self.max_groups, self.max_per_group)
            wrong = [s for s in samples if s.target >= 0 and s.pred != s.target]
            n_pairs, n_mistakes = len({(s.target, s.pred) for s in wrong}), len(wrong)
        except Exception as err:  # noqa: BLE001
            self._fail_all("select", err)
            return
        index = None
        try:
            index = self._feature_index(trainer, pl_module) if groups else None
        except Exception as err:  # noqa: BLE001 - no neighbours then, the rest still works
            log.warning("mistake groups: no nearest training photos: %s: %s", type(err).__name__, err)
        errors: list[dict[str, str]] = []
        step = "evidence"
        try:  # each step guards itself per group and photo; this is for the unforeseen
            examine(
                groups,
                dataset,
                pl_module,
                names,
                methods=self.methods,
                settings=self.settings,
                index=index,
                num_neighbours=self.num_neighbours,
                mistakes=n_mistakes,
            )
            step = "images"
            save_images(groups, self.output_dir / "mistakes")
            step = "llm"
            explain_groups(groups, self.llm, self.prompt)
        except Exception as err:  # noqa: BLE001
            errors.append(step_error(step, err))
            log.exception("mistake groups: %s failed", step)
        self.groups = groups
        self._report(trainer, groups, len(samples), n_mistakes, n_pairs, errors, time.monotonic() - start)
        sources = Counter(g.paragraph.source for g in groups if g.paragraph is not None)
        log.info(
            "mistake groups: %d of %d confusion pairs in %s in %.1f s (paragraphs: %s)",
            len(groups),
            n_pairs,
            self.output_dir / "mistakes.md",
            time.monotonic() - start,
            dict(sources) or "none",
        )

    def _feature_index(self, trainer: Trainer, pl_module: LightningModule) -> FeatureIndex | None:
        """The training photos in feature space: a HeatmapGallery's (built once per model), else our own."""
        if not self.num_neighbours:
            return None
        gallery = next((c for c in trainer.callbacks if isinstance(c, HeatmapGallery)), None)
        if gallery is not None and gallery.num_neighbours:
            return gallery._feature_index(trainer, pl_module)
        train_set = getattr(getattr(trainer, "datamodule", None), "train_set", None)
        if train_set is None or not len(train_set):
            return None
        if self._index is None or self._index.model is not pl_module.net:
            hp = pl_module.hparams
            photos = NoodleImages(train_set.samples, eval_transform(hp.image_size, hp.mean, hp.std))
            self._index = FeatureIndex.build(pl_module, photos, class_names=pl_module.class_names)
        return self._index

    def _report(
        self,
        trainer: Trainer,
        groups: list[MistakeGroup],
        n_samples: int,
        n_mistakes: int,
        n_pairs: int,
        errors: list[dict[str, str]],
        seconds: float | None = None,
    ) -> None:
        """mistakes.md, mistakes.json and the W&B table (steps write and wandb)."""
        llm_name = self.llm.get("name") if self.llm is not None else None
        method = primary_method(parse_methods(self.methods))
        markdown = ""
        try:
            markdown = report_markdown(
                groups, self.output_dir, n_samples, n_mistakes, n_pairs, llm_name, method, errors
            )
            write_text_atomic(self.output_dir / "mistakes.md", markdown)
            write_json_atomic(
                self.output_dir / "mistakes.json",
                {
                    "samples": n_samples,
                    "mistakes": n_mistakes,
                    "pairs": n_pairs,
                    "llm": llm_name,
                    "method": method,
                    "seconds": seconds,
                    "errors": errors,
                    "groups": [g.to_dict() for g in groups],
                },
            )
        except Exception:  # noqa: BLE001
            log.exception("mistake groups: writing %s failed", self.output_dir / "mistakes.md")
        try:
            head = report_head(n_samples, n_mistakes, n_pairs, len(groups), llm_name, method)
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    log_wandb(logger, groups, "test/mistakes", head, errors)
        except Exception:  # noqa: BLE001
            log.exception("mistake groups: logging the W&B table failed (mistakes.md has them)")

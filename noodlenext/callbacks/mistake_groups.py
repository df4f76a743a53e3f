"""The test mistakes of one run grouped by confusion pair (true -> predicted), each group's photos
examined (their maps and Evidence) and the group's Evidence made (`explain.groups`), and the thumbnails.

Each step is guarded per group and per photo: a failure is recorded where it happened (`Photo.error`,
`MistakeGroup.errors`) and the rest goes on.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from noodlenext.callbacks.guarded import step_error
from noodlenext.callbacks.samples import Sample
from noodlenext.data.images import load_rgb
from noodlenext.explain.causes import contrast_part, hide_box, whole_photo_changes
from noodlenext.explain.evidence import Evidence, primary_method
from noodlenext.explain.gather import gather_evidence
from noodlenext.explain.groups import Reference, group_evidence, summary_claim
from noodlenext.explain.heatmaps import explain_batch
from noodlenext.explain.neighbours import FeatureIndex
from noodlenext.explain.overlays import overlay
from noodlenext.explain.registry import parse_methods
from noodlenext.explain.settings import HeatmapSettings
from noodlenext.llm.base import Message
from noodlenext.llm.grounding import GroundedText

log = logging.getLogger(__name__)

# The steps, in order; an error names the one that failed.
STEPS = ("collect", "select", "load_image", "evidence", "summary", "images", "llm", "write", "wandb")
THUMBNAIL = 96  # px, each half (photo | overlay) of a thumbnail


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "group"


@dataclass
class Photo:
    """One examined mistake on its way through the steps; `error` stops it at the step that failed."""

    sample: Sample
    file: str | None = None
    photo: Image.Image | None = None  # at the model's input size
    tensor: torch.Tensor | None = None
    evidence: Evidence | None = None
    cam: np.ndarray | None = None  # the primary method's map of the predicted class, (H, W) in [0, 1]
    contrastive: np.ndarray | None = None  # predicted over true, (H, W) in [0, 1]
    thumbnail: str | None = None
    error: dict[str, str] | None = None

    def fail(self, step: str, err: BaseException) -> None:
        self.error = step_error(step, err)
        log.warning(
            "mistake groups: %s (%s) failed at %s: %s",
            self.file,
            self.sample.index,
            step,
            self.error["message"],
        )


@dataclass
class MistakeGroup:
    """The test mistakes of one confusion pair: `count` photos of class `true` predicted as `predicted`;
    `photos`: those examined (the largest loss first); `evidence`: the group as one Evidence (its
    summary claims what the photos share); `paragraph`: the gated paragraph; `errors`: the steps that
    failed for it."""

    true: str
    predicted: str
    count: int
    photos: list[Photo]
    mean_loss: float = 0.0
    evidence: Evidence | None = None
    paragraph: GroundedText | None = None
    messages: list[Message] = field(default_factory=list)
    mean_map: str | None = None  # the mean map over the mean photo, a file
    errors: list[dict[str, str]] = field(default_factory=list)
    # Photos of `predicted` it got right, on which the causes are tried too (explain.groups.Reference).
    references: list[Sample] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.true} taken for {self.predicted}: {plural(self.count, 'photo')}"

    @property
    def examined(self) -> list[Photo]:
        """The photos whose evidence is known."""
        return [p for p in self.photos if p.evidence is not None and p.error is None]

    @property
    def shared_regions(self) -> list[str]:
        """The regions hot in at least half of the examined photos (the group summary's)."""
        hot = summary_claim(self.evidence, "group_hot") if self.evidence is not None else None
        return [r for r, _ in hot.fields["shared"]] if hot is not None else []

    def fail(self, step: str, err: BaseException) -> None:
        self.errors.append(step_error(step, err))
        log.warning("mistake groups: %s failed at %s: %s", self.title, step, self.errors[-1]["message"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "true": self.true,
            "predicted": self.predicted,
            "count": self.count,
            "examined": len(self.examined),
            "mean_loss": self.mean_loss,
            "summary": {c.kind: c.fields for c in self.evidence.summary} if self.evidence else None,
            "evidence": self.evidence.to_dict() if self.evidence is not None else None,
            "evidence_lines": self.evidence.lines() if self.evidence is not None else [],
            "paragraph": self.paragraph.text if self.paragraph is not None else None,
            "source": self.paragraph.source if self.paragraph is not None else None,
            "grounding": self.paragraph.to_dict() if self.paragraph is not None else None,
            "messages": self.messages,
            "photos": [
                {
                    "file": p.file,
                    "loss": p.sample.loss,
                    "thumbnail": p.thumbnail,
                    "error": p.error,
                    "evidence_lines": p.evidence.lines() if p.evidence is not None else [],
                }
                for p in self.photos
            ],
            "mean_map": self.mean_map,
            "errors": self.errors + [p.error for p in self.photos if p.error is not None],
        }


def confusion_groups(
    samples: Sequence[Sample], class_names: Sequence[str], max_groups: int = 6, max_per_group: int = 8
) -> list[MistakeGroup]:
    """The misclassified samples grouped by (true, predicted): the `max_groups` largest groups (ties: the
    larger mean loss first), each with its `max_per_group` samples of largest loss to examine, and as
    many photos of the predicted class that it got right (the first in the test set) as references."""
    pairs: dict[tuple[int, int], list[Sample]] = {}
    right: dict[int, list[Sample]] = {}
    for s in samples:
        if s.target >= 0 and s.pred == s.target:
            right.setdefault(s.pred, []).append(s)
        if s.target >= 0 and s.pred != s.target:  # a negative target is an unlabelled photo
            pairs.setdefault((s.target, s.pred), []).append(s)
    ranked = sorted(pairs.items(), key=lambda kv: (-len(kv[1]), -float(np.mean([s.loss for s in kv[1]]))))
    groups = []
    for (t, p), members in ranked[: max(0, max_groups)]:
        worst = sorted(members, key=lambda s: -s.loss)[: max(0, max_per_group)]
        groups.append(
            MistakeGroup(
                class_names[t],
                class_names[p],
                len(members),
                [Photo(s) for s in worst],
                float(np.mean([s.loss for s in members])),
                references=right.get(p, [])[: max(0, max_per_group)],
            )
        )
    return groups


def examine(
    groups: Sequence[MistakeGroup],
    dataset: Any,
    model: nn.Module,
    class_names: Sequence[str],
    *,
    methods: str | Sequence[str] = "gradcam",
    settings: HeatmapSettings | None = None,
    index: FeatureIndex | None = None,
    num_neighbours: int = 5,
    mistakes: int | None = None,
) -> None:
    """Each group's photos get their file, photo, maps and Evidence (steps load_image and evidence), then
    the group its Evidence (step summary). dataset: a NoodleImages-like (dataset[i] is (image, label),
    dataset.samples[i][0] the file). One batch per group; when it fails, one photo at a time. mistakes:
    all test mistakes (a group that dominates them suggests collecting photos of its pair)."""
    for group in groups:
        for photo in group.photos:
            try:
                photo.file = str(dataset.samples[photo.sample.index][0])
                photo.tensor = dataset[photo.sample.index][0]
                size = photo.tensor.shape[-1], photo.tensor.shape[-2]
                photo.photo = load_rgb(photo.file, size).resize(size)
            except Exception as err:  # noqa: BLE001 - e.g. a photo deleted since testing
                photo.fail("load_image", err)
        todo = [p for p in group.photos if p.error is None]
        if todo:
            args = (model, class_names, methods, settings, index, num_neighbours)
            try:
                _gather(todo, *args)
            except Exception as err:  # noqa: BLE001
                if len(todo) == 1:
                    todo[0].fail("evidence", err)
                else:
                    log.warning(
                        "mistake groups: the evidence batch of %s failed (%s); one at a time",
                        group.title,
                        err,
                    )
                    for photo in todo:
                        try:
                            _gather([photo], *args)
                        except Exception as one:  # noqa: BLE001
                            photo.fail("evidence", one)
        if not group.examined:
            continue
        reference = None
        if group.references:
            try:
                reference = _reference(group, dataset, model, class_names)
            except Exception as err:  # noqa: BLE001 - the causes are then ranked without one
                group.fail("reference", err)
        try:
            examined = group.examined
            group.evidence = group_evidence(
                [p.evidence for p in examined],
                [p.cam for p in examined],
                [p.contrastive for p in examined],
                count=group.count,
                method=primary_method(parse_methods(methods)),
                mistakes=mistakes,
                largest=bool(groups) and group.count == groups[0].count,
                reference=reference,
            )
        except Exception as err:  # noqa: BLE001
            group.fail("summary", err)


def _reference(group: MistakeGroup, dataset: Any, model: nn.Module, class_names: Sequence[str]) -> Reference:
    """The causes tried on the group's reference photos (predicted class, got right), with the group's
    true class as their truth: the part that mattered most in its mistakes hidden, every whole-photo
    change, and the colours its mistakes had taken out; and every part compared over the mistakes and
    those photos (`contrast_part`), with the one it picks hidden in both."""
    names = list(class_names)
    samples = group.references
    batch = torch.stack([dataset[s.index][0] for s in samples])
    preds = [s.pred for s in samples]
    truth = [names.index(group.true)] * len(samples)
    temperature = float(getattr(model, "applied_temperature", 1.0))
    colours = sorted({c.colour for p in group.examined for c in p.evidence.changes if c.colour})
    changes = whole_photo_changes(model, batch, preds, truth, names, temperature=temperature, colours=colours)
    examined = [p for p in group.examined if p.evidence.causal is not None]
    if not examined:
        return Reference([], changes)
    # The part that mattered most in most of the mistakes, hidden in the reference photos too.
    parts = Counter((c.region, c.box) for p in examined if (c := p.evidence.causal) is not None)
    (region, box), _ = parts.most_common(1)[0]
    common = hide_box(model, batch, box, region, preds, truth, names, temperature=temperature)
    # The part compared over the whole group: what hiding it does to the mistakes beyond the right ones.
    mistakes = torch.stack([p.tensor for p in examined])
    pred, true = names.index(group.predicted), names.index(group.true)
    found = contrast_part(model, mistakes, pred, true, batch, temperature=temperature)
    if found is None:
        return Reference(common, changes)
    box, region = found
    first = examined[0].evidence.causal
    k = len(examined)
    return Reference(
        common,
        changes,
        part=hide_box(model, mistakes, box, region, [pred] * k, [true] * k, names, temperature=temperature),
        part_reference=hide_box(model, batch, box, region, preds, truth, names, temperature=temperature),
        compared=first.places + first.strips,
    )


def _gather(
    photos: list[Photo],
    model: nn.Module,
    class_names: Sequence[str],
    methods: str | Sequence[str],
    settings: HeatmapSettings | None,
    index: FeatureIndex | None,
    k: int,
) -> None:
    batch = torch.stack([p.tensor for p in photos])
    preds = [p.sample.pred for p in photos]
    maps = explain_batch(model, batch, preds, methods, settings)
    primary = primary_method(parse_methods(methods))
    contrastive: list[np.ndarray] = []
    found = gather_evidence(
        model,
        batch,
        [p.photo for p in photos],
        preds,
        [p.sample.target for p in photos],
        maps,
        index=index,
        settings=settings,
        files=[p.file for p in photos],
        class_names=list(class_names),
        k=k,
        contrastive_out=contrastive,
    )
    for photo, m, ev, cmap in zip(photos, maps, found, contrastive, strict=True):
        photo.evidence, photo.cam, photo.contrastive = ev, m[primary].cam, cmap


def save_images(groups: Sequence[MistakeGroup], folder: Path) -> None:
    """Per group, `<folder>/<NN>_<true>_as_<predicted>/`: one thumbnail per examined photo (the photo |
    its map) and mean_map.png (the mean map over the mean photo) (step images)."""
    for i, group in enumerate(groups):
        if not group.examined:
            continue
        try:
            out = folder / f"{i + 1:02d}_{_slug(group.true)}_as_{_slug(group.predicted)}"
            out.mkdir(parents=True, exist_ok=True)
            for j, photo in enumerate(group.examined):
                thumb = Image.new("RGB", (2 * THUMBNAIL, THUMBNAIL))
                small = photo.photo.resize((THUMBNAIL, THUMBNAIL))
                thumb.paste(small, (0, 0))
                thumb.paste(overlay(small, photo.cam), (THUMBNAIL, 0))
                path = out / f"{j:02d}.png"
                thumb.save(path)
                photo.thumbnail = str(path)
            mean_photo = np.mean([np.asarray(p.photo, dtype=np.float32) for p in group.examined], axis=0)
            mean_cam = np.mean([p.cam for p in group.examined], axis=0)
            mean_cam = mean_cam / mean_cam.max() if mean_cam.max() > 0 else mean_cam
            overlay(np.uint8(mean_photo), mean_cam).save(out / "mean_map.png")
            group.mean_map = str(out / "mean_map.png")
        except Exception as err:  # noqa: BLE001 - e.g. a full disk
            group.fail("images", err)

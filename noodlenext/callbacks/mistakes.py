"""MistakeGroups: what the test mistakes have in common, per confusion pair (true -> predicted).

At test end every misclassified test photo is put in the group of its pair; the largest groups (at most
`max_groups`) each get the Evidence of their mistakes with the largest loss (at most `max_per_group`,
GradCAM maps by default: cheap on a CPU), and a summary of what that evidence shares: how often each
region is hot, the hot regions' colours and texture, what hiding the hot region or keeping only it did,
what the nearest training photos are, how many maps beat a random one. The group itself becomes one
Evidence (`group_evidence`: the mean probabilities, the facts of the mean map and of the mean
contrastive map, and the summary as a Finding "group" whose lines and regions join it), so the grounding
gate checks a paragraph about a group exactly as it checks one about a photo. The run's language model
writes one paragraph per group, batched as `grounded_batch` does, through the gate and two checks of its
own (`check_paragraph`: not a list, no fact copied word for word); a rejected draft is regenerated once
with the reasons, then replaced by `group_template`'s paragraph, marked as such.

Writes `mistakes.md` (per group: a heading, the numbered evidence lines, the paragraph with its mark and
thumbnails linked to the photos), `mistakes.json` (the same as data) and `mistakes/<group>/*.png` in the
run directory, and logs the W&B table `test/mistakes` and the page `test/mistakes_report`. It never
fails the run: each step is guarded, per group where it can be, and a failed step is written into the
report ("error") and the table.
"""

from __future__ import annotations

import html
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from PIL import Image
from torch import nn

from noodlenext.callbacks.heatmap_gallery import HeatmapGallery
from noodlenext.callbacks.samples import Sample, SampleCollector
from noodlenext.core.files import write_json_atomic, write_text_atomic
from noodlenext.data.datamodule import NoodleImages
from noodlenext.data.images import load_rgb
from noodlenext.data.transforms import eval_transform
from noodlenext.explain.evidence import BARELY, Evidence, Finding, method_name
from noodlenext.explain.facts import REGIONS, heatmap_facts
from noodlenext.explain.gather import gather_evidence
from noodlenext.explain.heatmaps import explain_batch
from noodlenext.explain.neighbours import FeatureIndex
from noodlenext.explain.overlays import overlay
from noodlenext.explain.registry import parse_methods
from noodlenext.explain.settings import HeatmapSettings
from noodlenext.llm.base import Backend, Message, generation_options
from noodlenext.llm.grounding import (
    FEEDBACK,
    MAX_WORDS,
    GroundedText,
    GroundingVerdict,
    check_explanation,
    feedback_message,
    retry_conversation,
)
from noodlenext.llm.load import load_backend
from noodlenext.llm.prompt import evidence_fields, render
from noodlenext.llm.text import words

log = logging.getLogger(__name__)

# The steps, in order; an error names the one that failed.
STEPS = ("collect", "select", "load_image", "evidence", "summary", "images", "llm", "write", "wandb")
PROBE = "group"  # the Finding's name
# Used when the callback's config gives none (conf/callbacks/mistakes.yaml does).
SYSTEM = (
    "You explain the mistakes of an image classifier that sorts photos of noodle dishes. You are given "
    "numbered facts about a group of photos of one class that it took for another class, measured on the "
    "classifier itself. Use only the numbered facts. Name only the classes and the image regions that the "
    "facts name, and give no cause that they do not state. Cite the number of each fact you use in square "
    "brackets, like [2]. Answer in 2 to 4 short sentences."
)
QUESTION = (
    "In 2 to 4 short sentences, say what these {count} {true_label} photos that the classifier took for "
    "{predicted} have in common, citing the facts you use like [2]."
)
EXPLAIN = "Facts:\n{lines}\n{question}"
THUMBNAIL = 96  # px, each half (photo | overlay) of a thumbnail


def step_error(step: str, err: BaseException) -> dict[str, str]:
    """An error record: the step that failed and what it raised."""
    return {"step": step, "message": f"{type(err).__name__}: {err}"}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def primary_method(methods: str | Sequence[str]) -> str:
    """The method whose map a group is summarised by: ScoreCAM when it is among `methods`, else the first
    (gather_evidence's rule for the counterfactuals and the appearance)."""
    parsed = parse_methods(methods)
    return "scorecam" if "scorecam" in parsed else parsed[0]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "group"


# ------------------------------------------------------------------------------------------ the groups
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
        log.warning("mistake groups: %s (%s) failed at %s: %s", self.file, self.sample.index, step,
                    self.error["message"])  # fmt: skip


@dataclass
class MistakeGroup:
    """The test mistakes of one confusion pair: `count` photos of class `true` predicted as `predicted`;
    `photos`: those examined (the largest loss first); `evidence`: the group as one Evidence (its last
    finding is the summary); `paragraph`: the gated paragraph; `errors`: the steps that failed for it."""

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

    @property
    def title(self) -> str:
        return f"{self.true} taken for {self.predicted}: {_plural(self.count, 'photo')}"

    @property
    def examined(self) -> list[Photo]:
        """The photos whose evidence is known."""
        return [p for p in self.photos if p.evidence is not None and p.error is None]

    @property
    def finding(self) -> Finding | None:
        if self.evidence is None:
            return None
        return next((f for f in reversed(self.evidence.findings) if f.probe == PROBE), None)

    def fail(self, step: str, err: BaseException) -> None:
        self.errors.append(step_error(step, err))
        log.warning("mistake groups: %s failed at %s: %s", self.title, step, self.errors[-1]["message"])

    def to_dict(self) -> dict[str, Any]:
        finding = self.finding
        return {
            "true": self.true,
            "predicted": self.predicted,
            "count": self.count,
            "examined": len(self.examined),
            "mean_loss": self.mean_loss,
            "summary": finding.data if finding is not None else None,
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
            ],  # fmt: skip
            "mean_map": self.mean_map,
            "errors": self.errors + [p.error for p in self.photos if p.error is not None],
        }


def confusion_groups(
    samples: Sequence[Sample], class_names: Sequence[str], max_groups: int = 6, max_per_group: int = 8
) -> list[MistakeGroup]:
    """The misclassified samples grouped by (true, predicted): the `max_groups` largest groups (ties: the
    larger mean loss first), each with its `max_per_group` samples of largest loss to examine."""
    pairs: dict[tuple[int, int], list[Sample]] = {}
    for s in samples:
        if s.target >= 0 and s.pred != s.target:  # a negative target is an unlabelled photo
            pairs.setdefault((s.target, s.pred), []).append(s)
    ranked = sorted(pairs.items(), key=lambda kv: (-len(kv[1]), -float(np.mean([s.loss for s in kv[1]]))))
    groups = []
    for (t, p), members in ranked[: max(0, max_groups)]:
        worst = sorted(members, key=lambda s: -s.loss)[: max(0, max_per_group)]
        groups.append(
            MistakeGroup(
                class_names[t], class_names[p], len(members), [Photo(s) for s in worst],
                float(np.mean([s.loss for s in members])),
            )
        )  # fmt: skip
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
) -> None:
    """Each group's photos get their file, photo, maps and Evidence (steps load_image and evidence), then
    the group its Evidence (step summary). dataset: a NoodleImages-like (dataset[i] is (image, label),
    dataset.samples[i][0] the file). One batch per group; when it fails, one photo at a time."""
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
                    log.warning("mistake groups: the evidence batch of %s failed (%s); one at a time",
                                group.title, err)  # fmt: skip
                    for photo in todo:
                        try:
                            _gather([photo], *args)
                        except Exception as one:  # noqa: BLE001
                            photo.fail("evidence", one)
        if not group.examined:
            continue
        try:
            examined = group.examined
            group.evidence = group_evidence(
                [p.evidence for p in examined], [p.cam for p in examined],
                [p.contrastive for p in examined], count=group.count, method=primary_method(methods),
            )  # fmt: skip
        except Exception as err:  # noqa: BLE001
            group.fail("summary", err)


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
    primary = primary_method(methods)
    contrastive: list[np.ndarray] = []
    found = gather_evidence(
        model, batch, [p.photo for p in photos], preds, [p.sample.target for p in photos], maps,
        index=index, settings=settings, files=[p.file for p in photos], class_names=list(class_names),
        k=k, contrastive_out=contrastive,
    )  # fmt: skip
    for photo, m, ev, cmap in zip(photos, maps, found, contrastive, strict=True):
        photo.evidence, photo.cam, photo.contrastive = ev, m[primary].cam, cmap


# ------------------------------------------------------------------------------------------ the summary
def _ranked(counts: Counter[str], order: Sequence[str] = ()) -> list[tuple[str, int]]:
    """Most first; ties in `order` (then first seen)."""
    position = {name: i for i, name in enumerate(order)}
    seen = {name: i for i, name in enumerate(counts)}
    return sorted(counts.items(), key=lambda kv: (-kv[1], position.get(kv[0], len(order)), seen[kv[0]]))


def _in(n: int, of: int, noun: bool = True, prep: str = "in") -> str:
    """How many of the photos: "in both photos", "in all 4 photos", "in none of the 4 photos", "in 2 of
    4 photos" ("in all 4" without the noun); of a single photo: "in the photo" or "in no photo"."""
    if of == 1:
        return f"{prep} the photo" if n else f"{prep} no photo"
    base = (
        ("both" if of == 2 else f"all {of}") if n == of else f"none of the {of}" if n == 0 else f"{n} of {of}"
    )
    return f"{prep} {base} photos" if noun else f"{prep} {base}"


def _counts(items: Sequence[tuple[str, int]], of: int) -> str:
    """ "upper left in all 4, center in 2 of 4"; of a single photo just the names."""
    if of == 1:
        return ", ".join(name for name, _ in items)
    return ", ".join(f"{name} {_in(n, of, noun=False)}" for name, n in items)


def group_evidence(
    evidences: Sequence[Evidence],
    cams: Sequence[np.ndarray],
    contrastive: Sequence[np.ndarray | None] = (),
    *,
    count: int | None = None,
    method: str = "gradcam",
) -> Evidence:
    """A group of mistakes of one pair as one Evidence: the mean probabilities, the facts of the mean map
    (`cams`, each photo's `method` map of the predicted class) and of the mean contrastive map, and the
    Finding "group" that states what the photos' evidence shares (its `data` holds the numbers, and
    `data["keys"]` names its lines in order: group, hot, look, hiding, keeping, neighbours, trust; a
    line without evidence is left out). count: the group's size (default: the photos given)."""
    if not evidences:
        raise ValueError("a group needs the evidence of at least one photo")
    first = evidences[0]
    pred, true, names = first.predicted, first.true_label, list(first.class_names)
    if true is None or true == pred:
        raise ValueError(f"a mistake group needs wrong predictions, not {true} -> {pred}")
    if any((e.predicted, e.true_label) != (pred, true) for e in evidences):
        raise ValueError(f"every photo of a group must be {true} taken for {pred}")
    if len(cams) != len(evidences):
        raise ValueError(f"{len(evidences)} photos but {len(cams)} maps")
    k = len(evidences)
    count = k if count is None else count
    probabilities = {n: float(np.mean([e.probabilities[n] for e in evidences])) for n in names}
    mean_cam = np.mean(np.stack([np.asarray(c, dtype=np.float64) for c in cams]), axis=0)
    contrast = [c for c in contrastive if c is not None]
    mean_contrast = heatmap_facts(np.mean(np.stack(contrast), axis=0)) if len(contrast) == k else None
    base = Evidence(
        file=f"{_plural(count, true + ' photo')} taken for {pred}", class_names=names,
        probabilities=probabilities, predicted=pred, true_label=true, contrast_class=true,
        facts={method: heatmap_facts(mean_cam)}, contrastive=mean_contrast,
    )  # fmt: skip
    return base.with_finding(_summary(evidences, method, count, has_contrast=mean_contrast is not None))


def _summary(evidences: Sequence[Evidence], method: str, count: int, has_contrast: bool) -> Finding:
    k = len(evidences)
    first = evidences[0]
    pred, true, names = first.predicted, first.true_label, first.class_names
    assert true is not None
    name = method_name(method)
    lines: dict[str, str] = {}
    data: dict[str, Any] = {"count": count, "examined": k, "method": method}
    classes: list[str] = [pred, true]

    confidences = [e.confidence for e in evidences]
    low, high = min(confidences), max(confidences)
    data["confidence"] = {"mean": float(np.mean(confidences)), "min": low, "max": high}
    if k == count:
        which = f"the one {true} photo" if count == 1 else f"both {true} photos" if count == 2 else (
            f"all {count} {true} photos"
        )  # fmt: skip
    else:
        which = f"{k} of the {count} {true} photos (those with the largest loss)" if k > 1 else (
            f"the one of the {count} {true} photos with the largest loss"
        )  # fmt: skip
    if k == 1:
        maps = f"line 1 gives its confidence, line 2 its {name} map"
        maps += ", line 3 its contrastive map" if has_contrast else ""
    else:
        spread = f"{low:.0%} for each" if f"{low:.0%}" == f"{high:.0%}" else f"from {low:.0%} to {high:.0%}"
        maps = f"line 1 gives their mean confidence ({spread}), line 2 their mean {name} map"
        maps += ", line 3 their mean contrastive map" if has_contrast else ""
    lines["group"] = f"These facts are about {which} that the classifier took for {pred}: {maps}."

    # Where the heat is: the regions each photo's evidence calls hot (its map's or the contrastive map's);
    # ties: the region that is hotter within the photos (its mean rank in their hot_regions) first.
    hot_lists = [e.hot_regions(method) for e in evidences]
    hot = Counter(r for regions in hot_lists for r in regions)
    rank = {r: np.mean([h.index(r) for h in hot_lists if r in h]) for r in hot}
    ranked = _ranked(hot, sorted(hot, key=lambda r: (rank[r], REGIONS.index(r))))
    shared = [(r, n) for r, n in ranked if 2 * n >= k][:3]
    data["hot_regions"] = dict(ranked)
    data["shared_regions"] = [r for r, _ in shared]
    regions = [r for r, _ in shared]
    where = f"Hot regions, most often first (each photo's {name} or contrastive map)"
    if shared:
        lines["hot"] = f"{where}: {_counts(shared, k)}."
    elif ranked:
        top, n = ranked[0]
        regions = [top]
        lines["hot"] = (
            f"{where}: none is hot in half of the photos or more; most often the {top} ({n} of {k})."
        )
    else:
        lines["hot"] = f"{where}: every map is empty; no region stands out."

    # What the hot regions look like.
    looks = [e.appearance.hot for e in evidences if e.appearance is not None and e.appearance.hot.colours]
    if looks:
        colours = _ranked(Counter(c for look in looks for c in look.colours))[:3]
        textures = _ranked(Counter(look.texture for look in looks))[:2]
        data["colours"], data["textures"] = dict(colours), dict(textures)
        j = len(looks)
        lines["look"] = (
            f"Colours of the hot regions: {_counts(colours, j)}; their texture: {_counts(textures, j)}."
        )

    # What hiding the hot region, or keeping only it, does to the prediction.
    effects = [e.counterfactual for e in evidences if e.counterfactual is not None]
    effects = [cf for cf in effects if cf.hot_area > 0]  # an empty map has no hot region to hide
    if effects:
        c = len(effects)
        changed = Counter(cf.hidden_prediction for cf in effects if cf.hidden_prediction != pred)
        n_changed = sum(changed.values())
        dropped = sum(cf.drop > BARELY for cf in effects)
        before = float(np.mean([cf.original[pred] for cf in effects]))
        after = float(np.mean([cf.hidden[pred] for cf in effects]))
        kept = Counter(cf.kept_prediction for cf in effects)
        mean = "" if c == 1 else " on average"
        average = (
            f"stays at {before:.0%}{mean}" if f"{before:.0%}" == f"{after:.0%}"
            else f"goes from {before:.0%} to {after:.0%}{mean}"
        )  # fmt: skip
        to = f" (it becomes {_counts(_ranked(changed, names), c)})" if changed else ""
        lines["hiding"] = (
            f"Hiding the hot region changes the prediction {_in(n_changed, c)}{to} and drops {pred} by more "
            f"than {round(BARELY * 100)} points {_in(dropped, c, noun=False)}; {pred} {average}."
        )
        others = [(n, m) for n, m in _ranked(kept, names) if n != pred]
        turns = f"; it becomes {_counts(others, c)}" if others else ""
        lines["keeping"] = (
            f"Keeping only the hot region keeps the prediction {pred} {_in(kept.get(pred, 0), c)}{turns}."
        )
        classes += list(changed) + [n for n, _ in others]
        data["hiding"] = {"photos": c, "changed": n_changed, "changed_to": dict(changed), "dropped": dropped,
                          "mean_before": before, "mean_after": after, "kept": kept.get(pred, 0),
                          "kept_as": dict(kept)}  # fmt: skip

    # The nearest training photos.
    near = [e for e in evidences if e.neighbours]
    if near:
        j = len(near)
        majority = Counter(Counter(n.label for n in e.neighbours).most_common(1)[0][0] for e in near)
        labels = Counter(n.label for e in near for n in e.neighbours)
        total = sum(labels.values())
        role = {pred: " (the wrong prediction)", true: " (the true class)"}
        most = ", ".join(
            f"{label}{role.get(label, '')} {_in(n, j, prep='for')}"
            for label, n in _ranked(majority, [pred, true, *names])
        )
        shares = ", ".join(
            f"{n / total:.0%} are {label}" for label, n in _ranked(labels, [pred, true, *names])
        )
        lines["neighbours"] = f"Nearest training photos: most of them are {most}; of all {total}, {shares}."
        classes += list(labels)
        data["neighbours"] = {"photos": j, "majority": dict(majority), "agree": majority.get(pred, 0),
                              "labels": dict(labels)}  # fmt: skip

    # The trust check of the maps.
    trusts = [e.trust[method] for e in evidences if method in e.trust]
    if trusts:
        j, good = len(trusts), sum(t.informative for t in trusts)
        verdict = (
            ("its hot regions are informative" if 2 * good > j
             else "only half of its maps are informative, so rely on the hot regions above with care"
             if 2 * good == j
             else "most of its maps do no better than random, so do not rely on the hot regions above")
            if j > 1 else ("its hot region is informative" if good
                           else "it does no better than random, so do not rely on the hot region above")
        )  # fmt: skip
        lines["trust"] = f"{name} beats a random map {_in(good, j)} ({good / j:.0%}): {verdict}."
        data["trust"] = {"photos": j, "informative": good}

    data["keys"] = list(lines)
    return Finding(
        PROBE,
        {"true": true, "predicted": pred, "count": count, "examined": k, "method": method},
        lines=list(lines.values()),
        classes=list(dict.fromkeys(classes)),
        regions=regions,
        data=data,
    )


# ------------------------------------------------------------------------------------------ the template
_TEXTURE = {"strand-like edges": "with strand-like edges", "smooth surface": "with a smooth surface"}


def group_template(evidence: Evidence, max_words: int = MAX_WORDS) -> str:
    """2-4 sentences written from a group's evidence (`group_evidence`) alone: how many photos of which
    class were taken for which, with what mean confidence; where their heat most often is and what it
    looks like (with a warning when most maps do not beat random); what hiding it did; what the nearest
    training photos are. The last two are left out when they would pass `max_words` or repeat a phrase.
    Passes `check_paragraph(text, evidence, max_words)` (the gate, and more)."""
    finding = next(f for f in reversed(evidence.findings) if f.probe == PROBE)
    data, numbers = finding.data, evidence.finding_lines(finding)
    line = dict(zip(data["keys"], numbers, strict=True))
    pred, true, k = evidence.predicted, evidence.true_label, data["examined"]
    count, conf = data["count"], f"{evidence.confidence:.0%}"
    method = method_name(data["method"])
    one = k == 1  # the evidence of a single photo: "its", not "their"
    if count == 1:
        first = f"The classifier took this {true} photo for {pred}, with {conf} confidence [1]."
    elif one:
        first = f"The classifier took {count} {true} photos for {pred}; the one examined has {conf} "
        first += "confidence [1]."
    else:
        first = f"The classifier took {count} {true} photos for {pred}, with {conf} mean confidence [1]."
    shared = data["shared_regions"]
    facts = evidence.facts[data["method"]]
    if shared:
        where = " and ".join(shared[:2])
        heat = f"Its heat is in the {where}" if one else f"Their heat is most often in the {where}"
        heat += f" [2, {line['hot']}]"
    elif facts.area_above_half > 0:
        heat = f"No region is hot in half of them or more; the mean {method} map peaks in the "
        heat += f"{facts.peak_region} [2]"
    else:
        heat = f"{'Its' if one else 'Their'} {method} {'map is' if one else 'maps are'} empty, so no region "
        heat += f"stands out [{line['hot']}]"
    if "look" in line and (shared or facts.area_above_half > 0):
        colours = " and ".join(list(data["colours"])[:2])
        texture = next(iter(data["textures"]))
        heat += f", which looks {colours} {_TEXTURE.get(texture, f'with {texture} texture')} [{line['look']}]"
    trust = data.get("trust")
    if trust is not None and 2 * trust["informative"] < trust["photos"]:
        good, of = trust["informative"], trust["photos"]
        few = "does not beat a random map" if one else "beats a random map " + (
            f"in only {good} of {of} photos" if good else f"in none of the {of}"
        )  # fmt: skip
        heat += f", but {method} {few}, so do not rely on it [{line['trust']}]"
    out = [first, heat + "."]
    extras = []
    hiding = data.get("hiding")
    if hiding is not None:
        cite, c = f"[{line['hiding']}]", hiding["photos"]
        if hiding["dropped"] == 0 and hiding["changed"] == 0:
            anywhere = "" if c == 1 else " in any of them"
            extras.append(
                f"Hiding the hot region barely changes {pred}{anywhere}, so that region alone does not "
                f"decide {cite}."
            )
        elif c == 1:
            new = next(iter(hiding["changed_to"]), None)
            if new is not None:
                extras.append(f"Hiding the hot region turns the prediction into {new} {cite}.")
            else:
                extras.append(
                    f"Hiding the hot region drops {pred} by more than {round(BARELY * 100)} points, but the "
                    f"prediction stays {pred} {cite}."
                )
        else:
            extras.append(
                f"Hiding the hot region drops {pred} by more than {round(BARELY * 100)} points "
                f"{_in(hiding['dropped'], c)} and changes the prediction "
                f"{_in(hiding['changed'], c, noun=False)} {cite}."
            )
    near = data.get("neighbours")
    if near is not None:
        j, agree, against = near["photos"], near["agree"], near["majority"].get(true, 0)
        cite = f"[{line['neighbours']}]"
        label, n, support = (
            (pred, agree, "support") if agree >= against else (true, against, "do not support")
        )
        whose = "Most of its nearest training photos" if j == 1 else f"{_in(n, j, prep='For')} most nearest "
        whose += "" if j == 1 else "training photos"
        extras.append(f"{whose} are {label}, so they {support} the wrong prediction {cite}.")
    for extra in extras:  # each only if the words fit and the whole still passes (no repeated phrase)
        longer = " ".join([*out, extra])
        if len(words(longer)) <= max_words and check_paragraph(longer, evidence, max_words).passed:
            out.append(extra)
    text = " ".join(out)
    verdict = check_paragraph(text, evidence, max_words)
    if not verdict.passed:  # not expected: tests/test_mistakes.py checks many groups
        log.warning("mistake groups: the group template failed the gate (%s)", "; ".join(verdict.reasons))
    return text


# ------------------------------------------------------------------------------------------ the paragraph
def group_messages(
    evidence: Evidence, system: str = SYSTEM, question: str = QUESTION, explain: str = EXPLAIN
) -> list[Message]:
    """System and user message asking what a group's photos have in common. The templates take the fields
    of `noodlenext.llm.prompt.evidence_fields` and `count` (the group's size); `explain` also `question`."""
    values = evidence_fields(evidence)
    finding = next(f for f in reversed(evidence.findings) if f.probe == PROBE)
    values["count"] = str(finding.data.get("count", ""))
    values["question"] = render(question, values, "callbacks.mistakes.question")
    return [
        {"role": "system", "content": render(system, values, "callbacks.mistakes.system")},
        {"role": "user", "content": render(explain, values, "callbacks.mistakes.explain")},
    ]


# A paragraph says what the photos share; a small model tends to copy the numbered facts back instead
# (seen with SmolLM2: "1. The classifier predicted udon with 58% confidence; ..."), which the gate lets by.
_LIST_ITEM = re.compile(r"(?m)^\s*(?:\d+[.)]|[-*\u2022])\s")
COPIED_WORDS = 12  # this many words in a row from one evidence line are a copy, not a summary


def check_paragraph(text: str, evidence: Evidence, max_words: int = MAX_WORDS) -> GroundingVerdict:
    """The grounding gate (`check_explanation`), and two checks of its own: the paragraph is not a list
    (no line starts "1." or "-") and copies no COPIED_WORDS words in a row from an evidence line (but the
    first, the verdict, which a paragraph may restate)."""
    verdict = check_explanation(text, evidence, max_words)
    reasons = list(verdict.reasons)
    if _LIST_ITEM.search(text):
        reasons.append("is a list; write one paragraph saying what the photos share")
    said = words(text)
    grams = {tuple(said[i : i + COPIED_WORDS]) for i in range(len(said) - COPIED_WORDS + 1)}
    for n, line in enumerate(evidence.lines()[1:], 2):
        ws = words(line.split(". ", 1)[1])
        if any(tuple(ws[i : i + COPIED_WORDS]) in grams for i in range(len(ws) - COPIED_WORDS + 1)):
            reasons.append(f"copies fact [{n}] word for word instead of saying what the photos share")
            break
    return GroundingVerdict(not reasons, reasons)


def gated_paragraphs(
    backend: Backend,
    conversations: Sequence[list[Message]],
    evidences: Sequence[Evidence],
    max_words: int = MAX_WORDS,
    feedback: str = FEEDBACK,
    **options: Any,
) -> list[GroundedText]:
    """`grounding.grounded_batch` for group paragraphs: all first drafts in one `generate` call, the
    retries of the rejected ones (told why) in a second, `check_paragraph` as the gate and
    `group_template` as the fallback."""
    first = [t.strip() for t in backend.generate(list(conversations), **options)]
    verdicts = [check_paragraph(t, e, max_words) for t, e in zip(first, evidences, strict=True)]
    results: list[GroundedText | None] = [
        GroundedText(t, "llm", [v]) if v.passed else None for t, v in zip(first, verdicts, strict=True)
    ]
    todo = [i for i, r in enumerate(results) if r is None]
    retries = [
        retry_conversation(list(conversations[i]), first[i], feedback_message(verdicts[i], feedback))
        for i in todo
    ]
    second = [t.strip() for t in backend.generate(retries, **options)] if retries else []
    for i, text in zip(todo, second, strict=True):
        verdict = check_paragraph(text, evidences[i], max_words)
        if verdict.passed:
            results[i] = GroundedText(text, "llm_retry", [verdicts[i], verdict], [first[i]])
        else:
            fallback = group_template(evidences[i], max_words)
            results[i] = GroundedText(fallback, "template", [verdicts[i], verdict], [first[i], text])
    return [r for r in results if r is not None]


def explain_groups(
    groups: Sequence[MistakeGroup],
    llm: Mapping[str, Any] | Any,
    *,
    system: str = SYSTEM,
    question: str = QUESTION,
    explain: str = EXPLAIN,
    max_words: int = MAX_WORDS,
    feedback: str = FEEDBACK,
) -> None:
    """One gated paragraph per group with evidence (step llm): the model's (`llm`, a conf/llm config;
    llm=none: none), its retry, or `group_template`'s (`gated_paragraphs`); when the model cannot load or
    answer, the template's and the error, for every group."""
    todo = [g for g in groups if g.evidence is not None]
    backend = None
    try:
        for group in todo:
            group.messages = group_messages(group.evidence, system, question, explain)
        backend = load_backend(llm) if todo else None
        if backend is not None:
            results = gated_paragraphs(
                backend, [g.messages for g in todo], [g.evidence for g in todo], max_words, feedback,
                **generation_options(llm),
            )  # fmt: skip
            for group, result in zip(todo, results, strict=True):
                group.paragraph = result
    except Exception as err:  # noqa: BLE001 - the run's results matter more than its paragraphs
        name = llm.get("name") if llm is not None else None
        log.error("mistake groups: the language model failed (llm=%s): %s: %s", name, type(err).__name__, err)
        for group in todo:
            group.errors.append(step_error("llm", err))
            group.paragraph = None
    finally:
        if backend is not None:
            try:
                backend.close()
            except Exception:  # noqa: BLE001
                log.exception("mistake groups: closing the language model failed")
    for group in todo:
        if group.paragraph is None:
            try:
                group.paragraph = GroundedText(group_template(group.evidence, max_words), "template")
            except Exception as err:  # noqa: BLE001
                group.fail("llm", err)


# ------------------------------------------------------------------------------------------ the outputs
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


def _link(path: str | None, start: Path) -> str:
    if path is None:
        return ""
    try:
        return Path(os.path.relpath(path, start)).as_posix()
    except ValueError:  # another drive (Windows)
        return Path(path).as_posix()


def _error_text(error: Mapping[str, str]) -> str:
    return f"{error['step']} failed: {error['message']}"


def report_markdown(
    groups: Sequence[MistakeGroup], run_dir: Path, n_samples: int, n_mistakes: int, n_pairs: int,
    llm_name: str | None, method: str, errors: Sequence[Mapping[str, str]] = (),
) -> str:  # fmt: skip
    """mistakes.md: a summary line, then per group its heading, evidence lines, paragraph (with whose
    words it is and what the gate said), errors and thumbnails linked to the photos (paths relative to
    `run_dir`)."""
    out = ["# What the mistakes have in common", ""]
    shown = f"the {len(groups)} largest below" if len(groups) < n_pairs else "each below"
    out.append(
        f"{n_mistakes} of {n_samples} test photos are misclassified, in {_plural(n_pairs, 'confusion pair')} "
        f"(true → predicted); {shown}, from the evidence of its mistakes with the largest loss "
        f"({method_name(method)} maps). Paragraphs: llm={llm_name or 'none'}, checked by the grounding gate."
    )
    for error in errors:
        out += ["", f"> **Error** — {_error_text(error)}"]
    if not groups and not errors:
        out += ["", "No test photo is misclassified."]
    for group in groups:
        out += ["", f"## {group.title}"]
        k, n = len(group.examined), group.count
        if group.evidence is not None:
            of = f"{k} of the {n} photos, those with the largest loss"
            if k == n:
                of = "the photo" if n == 1 else "both photos" if n == 2 else f"all {n} photos"
            out += ["", f"Evidence of {of}:", "", *group.evidence.lines()]
        if group.paragraph is not None:
            out += ["", *group.paragraph.for_reader().split("\n")]
        for error in group.errors + [p.error for p in group.photos if p.error is not None]:
            out += ["", f"> **Error** — {_error_text(error)}"]
        thumbs = []
        for photo in group.photos:
            name = Path(photo.file).name if photo.file else f"sample {photo.sample.index}"
            if photo.thumbnail:
                thumbs.append(f"[![{name}]({_link(photo.thumbnail, run_dir)})]({_link(photo.file, run_dir)})")
            elif photo.file:
                thumbs.append(f"[{name}]({_link(photo.file, run_dir)})")
        if group.mean_map:
            thumbs.insert(0, f"![mean map]({_link(group.mean_map, run_dir)})")
        if thumbs:
            out += ["", " ".join(thumbs)]
    return "\n".join(out) + "\n"


def report_html(groups: Sequence[MistakeGroup], markdown_head: str) -> str:
    """The report's text as a small HTML page (for wandb.Html): headings, evidence lines, paragraphs."""
    e = html.escape
    parts = [f"<h2>What the mistakes have in common</h2><p>{e(markdown_head)}</p>"]
    for group in groups:
        parts.append(f"<h3>{e(group.title)}</h3>")
        if group.evidence is not None:
            items = "".join(f"<li>{e(line.split('. ', 1)[1])}</li>" for line in group.evidence.lines())
            parts.append(f"<ol>{items}</ol>")
        if group.paragraph is not None:
            text, _, mark = group.paragraph.for_reader().partition("\n\n")
            parts.append(f"<p>{e(text)}</p><p><i>{e(mark)}</i></p>")
        for error in group.errors + [p.error for p in group.photos if p.error is not None]:
            parts.append(f"<p><b>Error</b>: {e(_error_text(error))}</p>")
    return "\n".join(parts)


def log_wandb(
    logger: WandbLogger,
    groups: Sequence[MistakeGroup],
    key: str,
    head: str,
    errors: Sequence[Mapping[str, str]] = (),
) -> None:
    """The W&B table `<key>` (one row per group: pair, counts, mean confidence, shared hot regions,
    thumbnails, mean map, evidence, paragraph, whose words, the gate, errors) and the page `<key>_report`."""
    import wandb

    columns = ["pair", "true", "predicted", "count", "examined", "mean_confidence", "hot_regions",
               "examples", "mean_map", "evidence", "paragraph", "source", "grounding", "error"]  # fmt: skip
    table = wandb.Table(columns=columns)
    for group in groups:
        finding = group.finding
        thumbs = [Image.open(p.thumbnail) for p in group.examined if p.thumbnail]
        sheet = None
        if thumbs:
            sheet = Image.new("RGB", (sum(t.width for t in thumbs), max(t.height for t in thumbs)))
            x = 0
            for t in thumbs:
                sheet.paste(t, (x, 0))
                x += t.width
        result = group.paragraph
        gate = "; ".join(
            f"draft {i + 1}: {'passed' if v.passed else 'rejected: ' + '; '.join(v.reasons)}"
            for i, v in enumerate(result.verdicts)
        ) if result is not None else ""  # fmt: skip
        errs = group.errors + [p.error for p in group.photos if p.error is not None]
        table.add_data(
            f"{group.true} → {group.predicted}", group.true, group.predicted, group.count,
            len(group.examined), group.evidence.confidence if group.evidence is not None else None,
            ", ".join(finding.data["shared_regions"]) if finding is not None else "",
            wandb.Image(sheet) if sheet is not None else None,
            wandb.Image(group.mean_map) if group.mean_map else None,
            "\n".join(group.evidence.lines()) if group.evidence is not None else "",
            result.text if result is not None else None, result.source if result is not None else "none",
            gate or "no model draft", "; ".join(_error_text(x) for x in [*errors, *errs]),
        )  # fmt: skip
    if not groups and errors:
        table.add_data(*[None] * 13, "; ".join(_error_text(x) for x in errors))
    logger.experiment.log({key: table, f"{key}_report": wandb.Html(report_html(groups, head))})


# ------------------------------------------------------------------------------------------ the callback
class MistakeGroups(SampleCollector):
    """At test end: the test mistakes grouped by confusion pair (true -> predicted), what each group's
    evidence shares, and one gated paragraph per group (see the module docstring).

    llm: the run's `llm` config (llm=none: template paragraphs only); prompt: the run's `prompt` config
    (its `retry` and `max_words`); methods: the heatmap methods whose first is summarised (default
    gradcam, cheap; scorecam costs one forward pass per channel per photo); max_groups, max_per_group:
    how many pairs, and how many photos of each, are examined; num_neighbours: nearest training photos
    per photo (0: none; a HeatmapGallery's index is reused when it ran); system, question: the templates
    of the request (fields: those of `evidence_fields` and `count`).
    """

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
        system: str = SYSTEM,
        question: str = QUESTION,
    ) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.llm, self.prompt = llm, prompt if prompt is not None else {}
        self.settings = HeatmapSettings.of(settings)  # _recursive_ is off: a config arrives
        self.methods = parse_methods(list(methods) if not isinstance(methods, str) else methods)
        for option, value in (("max_groups", max_groups), ("max_per_group", max_per_group),
                              ("num_neighbours", num_neighbours)):  # fmt: skip
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"callbacks.mistakes.{option}={value!r}: use a whole number >= 0")
        self.max_groups, self.max_per_group, self.num_neighbours = max_groups, max_per_group, num_neighbours
        self.system, self.question = system, question
        self.groups: list[MistakeGroup] = []  # the last test's, for whoever wants them
        self._failure: dict[str, str] | None = None
        self._index: FeatureIndex | None = None

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._failure = None
        try:
            super().on_test_epoch_start(trainer, pl_module)
        except Exception as err:  # noqa: BLE001 - the run's results matter more than this report
            self._fail_all("collect", err)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        if self._failure is None:
            try:
                super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
            except Exception as err:  # noqa: BLE001
                self._fail_all("collect", err)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        try:  # gathers on every rank (under DDP), then renders on rank 0
            super().on_test_epoch_end(trainer, pl_module)
        except Exception:  # noqa: BLE001 - a last resort: each step has its own guard
            log.exception("mistake groups failed; the run goes on without them")
        if self._failure is not None and trainer.is_global_zero:
            self._report(trainer, [], 0, 0, 0, [self._failure])

    def _fail_all(self, step: str, err: BaseException) -> None:
        self._failure = step_error(step, err)
        log.error("mistake groups: %s failed: %s", step, self._failure["message"])

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
                groups, dataset, pl_module, names, methods=self.methods, settings=self.settings, index=index,
                num_neighbours=self.num_neighbours,
            )  # fmt: skip
            step = "images"
            save_images(groups, self.output_dir / "mistakes")
            step = "llm"
            explain_groups(
                groups, self.llm, system=self.system, question=self.question,
                explain=str(self.prompt.get("evidence_explain", EXPLAIN)),
                max_words=int(self.prompt.get("max_words", MAX_WORDS)),
                feedback=str(self.prompt.get("retry", FEEDBACK)),
            )  # fmt: skip
        except Exception as err:  # noqa: BLE001
            errors.append(step_error(step, err))
            log.exception("mistake groups: %s failed", step)
        self.groups = groups
        self._report(trainer, groups, len(samples), n_mistakes, n_pairs, errors, time.monotonic() - start)
        sources = Counter(g.paragraph.source for g in groups if g.paragraph is not None)
        log.info("mistake groups: %d of %d confusion pairs in %s in %.1f s (paragraphs: %s)", len(groups),
                 n_pairs, self.output_dir / "mistakes.md", time.monotonic() - start,
                 dict(sources) or "none")  # fmt: skip

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
        self, trainer: Trainer, groups: list[MistakeGroup], n_samples: int, n_mistakes: int, n_pairs: int,
        errors: list[dict[str, str]], seconds: float | None = None,
    ) -> None:  # fmt: skip
        """mistakes.md, mistakes.json and the W&B table (steps write and wandb)."""
        llm_name = self.llm.get("name") if self.llm is not None else None
        method = primary_method(self.methods)
        markdown = ""
        try:
            markdown = report_markdown(groups, self.output_dir, n_samples, n_mistakes, n_pairs, llm_name,
                                       method, errors)  # fmt: skip
            write_text_atomic(self.output_dir / "mistakes.md", markdown)
            write_json_atomic(
                self.output_dir / "mistakes.json",
                {"samples": n_samples, "mistakes": n_mistakes, "pairs": n_pairs, "llm": llm_name,
                 "method": method, "seconds": seconds, "errors": errors,
                 "groups": [g.to_dict() for g in groups]},
            )  # fmt: skip
        except Exception:  # noqa: BLE001
            log.exception("mistake groups: writing %s failed", self.output_dir / "mistakes.md")
        try:
            head = markdown.split("\n")[2] if markdown else ""
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    log_wandb(logger, groups, "test/mistakes", head, errors)
        except Exception:  # noqa: BLE001
            log.exception("mistake groups: logging the W&B table failed (mistakes.md has them)")

"""Tests the classifier runs on demand, to answer a follow-up question about one photo.

Each probe reruns the model (or its maps) and states the result as a `Finding`: plain sentences that join
the photo's evidence lines, plus the classes and regions the result involves, so the grounding gate checks
an answer to "why not udon?" against what the model did, not against what a language model guesses.

- `why_not(other)`: the contrastive map of the prediction over `other`, and the model rerun with the
  region that favours the prediction most hidden (the mean colour, as every evidence test hides);
- `change_mind()`: the hottest share of the photo (by the primary heatmap) hidden in growing steps until
  the prediction changes, and the runner-up's distance;
- `which_part()`: each ninth of the photo hidden in turn (occlusion), the parts that move the prediction;
- `looks_like()`: colour, brightness and texture of the hot region against the rest;
- `how_sure()`: the probabilities, the margin, and the prediction on the mirrored photo;
- `similar()`: the nearest training photos in the classifier's feature space.

`PhotoProbe(...).run(name, **arguments)` runs one by name (what a router or a model's tool call picks);
`PROBES` describes each, with its arguments, for a language model's function calling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from noodlenext.explain.appearance import appearance
from noodlenext.explain.base import eval_mode
from noodlenext.explain.counterfactuals import HIDE, contrastive_maps
from noodlenext.explain.evidence import BARELY, HOT_SHARE, HOT_THRESHOLD, Evidence, Finding, look_words
from noodlenext.explain.facts import REGIONS, heatmap_facts
from noodlenext.explain.faithfulness import removed
from noodlenext.explain.layers import unwrap
from noodlenext.explain.neighbours import FeatureIndex
from noodlenext.explain.overlays import overlay
from noodlenext.explain.settings import HeatmapSettings

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# change_mind hides the hottest pixels in these shares of the image, smallest first.
CHANGE_STEPS = (0.05, 0.1, 0.2, 0.3, 0.5)


@dataclass(frozen=True)
class ProbeSpec:
    """What a probe answers, for a model's function calling: name, description, argument schema."""

    name: str
    description: str
    parameters: dict[str, Any]


PROBES: dict[str, ProbeSpec] = {
    spec.name: spec
    for spec in (
        ProbeSpec(
            "why_not",
            "Why the classifier chose its prediction and not another class: where the evidence for the "
            "prediction over that class lies, and what hiding it does.",
            {
                "type": "object",
                "properties": {"other": {"type": "string", "description": "the other class, by name"}},
                "required": ["other"],
            },
        ),
        ProbeSpec(
            "change_mind",
            "What would change the classifier's mind: how much of the hottest part of the photo must be "
            "hidden before the prediction changes, and how far behind the runner-up is.",
            {"type": "object", "properties": {}},
        ),
        ProbeSpec(
            "which_part",
            "Which part of the photo mattered: each ninth of the photo hidden in turn, and how much the "
            "predicted class's probability falls.",
            {"type": "object", "properties": {}},
        ),
        ProbeSpec(
            "looks_like",
            "What the part of the photo the classifier looked at looks like: colours, brightness, texture.",
            {"type": "object", "properties": {}},
        ),
        ProbeSpec(
            "how_sure",
            "How sure the classifier is: its probabilities, the margin to the runner-up, and whether the "
            "mirrored photo gets the same answer.",
            {"type": "object", "properties": {}},
        ),
        ProbeSpec(
            "similar",
            "Which training photos look most alike to the classifier, and their labels.",
            {"type": "object", "properties": {}},
        ),
    )
}


@dataclass
class ProbeResult:
    """A probe's finding and, when it has one, the picture to show beside the words (RGB, PIL)."""

    finding: Finding
    image: Image.Image | None = None
    caption: str = ""


class PhotoProbe:
    """The probes for one photo the classifier has already explained.

    Args:
        model: the classifier (a NoodleClassifier or timm model), on its device.
        image: (1, 3, H, W) or (3, H, W), normalised as the model takes it.
        photo: the same photo as PIL RGB at the model's input size (what overlays are drawn on).
        evidence: the photo's Evidence (prediction, probabilities, classes, true label).
        cam: the primary heatmap (H, W) of the predicted class (ScoreCAM's when there is one).
        settings: the shared heatmap settings (the contrastive map's layer).
        index: the training photos' features, for `similar`; None when the run saved none.
    """

    def __init__(
        self,
        model: nn.Module,
        image: Tensor,
        photo: Image.Image,
        evidence: Evidence,
        cam: np.ndarray,
        settings: HeatmapSettings | None = None,
        index: FeatureIndex | None = None,
    ) -> None:
        self.model = model
        self.net = unwrap(model)
        param = next(self.net.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        self.image = (image if image.dim() == 4 else image[None]).to(self.device, torch.float32)
        self.photo = photo.convert("RGB")
        self.evidence = evidence
        self.cam = np.asarray(cam, dtype=np.float32)
        self.settings = HeatmapSettings.of(settings)
        self.index = index
        self.names = list(evidence.class_names)
        self.predicted = evidence.predicted
        hparams = getattr(model, "hparams", None) or {}
        self.mean = list(hparams.get("mean", IMAGENET_MEAN))  # to show an edited input as a picture
        self.std = list(hparams.get("std", IMAGENET_STD))
        self._runs: dict[str, Callable[..., ProbeResult]] = {
            "why_not": self.why_not,
            "change_mind": self.change_mind,
            "which_part": self.which_part,
            "looks_like": self.looks_like,
            "how_sure": self.how_sure,
            "similar": self.similar,
        }

    # ------------------------------------------------------------------------------------ running
    def run(self, probe: str, **arguments: Any) -> ProbeResult:
        """Run the probe named `probe` with `arguments` (as a tool call names them)."""
        if probe not in self._runs:
            raise ValueError(f"no probe {probe!r}; the probes are {', '.join(PROBES)}")
        expected = set(PROBES[probe].parameters.get("properties", {}))
        unknown = set(arguments) - expected
        if unknown:
            raise ValueError(
                f"probe {probe!r} takes {sorted(expected) or 'no arguments'}, not {sorted(unknown)}"
            )
        return self._runs[probe](**arguments)

    def _probabilities(self, images: Tensor) -> np.ndarray:
        # On the evidence's scale: a NoodleClassifier's temperature (calibration=temperature), else 1.
        temperature = float(getattr(self.model, "applied_temperature", 1.0))
        with eval_mode(self.net), torch.inference_mode():
            logits = self.net(images.to(self.device)).float() / temperature
            return logits.softmax(-1).cpu().numpy().astype(np.float64)

    def _named(self, probs: np.ndarray) -> dict[str, float]:
        return {n: float(p) for n, p in zip(self.names, probs, strict=True)}

    def _class(self, name: str) -> str:
        """`name` as one of the class names (case and "_"/"-"/space ignored), or a clear error."""
        flat = lambda s: " ".join(str(s).replace("_", " ").replace("-", " ").lower().split())  # noqa: E731
        for n in self.names:
            if flat(n) == flat(name) or flat(n) + "s" == flat(name) or flat(n) + "es" == flat(name):
                return n
        raise ValueError(f"{name!r} is not one of the classes: {', '.join(self.names)}")

    # ------------------------------------------------------------------------------------ probes
    def why_not(self, other: str) -> ProbeResult:
        """The evidence for the prediction over `other`, and the model with that evidence hidden."""
        other = self._class(other)
        pred, p = self.predicted, self.evidence.probabilities
        if other == pred:
            line = f"Asked why not {other}: the classifier does predict {pred}, with {p[pred]:.0%}."
            finding = Finding("why_not", {"other": other}, [line], [pred])
            return ProbeResult(finding)
        i, j = self.names.index(pred), self.names.index(other)
        cmap = contrastive_maps(self.model, self.image, [i], [j], self.settings)[0].numpy()
        facts = heatmap_facts(cmap)
        lines = [
            f"Asked why not {other}: the classifier gives {pred} {p[pred]:.0%} and {other} {p[other]:.0%}."
        ]
        if facts.area_above_half == 0.0:
            lines.append(f"Its contrastive map finds no part of the photo that favours {pred} over {other}.")
            finding = Finding(
                "why_not", {"other": other}, lines, [pred, other], [], {"facts": facts.to_dict()}
            )
            return ProbeResult(finding)
        top, share = max(facts.region_shares.items(), key=lambda kv: kv[1])
        regions = sorted(
            {top, facts.peak_region} | {r for r, s in facts.region_shares.items() if s >= HOT_SHARE},
            key=lambda r: -facts.region_shares[r],
        )
        lines.append(
            f"The evidence for {pred} over {other} is strongest in the {top} ({share:.0%} of it); "
            f"its peak is in the {facts.peak_region}."
        )
        hot = torch.from_numpy(cmap >= HOT_THRESHOLD * cmap.max()).to(self.device)[None, None]
        edited = torch.where(hot, removed(self.image, HIDE), self.image)
        after = self._named(self._probabilities(edited)[0])
        new = max(after, key=after.__getitem__)
        outcome = f"the prediction stays {pred}" if new == pred else f"the prediction becomes {new}"
        lines.append(
            f"Hiding that evidence ({float(hot.float().mean()):.0%} of the image) moves {other} from "
            f"{p[other]:.0%} to {after[other]:.0%} and {pred} from {p[pred]:.0%} to {after[pred]:.0%}; "
            f"{outcome}."
        )
        finding = Finding(
            "why_not", {"other": other}, lines, [pred, other, new], regions,
            {"facts": facts.to_dict(), "hidden": after},
        )  # fmt: skip
        return ProbeResult(finding, overlay(self.photo, cmap), f"evidence for {pred} over {other}")

    def change_mind(self) -> ProbeResult:
        """Hide the hottest pixels (by the primary map) in growing shares until the prediction changes."""
        pred, p = self.predicted, self.evidence.probabilities
        order = np.argsort(-self.cam.ravel(), kind="stable")
        h, w = self.cam.shape
        soft = removed(self.image, HIDE)
        edited = []
        for share in CHANGE_STEPS:
            mask = np.zeros(h * w, dtype=bool)
            mask[order[: max(1, round(share * h * w))]] = True
            hot = torch.from_numpy(mask.reshape(h, w)).to(self.device)[None, None]
            edited.append(torch.where(hot, soft, self.image))
        probs = self._probabilities(torch.cat(edited))
        runner = max((n for n in self.names if n != pred), key=p.__getitem__)
        lines, classes = [], [pred, runner]
        changed = next((k for k, row in enumerate(probs) if self.names[int(row.argmax())] != pred), None)
        steps = [
            {"share": s, "probabilities": self._named(row)}
            for s, row in zip(CHANGE_STEPS, probs, strict=True)
        ]
        if changed is None:
            last = self._named(probs[-1])
            lines.append(
                f"Hiding even the hottest {CHANGE_STEPS[-1]:.0%} of the image leaves the prediction "
                f"{pred} ({last[pred]:.0%}): no small part of the photo changes its mind."
            )
        else:
            after = self._named(probs[changed])
            new = max(after, key=after.__getitem__)
            classes.append(new)
            lines.append(
                f"Hiding the hottest {CHANGE_STEPS[changed]:.0%} of the image changes the prediction to "
                f"{new} ({new} {after[new]:.0%}, {pred} {after[pred]:.0%})."
            )
        lines.append(
            f"Without any change the runner-up is {runner} at {p[runner]:.0%}, against {pred} at "
            f"{p[pred]:.0%}."
        )
        trust = self.evidence.trust.get("scorecam") or next(iter(self.evidence.trust.values()), None)
        if trust is not None and not trust.informative:
            lines.append("The heatmap that ordered the hiding does not beat a random map here.")
        finding = Finding("change_mind", {}, lines, classes, [], {"steps": steps})
        shown = edited[changed if changed is not None else -1][0]
        return ProbeResult(finding, _as_picture(shown, self.mean, self.std), "the photo as hidden")

    def which_part(self) -> ProbeResult:
        """Hide each of the 3x3 regions in turn; the ones whose loss moves the prediction most."""
        pred, p = self.predicted, self.evidence.probabilities
        _, _, h, w = self.image.shape
        soft = removed(self.image, HIDE)
        edited = []
        for k in range(9):
            r, c = divmod(k, 3)
            mask = torch.zeros(1, 1, h, w, dtype=torch.bool, device=self.device)
            mask[..., r * h // 3 : (r + 1) * h // 3, c * w // 3 : (c + 1) * w // 3] = True
            edited.append(torch.where(mask, soft, self.image))
        probs = self._probabilities(torch.cat(edited))
        i = self.names.index(pred)
        drops = {REGIONS[k]: float(p[pred] - probs[k, i]) for k in range(9)}
        ranked = sorted(drops, key=lambda r: -drops[r])
        after = {REGIONS[k]: float(probs[k, i]) for k in range(9)}
        new = {REGIONS[k]: self.names[int(probs[k].argmax())] for k in range(9)}
        lines, regions = [], []
        if drops[ranked[0]] < BARELY:
            regions.append(ranked[0])
            lines.append(
                f"Hiding each ninth of the photo in turn moves {pred} by {max(0.0, drops[ranked[0]]):.0%} "
                f"at most (for the {ranked[0]}): no single part decides."
            )
        else:
            first = ranked[0]
            regions.append(first)
            line = (
                f"Hiding each ninth of the photo in turn, the {first} matters most: {pred} falls from "
                f"{p[pred]:.0%} to {after[first]:.0%}"
            )
            second = ranked[1]
            if drops[second] >= BARELY:
                regions.append(second)
                line += f", then the {second} (to {after[second]:.0%})"
            lines.append(line + ".")
            flipped = [r for r in regions if new[r] != pred]
            for r in flipped:
                lines.append(f"With the {r} hidden the prediction becomes {new[r]}.")
        facts = self.evidence.facts.get("scorecam") or next(iter(self.evidence.facts.values()), None)
        if facts is not None and facts.area_above_half > 0:
            top, share = max(facts.region_shares.items(), key=lambda kv: kv[1])
            agree = "the same part" if regions and top == regions[0] else "a different part"
            lines.append(f"The heatmap puts most heat ({share:.0%}) in the {top}, {agree}.")
            regions.append(top)
        classes = [pred, *(new[r] for r in regions if new[r] != pred)]
        data = {"drops": drops, "predictions": new}
        finding = Finding(
            "which_part", {}, lines, list(dict.fromkeys(classes)), list(dict.fromkeys(regions)), data
        )
        grid = np.zeros((3, 3), dtype=np.float32)
        for k in range(9):
            grid.flat[k] = max(0.0, drops[REGIONS[k]])
        cells = np.kron(grid, np.ones((h // 3 + 1, w // 3 + 1), dtype=np.float32))[:h, :w]
        shown = overlay(self.photo, cells / cells.max()) if cells.max() > 0 else None
        return ProbeResult(finding, shown, f"how much hiding each ninth lowers {pred}")

    def looks_like(self) -> ProbeResult:
        """Colours, brightness and texture of the primary map's hot region against the rest."""
        look = appearance(self.photo, self.cam)
        if not look.hot.colours:
            lines = ["The heatmap has no hot region to describe."]
        else:
            lines = [f"The hot region is mostly {look_words(look.hot)}."]
            if look.rest.colours:
                lines.append(f"The rest of the photo is {look_words(look.rest)}.")
        finding = Finding(
            "looks_like", {}, lines, [], [], {"hot": look.hot.__dict__, "rest": look.rest.__dict__}
        )
        return ProbeResult(finding, overlay(self.photo, self.cam), "the hot region")

    def how_sure(self) -> ProbeResult:
        """The probabilities, the margin to the runner-up, and the prediction on the mirrored photo."""
        pred, p = self.predicted, self.evidence.probabilities
        ranked = sorted(self.names, key=lambda n: -p[n])
        listed = ", ".join(f"{n} {p[n]:.0%}" for n in ranked)
        runner = ranked[1] if len(ranked) > 1 else pred
        lines = [f"The classifier gives {listed}; {pred} leads {runner} by {p[pred] - p[runner]:.0%}."]
        mirrored = self._named(self._probabilities(torch.flip(self.image, dims=[-1]))[0])
        flipped = max(mirrored, key=mirrored.__getitem__)
        same = f"it stays {pred}" if flipped == pred else f"it becomes {flipped}"
        lines.append(f"On the mirrored photo {same}, with {pred} at {mirrored[pred]:.0%}.")
        finding = Finding("how_sure", {}, lines, list(dict.fromkeys([*ranked, flipped])), [], {
            "mirrored": mirrored,
        })  # fmt: skip
        return ProbeResult(finding)

    def similar(self) -> ProbeResult:
        """The five nearest training photos in the classifier's feature space."""
        if self.index is None:
            lines = ["No training photos are at hand to compare with (the run saved no features)."]
            return ProbeResult(Finding("similar", {}, lines))
        near = self.index.nearest(self.image, k=5, files=[self.evidence.file])[0]
        if not near:
            return ProbeResult(Finding("similar", {}, ["The training photo index is empty."]))
        counts: dict[str, int] = {}
        for n in near:
            counts[n.label] = counts.get(n.label, 0) + 1
        listed = ", ".join(f"{c} {label}" for label, c in sorted(counts.items(), key=lambda kv: -kv[1]))
        lines = [
            f"Of the {len(near)} training photos most alike to the classifier, {listed} "
            f"(similarity {near[0].similarity:.2f} to {near[-1].similarity:.2f})."
        ]
        truth = self.evidence.true_label
        top = max(counts, key=counts.__getitem__)
        verdict = "agrees with" if top == self.predicted else "disagrees with"
        lines.append(f"Most of them are {top}, which {verdict} the prediction {self.predicted}.")
        if truth is not None and truth != self.predicted:
            lines.append(f"{counts.get(truth, 0)} of them are {truth}, the true class.")
        finding = Finding("similar", {}, lines, list(dict.fromkeys([*counts, self.predicted])), [], {
            "neighbours": [n.__dict__ for n in near],
        })  # fmt: skip
        return ProbeResult(
            finding, _contact_sheet([n.file for n in near], self.photo.size[0]), "nearest photos"
        )


def _as_picture(image: Tensor, mean: list[float], std: list[float]) -> Image.Image:
    """A normalised model input (3, H, W) back as an RGB picture."""
    x = image.detach().float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return Image.fromarray((x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def _contact_sheet(files: list[str], side: int) -> Image.Image | None:
    """The files side by side, each `side` pixels square (files that cannot be read are left out)."""
    tiles = []
    for file in files:
        try:
            with Image.open(file) as img:
                tiles.append(img.convert("RGB").resize((side, side)))
        except (OSError, ValueError):
            continue
    if not tiles:
        return None
    sheet = Image.new("RGB", (side * len(tiles), side), "white")
    for k, tile in enumerate(tiles):
        sheet.paste(tile, (k * side, 0))
    return sheet

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
- `whole_photo()`: the prediction with the whole photo changed (grayscale, a lower resolution, JPEG, a
  tint, a mirror, the border cropped, the surroundings hidden, one colour taken out);
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
from noodlenext.explain.causes import hidden, whole_photo_changes
from noodlenext.explain.claims import Claim, Count, Move, decimal, percent
from noodlenext.explain.counterfactuals import HIDE, contrastive_maps
from noodlenext.explain.evidence import (
    BARELY,
    HOT_THRESHOLD,
    Evidence,
    Finding,
    RegionLook,
    look_licence,
    map_regions,
    primary_method,
    whole_photo_claims,
)
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
            "whole_photo",
            "What changing the whole photo does to the prediction: in grayscale, at a quarter of the "
            "resolution, re-compressed as JPEG, with a warmer or cooler tint, mirrored, with the border "
            "cropped, with the surroundings hidden, with one colour taken out. Finds a shortcut such as a "
            "colour cast, a frame or a lower resolution.",
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
            "whole_photo": self.whole_photo,
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
            same = Claim(
                "why_not_same",
                (pred,),
                quantities=(percent(p[pred], pred),),
                fields={"other": other, "predicted": pred, "p": p[pred]},
            )
            return ProbeResult(Finding("why_not", {"other": other}, [same]))
        i, j = self.names.index(pred), self.names.index(other)
        cmap = contrastive_maps(self.model, self.image, [i], [j], self.settings)[0].numpy()
        facts = heatmap_facts(cmap)
        claims = [
            Claim(
                "why_not_scores",
                (pred, other),
                quantities=(percent(p[pred], pred), percent(p[other], other)),
                fields={"predicted": pred, "other": other, "p": p[pred], "q": p[other]},
            )
        ]
        if facts.area_above_half == 0.0:
            claims.append(
                Claim(
                    "why_not_none",
                    (pred, other),
                    map="contrastive",
                    fields={"predicted": pred, "other": other},
                )
            )
            return ProbeResult(Finding("why_not", {"other": other}, claims, {"facts": facts.to_dict()}))
        top, share = facts.largest_share()
        claims.append(
            Claim(
                "why_not_where",
                (pred, other),
                map_regions(facts),
                peak=facts.peak_region,
                top=top,
                map="contrastive",
                quantities=(percent(share, f"share:{top}"),),
                fields={
                    "predicted": pred,
                    "other": other,
                    "top": top,
                    "share": share,
                    "peak": facts.peak_region,
                },
            )
        )
        hot = torch.from_numpy(cmap >= HOT_THRESHOLD * cmap.max()).to(self.device)[None, None]
        edited = torch.where(hot, removed(self.image, HIDE), self.image)
        after = self._named(self._probabilities(edited)[0])
        new = max(after, key=after.__getitem__)
        area = float(hot.float().mean())
        claims.append(
            Claim(
                "why_not_hidden",
                tuple(dict.fromkeys([pred, other, new])),
                map_regions(facts),
                map="contrastive",
                quantities=(
                    percent(area, "area"),
                    percent(p[other], other),
                    percent(after[other], other),
                    percent(p[pred], pred),
                    percent(after[pred], pred),
                ),
                moves=(Move(other, p[other], after[other]), Move(pred, p[pred], after[pred])),
                becomes=(new,),
                fields={
                    "predicted": pred,
                    "other": other,
                    "area": area,
                    "other_before": p[other],
                    "other_after": after[other],
                    "before": p[pred],
                    "after": after[pred],
                    "becomes": new,
                },
            )
        )
        finding = Finding("why_not", {"other": other}, claims, {"facts": facts.to_dict(), "hidden": after})
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
        claims = []
        changed = next((k for k, row in enumerate(probs) if self.names[int(row.argmax())] != pred), None)
        steps = [
            {"share": s, "probabilities": self._named(row)}
            for s, row in zip(CHANGE_STEPS, probs, strict=True)
        ]
        if changed is None:
            last = self._named(probs[-1])
            share = CHANGE_STEPS[-1]
            claims.append(
                Claim(
                    "change_none",
                    (pred,),
                    quantities=(percent(share, "area"), percent(last[pred], pred)),
                    moves=(Move(pred, p[pred], last[pred]),),
                    becomes=(pred,),
                    fields={"predicted": pred, "share": share, "p": last[pred]},
                )
            )
        else:
            after = self._named(probs[changed])
            new = max(after, key=after.__getitem__)
            share = CHANGE_STEPS[changed]
            claims.append(
                Claim(
                    "change_at",
                    (pred, new),
                    quantities=(percent(share, "area"), percent(after[new], new), percent(after[pred], pred)),
                    moves=(Move(pred, p[pred], after[pred]), Move(new, p[new], after[new])),
                    becomes=(new,),
                    fields={
                        "predicted": pred,
                        "share": share,
                        "becomes": new,
                        "p_new": after[new],
                        "p": after[pred],
                    },
                )
            )
        claims.append(
            Claim(
                "runner_up",
                (runner, pred),
                quantities=(percent(p[runner], runner), percent(p[pred], pred)),
                fields={"runner": runner, "predicted": pred, "q": p[runner], "p": p[pred]},
            )
        )
        trust = self.evidence.trust.get(primary_method(self.evidence.trust)) if self.evidence.trust else None
        if trust is not None and not trust.informative:
            claims.append(Claim("change_untrusted", verdict="uninformative"))
        finding = Finding("change_mind", {}, claims, {"steps": steps})
        shown = edited[changed if changed is not None else -1][0]
        return ProbeResult(finding, _as_picture(shown, self.mean, self.std), "the photo as hidden")

    def which_part(self) -> ProbeResult:
        """Hide each of the 3x3 regions in turn (filled in from its surroundings, as the evidence hides a
        part: `causes.hidden`); the ones whose loss moves the prediction most."""
        pred, p = self.predicted, self.evidence.probabilities
        _, _, h, w = self.image.shape
        ninths = [
            (r * h // 3, c * w // 3, (r + 1) * h // 3, (c + 1) * w // 3)
            for r, c in (divmod(k, 3) for k in range(9))
        ]
        probs = self._probabilities(hidden(self.image[0], ninths)[1:])
        i = self.names.index(pred)
        drops = {REGIONS[k]: float(p[pred] - probs[k, i]) for k in range(9)}
        ranked = sorted(drops, key=lambda r: -drops[r])
        after = {REGIONS[k]: float(probs[k, i]) for k in range(9)}
        new = {REGIONS[k]: self.names[int(probs[k].argmax())] for k in range(9)}
        claims, regions = [], []
        if drops[ranked[0]] < BARELY:
            regions.append(ranked[0])
            most = max(0.0, drops[ranked[0]])
            claims.append(
                Claim(
                    "which_none",
                    (pred,),
                    (ranked[0],),
                    quantities=(percent(most, "drop"),),
                    fields={"predicted": pred, "drop": most, "region": ranked[0]},
                )
            )
        else:
            first, second = ranked[0], ranked[1]
            regions.append(first)
            moves = [Move(pred, p[pred], after[first])]
            numbers = [percent(p[pred], pred), percent(after[first], pred)]
            if drops[second] >= BARELY:
                regions.append(second)
                moves.append(Move(pred, p[pred], after[second]))
                numbers.append(percent(after[second], pred))
            claims.append(
                Claim(
                    "which_part",
                    (pred,),
                    tuple(regions),
                    quantities=tuple(numbers),
                    moves=tuple(moves),
                    fields={
                        "predicted": pred,
                        "first": first,
                        "before": p[pred],
                        "after": after[first],
                        "second": regions[1] if len(regions) > 1 else None,
                        "after_second": after[second] if len(regions) > 1 else None,
                    },
                )
            )
            for r in [r for r in regions if new[r] != pred]:
                claims.append(
                    Claim(
                        "which_flip",
                        (new[r],),
                        (r,),
                        becomes=(new[r],),
                        fields={"region": r, "becomes": new[r]},
                    )
                )
        facts = self.evidence.facts.get(self.evidence.primary) if self.evidence.facts else None
        if facts is not None and facts.area_above_half > 0:
            top, share = facts.largest_share()
            same = bool(regions) and top == regions[0]
            claims.append(
                Claim(
                    "which_heat",
                    (),
                    (top,),
                    top=top,
                    quantities=(percent(share, f"share:{top}"),),
                    verdict="same" if same else "different",
                    fields={"top": top, "share": share},
                )
            )
        data = {"drops": drops, "predictions": new}
        finding = Finding("which_part", {}, claims, data)
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
            claims = [Claim("looks_empty")]
        else:
            regions = tuple(self.evidence.hot_regions(self.evidence.primary or "scorecam"))
            claims = [_look_claim("looks_hot", look.hot, regions)]
            if look.rest.colours:
                claims.append(_look_claim("looks_rest", look.rest, ()))
        finding = Finding("looks_like", {}, claims, {"hot": look.hot.__dict__, "rest": look.rest.__dict__})
        return ProbeResult(finding, overlay(self.photo, self.cam), "the hot region")

    def how_sure(self) -> ProbeResult:
        """The probabilities, the margin to the runner-up, and the prediction on the mirrored photo."""
        pred, p = self.predicted, self.evidence.probabilities
        ranked = sorted(self.names, key=lambda n: -p[n])
        runner = ranked[1] if len(ranked) > 1 else pred
        margin = p[pred] - p[runner]
        claims = [
            Claim(
                "how_sure",
                tuple(ranked),
                quantities=(*(percent(p[n], n) for n in ranked), percent(margin, "margin")),
                fields={
                    "ranked": [[n, p[n]] for n in ranked],
                    "predicted": pred,
                    "runner": runner,
                    "margin": margin,
                },
            )
        ]
        mirrored = self._named(self._probabilities(torch.flip(self.image, dims=[-1]))[0])
        flipped = max(mirrored, key=mirrored.__getitem__)
        claims.append(
            Claim(
                "mirror",
                tuple(dict.fromkeys([pred, flipped])),
                quantities=(percent(mirrored[pred], pred),),
                moves=(Move(pred, p[pred], mirrored[pred]),),
                becomes=(flipped,),
                fields={"predicted": pred, "becomes": flipped, "p": mirrored[pred]},
            )
        )
        finding = Finding("how_sure", {}, claims, {"mirrored": mirrored})
        return ProbeResult(finding)

    def whole_photo(self) -> ProbeResult:
        """The prediction under each change of the whole photo (`explain.causes`): a line for each that
        flips it or moves it by more than 10 points, or one line that none does; the data keeps all."""
        names, truth = self.names, self.evidence.true_label
        (changes,) = whole_photo_changes(
            self.model,
            self.image,
            [names.index(self.predicted)],
            [names.index(truth) if truth in names else None],
            names,
            temperature=float(getattr(self.model, "applied_temperature", 1.0)),
        )
        finding = Finding(
            "whole_photo",
            {},
            whole_photo_claims(changes, limit=2),
            {"changes": [{"change": c.key, "after": c.after, "becomes": c.becomes} for c in changes]},
        )
        return ProbeResult(finding)

    def similar(self) -> ProbeResult:
        """The five nearest training photos in the classifier's feature space."""
        if self.index is None:
            return ProbeResult(Finding("similar", {}, [Claim("similar_none")]))
        near = self.index.nearest(self.image, k=5, files=[self.evidence.file])[0]
        if not near:
            return ProbeResult(Finding("similar", {}, [Claim("similar_empty")]))
        counts: dict[str, int] = {}
        for n in near:
            counts[n.label] = counts.get(n.label, 0) + 1
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])
        k, high, low = len(near), near[0].similarity, near[-1].similarity
        claims = [
            Claim(
                "similar_counts",
                tuple(counts),
                quantities=(decimal(high, 2, "similarity"), decimal(low, 2, "similarity")),
                counts=tuple(Count(c, k, label, "neighbours") for label, c in ranked),
                fields={"k": k, "counts": [[label, c] for label, c in ranked], "high": high, "low": low},
            )
        ]
        truth = self.evidence.true_label
        top = max(counts, key=counts.__getitem__)
        agrees = top == self.predicted
        claims.append(
            Claim(
                "similar_majority",
                tuple(dict.fromkeys([top, self.predicted])),
                counts=(Count(counts[top], k, top, "neighbours"),),
                verdict="agree" if agrees else "disagree",
                fields={"top": top, "predicted": self.predicted},
            )
        )
        if truth is not None and truth != self.predicted:
            n_true = counts.get(truth, 0)
            claims.append(
                Claim(
                    "similar_truth",
                    (truth,),
                    counts=(Count(n_true, k, truth, "neighbours"),),
                    fields={"n": n_true, "truth": truth},
                )
            )
        finding = Finding("similar", {}, claims, {"neighbours": [n.__dict__ for n in near]})
        return ProbeResult(
            finding, _contact_sheet([n.file for n in near], self.photo.size[0]), "nearest photos"
        )


def _look_claim(kind: str, look: RegionLook, regions: tuple[str, ...]) -> Claim:
    return Claim(
        kind,
        regions=regions,
        looks=tuple(look_licence(look)),
        fields={"colours": look.colours, "brightness": look.brightness, "texture": look.texture},
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

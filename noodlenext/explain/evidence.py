"""Evidence: what the model itself does with one photo, as plain data every explanation must rest on.

Per explained image: the heatmaps' facts, a contrastive map (why the predicted class and not the other
one), counterfactuals the model runs (the hot region hidden; only the hot region kept), what the hot
region looks like in words, the nearest training photos in the classifier's feature space, and a trust
check of each map against a random map. `Evidence.claims()` states these as typed claims
(`noodlenext.explain.claims`), one per line; `Evidence.lines()` numbers their words
(`noodlenext.explain.wording`), the lines a prompt cites; the grounding gate checks an answer against the
claims.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from noodlenext.explain.claims import Claim, Count, Move, Quantity, decimal, percent
from noodlenext.explain.facts import HeatmapFacts
from noodlenext.explain.tested import TestedFix, tested_claim
from noodlenext.explain.wording import line, tone

# A 3x3 region holding at least this share of a map's heat is hot (a uniform map gives each 1/9 = 0.11).
HOT_SHARE = 0.2
# Heat at least this share of a map's peak is the hot region (the counterfactuals' and appearance's rule).
HOT_THRESHOLD = 0.5
# Hiding the hot region moves the predicted class's probability by less than this: barely a change.
BARELY = 0.05


@dataclass(frozen=True)
class Counterfactual:
    """The classifier rerun on edited copies of the photo (probabilities per class, 0..1).

    hidden: the hot region (heat at least half the map's peak) hidden (filled with the mean colour); kept:
    only the hot region kept, the rest hidden. drop: the predicted class's probability on the photo minus
    with the hot region hidden (positive: the region mattered). hot_area: the share of the image that is
    hot (0..1).
    """

    original: dict[str, float]
    hidden: dict[str, float]
    kept: dict[str, float]
    predicted: str
    drop: float
    hot_area: float

    @property
    def hidden_prediction(self) -> str:
        return max(self.hidden, key=self.hidden.__getitem__)

    @property
    def kept_prediction(self) -> str:
        return max(self.kept, key=self.kept.__getitem__)


@dataclass(frozen=True)
class CausalRegion:
    """The part of the photo whose hiding matters most (`noodlenext.explain.causes.occlusion_scan`): the
    square that moves the prediction most, or the smallest part (an edge strip) that changes it.

    The photo is hidden one part at a time (`box`: top, left, bottom, right as shares of the side; the
    part filled in from its surroundings); region: the 3x3 region word of the square's centre, or the
    strip's name ("bottom strip"). before/after: the predicted class's probability on the photo and
    with the part hidden; becomes: the prediction then; truth_before/truth_after: the true class's
    (None when it is not known). colours: the part's colour names, most first; unusual: those of them
    the true class's training photos rarely show, with the share of those photos' pixels in the same
    colour bins (empty without a training index). heat: the share of the heat of the map `map` inside
    the square (None without a map), to compare the map with the cause.
    places: how many squares were tried; strips: how many edge strips (region "bottom strip" and so on
    when one of them is the part).
    """

    region: str
    box: tuple[float, float, float, float]
    predicted: str
    before: float
    after: float
    becomes: str
    truth: str | None = None
    truth_before: float | None = None
    truth_after: float | None = None
    colours: tuple[str, ...] = ()
    unusual: tuple[tuple[str, float], ...] = ()
    heat: float | None = None
    map: str | None = None
    places: int = 0
    strips: int = 0

    @property
    def regions(self) -> tuple[str, ...]:
        """The 3x3 regions the part covers: the square's centre's, or an edge strip's row or column."""
        return STRIP_REGIONS.get(self.region, (self.region,))

    @property
    def area(self) -> float:
        top, left, bottom, right = self.box
        return (bottom - top) * (right - left)

    @property
    def drop(self) -> float:
        return self.before - self.after

    @property
    def turned_back(self) -> bool:
        """Hiding it makes the prediction the true class."""
        return self.truth is not None and self.becomes == self.truth != self.predicted


@dataclass(frozen=True)
class GlobalChange:
    """The prediction under a change of the whole photo (`noodlenext.explain.causes.WHOLE_PHOTO_CHANGES`:
    grayscale, a quarter of the resolution, JPEG re-compression, a warmer or cooler tint, a mirror, the
    border cropped, the surroundings hidden), or a colour taken out. before/after: the predicted class's
    probability; becomes: the prediction after; truth_after: the true class's probability after (None
    when not known); setting: the change's one number, where it has one (the JPEG quality; the share of
    each side the border crop takes; the share of the photo a removed colour covers); colour: the colour
    taken out (change "remove_colour"); area: the share of the photo's pixels the change touches."""

    change: str
    predicted: str
    before: float
    after: float
    becomes: str
    truth: str | None = None
    truth_after: float | None = None
    setting: float | None = None
    colour: str | None = None
    area: float = 1.0

    @property
    def key(self) -> str:
        """The change and, for a colour removal, its colour: "grayscale", "remove_colour:red"."""
        return f"{self.change}:{self.colour}" if self.colour else self.change

    @property
    def notable(self) -> bool:
        """It flips the prediction or moves it by more than NOTABLE_MOVE."""
        return self.becomes != self.predicted or abs(self.before - self.after) > NOTABLE_MOVE

    @property
    def turned_back(self) -> bool:
        return self.truth is not None and self.becomes == self.truth != self.predicted


# The 3x3 regions of each edge strip the occlusion hides (explain.causes).
STRIP_REGIONS = {
    "top strip": ("upper left", "upper center", "upper right"),
    "bottom strip": ("lower left", "lower center", "lower right"),
    "left strip": ("upper left", "middle left", "lower left"),
    "right strip": ("upper right", "middle right", "lower right"),
}

# The vocabulary words (noodlenext/llm/vocabulary.yaml) the hidden parts are named with.
PART_WORDS = ("square", "squares", "strip", "strips")


# A change of the whole photo is reported when it flips the prediction or moves it by more than this; at
# most MAX_CHANGE_LINES of them, those that matter most.
NOTABLE_MOVE = 0.10
MAX_CHANGE_LINES = 3


@dataclass(frozen=True)
class RegionLook:
    """What a set of pixels looks like: colour names (most common first), brightness and texture.

    brightness: mean luminance 0..1; edge_density: mean gradient magnitude (0..1 scale); texture:
    `strand-like edges` or `smooth surface` (or `mixed`), from the edge density and how aligned the
    edges are; `none` (and no colours) for a region without pixels.
    """

    colours: list[str]
    brightness: float
    edge_density: float
    texture: str


@dataclass(frozen=True)
class Appearance:
    """The hot region against the rest of the photo."""

    hot: RegionLook
    rest: RegionLook


@dataclass(frozen=True)
class Neighbour:
    """A training photo close to this one in the classifier's feature space (cosine similarity -1..1)."""

    file: str
    label: str
    similarity: float


@dataclass(frozen=True)
class MapTrust:
    """Does a heatmap point at what the model uses? Deletion AUC (lower is better) and insertion AUC
    (higher is better) of the map and of a random map on the same image; informative when the map beats
    the random one on both."""

    method: str
    deletion: float
    insertion: float
    random_deletion: float
    random_insertion: float

    @property
    def informative(self) -> bool:
        return self.deletion < self.random_deletion and self.insertion > self.random_insertion


@dataclass(frozen=True)
class Finding:
    """The result of a test the classifier ran on demand to answer a question (`noodlenext.explain.probes`).

    probe: the test's name (`why_not`, `change_mind`, ...); arguments: what it was run with; claims: what
    the result states (they join the evidence's claims, numbered after them); data: the raw numbers, for
    the record. Its lines, classes and regions are its claims'.
    """

    probe: str
    arguments: dict[str, Any]
    claims: list[Claim]
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def lines(self) -> list[str]:
        return [line(c) for c in self.claims]

    @property
    def classes(self) -> list[str]:
        return list(dict.fromkeys(c for claim in self.claims for c in claim.classes))

    @property
    def regions(self) -> list[str]:
        return list(dict.fromkeys(r for claim in self.claims for r in claim.regions))

    def to_dict(self) -> dict[str, Any]:
        return {
            "probe": self.probe,
            "arguments": dict(self.arguments),
            "claims": [c.to_dict() for c in self.claims],
            "data": self.data,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        """Inverse of to_dict; a record saved before claims (its `lines` in words) keeps its lines as
        `legacy` claims, which carry its classes and regions and no numbers."""
        if "claims" in d:
            claims = [Claim.from_dict(c) for c in d["claims"]]
        else:
            classes, regions = tuple(d.get("classes", ())), tuple(d.get("regions", ()))
            claims = [Claim("legacy", classes, regions, fields={"text": t}) for t in d.get("lines", [])]
        return cls(str(d["probe"]), dict(d.get("arguments", {})), claims, dict(d.get("data", {})))


@dataclass(frozen=True)
class LabelQuality:
    """A cross-validation's view of this photo's label (`noodlenext.data.label_issues`): cleanlab's label
    quality score 0..1 (low: the given label is likely wrong) and the class it likely is."""

    score: float
    likely: str


@dataclass
class Evidence:
    """Everything known about one explained photo (or a group of photos); JSON-serialisable through
    to_dict / from_dict.

    contrast_class: the class the contrastive map explains the prediction against (the true class when
    the prediction is wrong, else the runner-up). facts: per heatmap method, the facts of its map of the
    predicted class; contrastive: the facts of the map of (predicted - contrast_class) evidence.
    agreement: Pearson r between the ScoreCAM and GradCAM maps (None without both). label_quality: a
    cross-validation's score of the photo's label, when one scored it. summary: for a group of mistakes,
    the claims of what its photos share (`noodlenext.explain.groups`). findings: the tests run on demand.
    """

    file: str
    class_names: list[str]
    probabilities: dict[str, float]
    predicted: str
    true_label: str | None
    contrast_class: str
    facts: dict[str, HeatmapFacts]
    contrastive: HeatmapFacts | None = None
    counterfactual: Counterfactual | None = None
    appearance: Appearance | None = None
    neighbours: list[Neighbour] = field(default_factory=list)
    trust: dict[str, MapTrust] = field(default_factory=dict)
    agreement: float | None = None
    findings: list[Finding] = field(default_factory=list)  # tests run on demand (the chat), in order
    label_quality: LabelQuality | None = None
    summary: list[Claim] = field(default_factory=list)  # a group's shared evidence
    causal: CausalRegion | None = None  # what hiding one part at a time found
    changes: list[GlobalChange] = field(default_factory=list)  # the whole-photo changes, every one tried
    lead: list[Claim] = field(default_factory=list)  # a group's causes: they come right after the prediction
    tested: list[TestedFix] = field(default_factory=list)  # the run's fixes a retrain tested (improve)

    @property
    def confidence(self) -> float:
        return self.probabilities[self.predicted]

    @property
    def verdict(self) -> str:
        if self.true_label is None:
            return "unknown"
        return "correct" if self.true_label == self.predicted else "wrong"

    @property
    def primary(self) -> str | None:
        """The method whose map the counterfactuals, the appearance and the templates use."""
        return primary_method(self.facts) if self.facts else None

    def hot_regions(self, method: str = "scorecam", min_share: float = HOT_SHARE) -> list[str]:
        """The 3x3 regions this evidence calls hot: the peak's, and any holding at least `min_share` of
        the heat of the map of `method` or of the contrastive map (most heat first)."""
        # An empty map (nothing above half its peak) has no hot region: its neutral "center" is no finding.
        maps = [
            f for f in (self.facts.get(method), self.contrastive) if f is not None and f.area_above_half > 0
        ]
        shares: dict[str, float] = {}
        for facts in maps:
            for region, share in facts.region_shares.items():
                shares[region] = max(shares.get(region, 0.0), share)
        hot = {f.peak_region for f in maps} | {r for r, share in shares.items() if share >= min_share}
        return sorted(hot, key=lambda r: -shares.get(r, 0.0))

    def involved_classes(self) -> list[str]:
        """The classes the evidence involves: those its claims name. An explanation may blame no other."""
        names = [self.predicted, self.true_label, self.contrast_class]
        names += [c for claim in self.claims() for c in claim.classes]
        return [n for n in dict.fromkeys(names) if n is not None]

    # ------------------------------------------------------------------------------ claims and lines
    def claims(self) -> list[Claim]:
        """What the evidence says, one claim per line, in the lines' order: the prediction, each map
        (ScoreCAM first), the contrastive map, hiding and keeping the hot region, its look, the nearest
        training photos, the trust check, the maps' agreement, a group's summary, suggestions, and the
        tests run on demand. What changing the photo does comes first, after the prediction: what hiding
        one part at a time found and the whole-photo changes that matter (`cause_claims`). Evidence that
        is missing has no claim."""
        out = [self._prediction_claim(), *self.cause_claims()]
        out += [self._map_claim(m) for m in self.facts_in_line_order()]
        if self.contrastive is not None:
            out.append(_contrastive_claim(self.contrastive, self.predicted, self.contrast_class))
        cf = self.counterfactual
        if cf is not None and cf.hot_area > 0:  # an empty map has no hot region to hide or keep
            out += self._counterfactual_claims(cf)
        if self.appearance is not None and self.appearance.hot.colours:
            out.append(self._appearance_claim(self.appearance))
        if self.neighbours:
            out.append(self._neighbours_claim())
        if self.trust:
            out.append(self._trust_claim())
        if self.agreement is not None:
            r = self.agreement
            verb = "agree" if r >= 0.5 else "partly agree" if r >= 0.2 else "disagree"
            out.append(Claim("agreement", quantities=(decimal(r, 2, "r"),), verdict=verb, fields={"r": r}))
        out += self.summary
        out += self.advice()
        out += [c for finding in self.findings for c in finding.claims]
        return out

    def cause_claims(self) -> list[Claim]:
        """What made the model decide, as changing the photo shows it: a group's `lead`, or a photo's
        causal region (and what it looks like) and each whole-photo change that flips the prediction or
        moves it by more than NOTABLE_MOVE (the largest first; one claim that none does when none does)."""
        if self.lead:
            return list(self.lead)
        out = []
        if self.causal is not None:
            out.append(causal_claim(self.causal))
            if self.causal.colours:
                out.append(causal_look_claim(self.causal))
        if self.changes:
            out += whole_photo_claims(self.changes)
        return out

    def lines(self) -> list[str]:
        """The claims as short numbered plain-English lines ("1. ..."), the facts a prompt cites.

        Probabilities are percentages; AUCs, similarities and r are decimals. A map that does not beat a
        random map is called uninformative, both in its own line and in the trust line."""
        return [f"{i}. {line(c)}" for i, c in enumerate(self.claims(), 1)]

    def advice(self) -> list[Claim]:
        """The suggestions the evidence supports, each from a fixed source: nearest training photos mostly
        of the (wrongly) predicted class (add true-class photos like this one), a low label quality from a
        cross-validation (check the label), a primary map that does not beat a random map (do not rely on
        it). A group's suggestion (collect photos of a dominant pair) is in its summary."""
        out = []
        truth = self.true_label
        if self.neighbours and self.verdict == "wrong" and truth is not None:
            label, n = Counter(x.label for x in self.neighbours).most_common(1)[0]
            if label == self.predicted and 2 * n > len(self.neighbours):  # most of them: the predicted class
                out.append(
                    Claim(
                        "advice",
                        (truth, self.predicted),
                        advice="add_photos",
                        counts=(Count(n, len(self.neighbours), label, "neighbours"),),
                        fields={"true": truth, "predicted": self.predicted},
                    )
                )
        quality = self.label_quality
        if quality is not None and quality.score < LOW_LABEL_QUALITY:
            classes = tuple(c for c in dict.fromkeys([self.true_label, quality.likely]) if c is not None)
            out.append(
                Claim(
                    "advice",
                    classes,
                    quantities=(decimal(quality.score, 2, "label quality"),),
                    advice="check_label",
                    fields={"score": quality.score, "likely": quality.likely},
                )
            )
        primary = self.primary
        trust = self.trust.get(primary) if primary is not None else None
        if trust is not None and not trust.informative:
            out.append(
                Claim(
                    "advice",
                    map=primary,
                    advice="distrust_map",
                    verdict="uninformative",
                    fields={"method": primary},
                )
            )
        proven = tested_claim(self.tested, [c for c in (self.true_label, self.predicted) if c is not None])
        if proven is not None:
            out.append(proven)
        return out

    def facts_in_line_order(self) -> list[str]:
        """The methods of `facts` in the order of their lines (ScoreCAM first): line [2] is the first's."""
        return sorted(self.facts, key=lambda m: (m != "scorecam", m))

    def map_lines(self) -> dict[int, tuple[str, HeatmapFacts]]:
        """Each map line's number in `lines()`, with the map it describes: (method, facts) for each method,
        ("contrastive", facts) for the contrastive map."""
        maps = [(m, self.facts[m]) for m in self.facts_in_line_order()]
        if self.contrastive is not None:
            maps.append(("contrastive", self.contrastive))
        return {n: item for n, item in enumerate(maps, 2 + len(self.cause_claims()))}

    def finding_lines(self, finding: Finding) -> list[int]:
        """The numbers that the lines of `finding` (one of `findings`) have in `lines()`."""
        end = len(self.claims())
        for f in reversed(self.findings):
            if f is finding:
                return list(range(end - len(f.claims) + 1, end + 1))
            end -= len(f.claims)
        raise ValueError(f"{finding.probe}: not a finding of this evidence")

    def with_finding(self, finding: Finding) -> Evidence:
        """A copy of this evidence with `finding` added last (the original is left as it was)."""
        return replace(self, findings=[*self.findings, finding])

    def _prediction_claim(self) -> Claim:
        pred, true = self.predicted, self.true_label
        classes = tuple(c for c in dict.fromkeys([pred, true]) if c is not None)
        return Claim(
            "prediction",
            classes,
            quantities=(percent(self.confidence, pred),),
            verdict=self.verdict,
            fields={"predicted": pred, "true": true, "confidence": self.confidence},
        )

    def _map_claim(self, method: str) -> Claim:
        f = self.facts[method]
        trust = self.trust.get(method)
        untrusted = trust is not None and not trust.informative
        verdict = "uninformative" if untrusted else "informative" if trust is not None else None
        if f.area_above_half == 0.0:  # only an all-zero map has no pixel above half its peak
            return Claim(
                "map",
                map=method,
                verdict=verdict,
                fields={"method": method, "empty": True, "uninformative": untrusted},
            )
        top, share = f.largest_share()
        look = self.appearance.hot if self.appearance is not None and method == self.primary else None
        regions = map_regions(f)
        # Every other region holding at least HOT_SHARE of the heat is named with its share: the line
        # says all that the claim lets an answer say.
        others = [
            (r, s)
            for r, s in sorted(f.region_shares.items(), key=lambda kv: -kv[1])
            if r != top and s >= HOT_SHARE
        ]
        return Claim(
            "map",
            regions=regions,
            peak=f.peak_region,
            top=top,
            map=method,
            quantities=(
                percent(share, f"share:{top}"),
                *(percent(s, f"share:{r}") for r, s in others),
                percent(f.area_above_half, "area"),
            ),
            verdict=verdict,
            fields={
                "method": method,
                "top": top,
                "share": share,
                "others": [[r, s] for r, s in others],
                "peak": f.peak_region,
                "area": f.area_above_half,
                "uninformative": untrusted,
                "look": {"colours": look.colours, "texture": look.texture} if look and look.colours else None,
            },
        )

    def _counterfactual_claims(self, cf: Counterfactual) -> list[Claim]:
        pred = cf.predicted
        before, after, kept = cf.original[pred], cf.hidden[pred], cf.kept[pred]
        primary = self.primary
        regions = map_regions(self.facts[primary]) if primary is not None else ()
        hidden = cf.hidden_prediction
        hiding = Claim(
            "hiding",
            tuple(dict.fromkeys([pred, hidden])),
            regions,
            map=primary,
            quantities=(percent(cf.hot_area, "area"), percent(before, pred), percent(after, pred)),
            moves=(Move(pred, before, after),),
            becomes=(hidden,),
            verdict="barely" if abs(before - after) < BARELY else None,
            fields={
                "predicted": pred,
                "area": cf.hot_area,
                "before": before,
                "after": after,
                "becomes": hidden,
                "barely": abs(before - after) < BARELY,
            },
        )
        keeping = Claim(
            "keeping",
            tuple(dict.fromkeys([pred, cf.kept_prediction])),
            regions,
            map=primary,
            quantities=(percent(kept, pred),),
            moves=(Move(pred, before, kept),),
            becomes=(cf.kept_prediction,),
            fields={"predicted": pred, "kept": kept, "becomes": cf.kept_prediction},
        )
        return [hiding, keeping]

    def _appearance_claim(self, look: Appearance) -> Claim:
        primary = self.primary
        regions = map_regions(self.facts[primary]) if primary is not None else ()
        rest = look.rest if look.rest.colours else None
        words = [*look_licence(look.hot), *(look_licence(rest) if rest else [])]
        as_dict = lambda r: {"colours": r.colours, "brightness": r.brightness, "texture": r.texture}  # noqa: E731
        cf = self.counterfactual  # the same region: heat at least half the map's peak
        area = cf.hot_area if cf is not None and cf.hot_area > 0 else None
        return Claim(
            "appearance",
            regions=regions,
            map=primary,
            quantities=(percent(area, "area"),) if area is not None else (),
            looks=tuple(dict.fromkeys(words)),
            fields={
                "hot": as_dict(look.hot),
                "rest": as_dict(rest) if rest else None,
                "hot_looks": look_licence(look.hot),
                "area": area,
            },
        )

    def _neighbours_claim(self) -> Claim:
        labels = Counter(n.label for n in self.neighbours)  # ties: the label of the nearer photo first
        ranked = labels.most_common()
        k = len(self.neighbours)
        sims = [n.similarity for n in self.neighbours]
        agree = ranked[0][0] == self.predicted
        return Claim(
            "neighbours",
            tuple(label for label, _ in ranked),
            quantities=(decimal(max(sims), 2, "similarity"), decimal(min(sims), 2, "similarity")),
            counts=tuple(Count(n, k, label, "neighbours") for label, n in ranked),
            verdict="agree" if agree else "disagree",
            fields={
                "counts": [[label, n] for label, n in ranked],
                "k": k,
                "high": max(sims),
                "low": min(sims),
                "predicted": self.predicted,
            },
        )

    def _trust_claim(self) -> Claim:
        ordered = sorted(self.trust.values(), key=lambda t: (t.method != "scorecam", t.method))
        numbers = tuple(
            decimal(v, 3, name)
            for t in ordered
            for name, v in (
                ("deletion", t.deletion),
                ("random deletion", t.random_deletion),
                ("insertion", t.insertion),
                ("random insertion", t.random_insertion),
            )
        )
        verdict = "informative" if all(t.informative for t in ordered) else "uninformative"
        maps = [{**asdict(t), "informative": t.informative} for t in ordered]
        return Claim("trust", quantities=numbers, verdict=verdict, fields={"maps": maps})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists)."""
        out = asdict(self)
        out["facts"] = {m: f.to_dict() for m, f in self.facts.items()}
        out["contrastive"] = self.contrastive.to_dict() if self.contrastive else None
        for method, trust in self.trust.items():
            out["trust"][method]["informative"] = trust.informative
        out["findings"] = [f.to_dict() for f in self.findings]
        out["summary"] = [c.to_dict() for c in self.summary]
        out["lead"] = [c.to_dict() for c in self.lead]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evidence:
        """Inverse of to_dict; also reads the records of earlier versions (no claims, no summary)."""
        look = lambda r: RegionLook(**r)  # noqa: E731
        counterfactual = d.get("counterfactual")
        appearance = d.get("appearance")
        quality = d.get("label_quality")
        return cls(
            file=d["file"],
            class_names=list(d["class_names"]),
            probabilities=dict(d["probabilities"]),
            predicted=d["predicted"],
            true_label=d.get("true_label"),
            contrast_class=d["contrast_class"],
            facts={m: HeatmapFacts.from_dict(f) for m, f in d["facts"].items()},
            contrastive=HeatmapFacts.from_dict(d["contrastive"]) if d.get("contrastive") else None,
            counterfactual=Counterfactual(**counterfactual) if counterfactual else None,
            appearance=Appearance(look(appearance["hot"]), look(appearance["rest"])) if appearance else None,
            neighbours=[Neighbour(**n) for n in d.get("neighbours", [])],
            trust={
                m: MapTrust(**{k: v for k, v in t.items() if k != "informative"})
                for m, t in d.get("trust", {}).items()
            },
            agreement=d.get("agreement"),
            findings=[Finding.from_dict(f) for f in d.get("findings", [])],
            label_quality=LabelQuality(**quality) if quality else None,
            summary=[Claim.from_dict(c) for c in d.get("summary", [])],
            causal=_causal_from_dict(d["causal"]) if d.get("causal") else None,
            changes=[GlobalChange(**c) for c in d.get("changes", [])],
            lead=[Claim.from_dict(c) for c in d.get("lead", [])],
            tested=[TestedFix.from_dict(t) for t in d.get("tested", [])],
        )


# A label quality below this (cleanlab's score, 0..1) is worth a look: the suggestion to check the label.
LOW_LABEL_QUALITY = 0.5


def primary_method(methods: Iterable[str]) -> str:
    """The method whose map a photo's (or a group's) counterfactuals, appearance and templates use:
    ScoreCAM when it is among `methods`, else the first."""
    methods = list(methods)
    if not methods:
        raise ValueError("no heatmap method")
    return "scorecam" if "scorecam" in methods else methods[0]


def map_regions(facts: HeatmapFacts) -> tuple[str, ...]:
    """The regions one map's line lets an explanation name, most heat first: its peak's, its largest
    share's and any holding at least HOT_SHARE of its heat; none for an empty map."""
    if facts.area_above_half == 0.0:
        return ()
    hot = {r for r, share in facts.region_shares.items() if share >= HOT_SHARE}
    hot |= {facts.peak_region, facts.largest_share()[0]}
    return tuple(sorted(hot, key=lambda r: -facts.region_shares.get(r, 0.0)))


def _contrastive_claim(c: HeatmapFacts, predicted: str, other: str) -> Claim:
    top, share = c.largest_share()
    return Claim(
        "contrastive",
        (predicted, other),
        map_regions(c),
        peak=c.peak_region,
        top=top,
        map="contrastive",
        quantities=(percent(share, f"share:{top}"),),
        fields={"predicted": predicted, "other": other, "peak": c.peak_region, "top": top, "share": share},
    )


def look_licence(look: RegionLook) -> list[str]:
    """The appearance words a region's look licenses: its colour names, its tone, its texture's words."""
    return [*look.colours, tone(look.brightness), *texture_licence(look.texture)]


def texture_licence(texture: str) -> list[str]:
    """The words a texture (appearance.describe_region's names) licenses."""
    return {
        "strand-like edges": ["strand-like", "strands", "edges"],
        "smooth surface": ["smooth"],
        "mixed": ["mixed"],
    }.get(texture, [texture])


def _causal_from_dict(d: dict[str, Any]) -> CausalRegion:
    return CausalRegion(
        **{
            **d,
            "box": tuple(d["box"]),
            "colours": tuple(d.get("colours", ())),
            "unusual": tuple((str(c), float(s)) for c, s in d.get("unusual", ())),
        }
    )


def _cause_classes(*names: str | None) -> tuple[str, ...]:
    return tuple(n for n in dict.fromkeys(names) if n is not None)


def causal_claim(c: CausalRegion) -> Claim:
    """What hiding one part at a time found: the part whose hiding moves the prediction most, what that
    does (and to the true class), and how much of the map's heat lies there."""
    barely = c.drop < BARELY
    moves = [Move(c.predicted, c.before, c.after)]
    if (
        c.truth is not None
        and c.truth != c.predicted
        and c.truth_before is not None
        and c.truth_after is not None
    ):
        moves.append(Move(c.truth, c.truth_before, c.truth_after))
    quantities = [percent(c.area, "area"), percent(c.before, c.predicted), percent(c.after, c.predicted)]
    quantities.append(Quantity(float(c.places), "decimal", "places"))
    if c.strips:
        quantities.append(Quantity(float(c.strips), "decimal", "strips"))
    quantities += [percent(m.after, m.cls) for m in moves[1:]] + [percent(m.before, m.cls) for m in moves[1:]]
    if c.heat is not None:
        quantities.append(percent(c.heat, "heat"))
    return Claim(
        "occlusion",
        _cause_classes(c.predicted, c.becomes, c.truth),
        c.regions,
        quantities=tuple(quantities),
        counts=(Count(c.places, c.places, "", "places"),) if c.places else (),
        moves=tuple(moves),
        becomes=(c.becomes,),
        verdict="barely" if barely else "turned_back" if c.turned_back else None,
        looks=PART_WORDS,
        fields={
            "region": c.region,
            "area": c.area,
            "predicted": c.predicted,
            "before": c.before,
            "after": c.after,
            "becomes": c.becomes,
            "truth": c.truth,
            "truth_before": c.truth_before,
            "truth_after": c.truth_after,
            "heat": c.heat,
            "map": c.map,
            "places": c.places,
            "strips": c.strips,
            "regions": list(c.regions),
            "barely": barely,
        },
    )


def causal_look_claim(c: CausalRegion) -> Claim:
    """What the causal part looks like, and which of its colours the true class's training photos rarely
    show (a colour out of place comes first)."""
    rare = [name for name, _ in c.unusual]
    colours = [*rare, *(x for x in c.colours if x not in rare)]
    return Claim(
        "occlusion_look",
        _cause_classes(c.truth) if rare else (),
        c.regions,
        # A share of the training photos' pixels: an area, as the gate reads "1% of their pixels".
        quantities=tuple(percent(max(share, 0.01), "area") for _, share in c.unusual),
        looks=(*colours, *PART_WORDS),
        fields={
            "region": c.region,
            "regions": list(c.regions),
            "colours": colours,
            "unusual": [[n, s] for n, s in c.unusual],
            "truth": c.truth,
        },
    )


def whole_photo_claims(changes: list[GlobalChange], limit: int = MAX_CHANGE_LINES) -> list[Claim]:
    """A claim for each whole-photo change that flips the prediction or moves it by more than
    NOTABLE_MOVE (those that turn it to the true class first, then the larger move), at most `limit`;
    one claim that none does, with the largest move, when none does."""
    notable = sorted(
        (c for c in changes if c.notable),
        # What turns it back first, then what flips it, the smaller edit first (the more specific cause).
        key=lambda c: (
            not c.turned_back,
            c.becomes == c.predicted,
            round(c.area, 6),
            -abs(c.before - c.after),
        ),
    )
    if not notable:
        largest = max(changes, key=lambda c: abs(c.before - c.after))
        move = abs(largest.before - largest.after)
        return [
            Claim(
                "whole_photo_none",
                (largest.predicted,),
                looks=tuple(dict.fromkeys(w for c in changes for w in change_words(c))),
                quantities=(
                    percent(move, "points"),
                    percent(NOTABLE_MOVE, "points"),
                    *settings_quantities(changes),
                ),
                fields={
                    "predicted": largest.predicted,
                    "changes": [c.change for c in changes],
                    "largest": largest.change,
                    "move": move,
                    "notable": NOTABLE_MOVE,
                    **setting_fields(changes),
                },
            )
        ]
    out = []
    for c in notable[:limit]:
        out.append(
            Claim(
                "whole_photo",
                _cause_classes(c.predicted, c.becomes, c.truth),
                quantities=(
                    percent(c.before, c.predicted),
                    percent(c.after, c.predicted),
                    *settings_quantities([c]),
                ),
                moves=(Move(c.predicted, c.before, c.after),),
                becomes=(c.becomes,),
                verdict="turned_back" if c.turned_back else None,
                looks=change_words(c),
                fields={
                    "change": c.change,
                    "predicted": c.predicted,
                    "before": c.before,
                    "after": c.after,
                    "becomes": c.becomes,
                    **setting_fields([c]),
                },
            )
        )
    return out


# The kinds of claim `Evidence.cause_claims` makes: what changing the photo did.
CAUSE_KINDS = frozenset(
    {
        "occlusion",
        "occlusion_look",
        "whole_photo",
        "whole_photo_none",
        "group_occlusion",
        "group_whole_photo",
        "group_whole_photo_none",
    }
)


def change_words(change: GlobalChange) -> tuple[str, ...]:
    """The image words a whole-photo change lets an explanation use: CHANGE_WORDS, and a removed colour."""
    return (*CHANGE_WORDS.get(change.change, ()), *((change.colour,) if change.colour else ()))


# The image words (noodlenext/llm/vocabulary.yaml) a whole-photo change lets an explanation use.
CHANGE_WORDS: dict[str, tuple[str, ...]] = {
    "grayscale": (
        "grayscale",
        "greyscale",
        "black-and-white",
        "black",  # "in black and white"
        "white",
        "monochrome",
        "colour",
        "color",
        "grey",
        "gray",
    ),
    "quarter_resolution": ("resolution", "low-resolution", "blur", "blurry", "blurred", "pixelated"),
    "jpeg": ("jpeg", "compression", "artifact", "artifacts", "artefact", "artefacts"),
    "warmer": ("tint", "colour", "color", "hue", "light", "lighting"),
    "cooler": ("tint", "colour", "color", "hue", "light", "lighting"),
    "mirror": (),
    "border_crop": ("border", "crop", "cropped"),
    "surroundings": ("background", "surroundings", "border", "table"),
    "remove_colour": ("colour", "color", "grey", "gray"),
}


def setting_fields(changes: Iterable[GlobalChange]) -> dict[str, Any]:
    """The settings the words of `changes` state: {"quality": the JPEG quality, "border": the share of each
    side the border crop takes, "scale": the lower resolution's share of the side}, for those among them."""
    names = {
        "jpeg": "quality",
        "border_crop": "border",
        "quarter_resolution": "scale",
        "remove_colour": "share",
    }
    out: dict[str, Any] = {
        names[c.change]: c.setting for c in changes if c.change in names and c.setting is not None
    }
    colours = [c.colour for c in changes if c.colour]
    if colours:
        out["colour"] = colours[0]
    return out


def settings_quantities(changes: Iterable[GlobalChange]) -> list[Quantity]:
    out = []
    for name, value in setting_fields(changes).items():
        if name == "colour":
            continue
        if name == "quality":
            out.append(Quantity(float(value), "decimal", name))
        else:  # a share of the photo (a border, a removed colour) or of its side (a lower resolution)
            out.append(percent(value, "area" if name in ("border", "share") else name))
    return out

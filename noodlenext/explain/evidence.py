"""Evidence: what the model itself does with one photo, as plain data every explanation must rest on.

Per explained image: the heatmaps' facts, a contrastive map (why the predicted class and not the other
one), counterfactuals the model runs (the hot region hidden; only the hot region kept), what the hot
region looks like in words, the nearest training photos in the classifier's feature space, and a trust
check of each map against a random map. `Evidence.lines()` numbers these as the lines a prompt cites and
the grounding gate checks against.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from noodlenext.explain.facts import HeatmapFacts

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

    probe: the test's name (`why_not`, `change_mind`, ...); arguments: what it was run with; lines: plain
    sentences stating the result (they join the evidence lines, numbered after them); classes: the classes
    the result involves; regions: the 3x3 regions it finds hot (an answer may name them); data: the raw
    numbers, for the record.
    """

    probe: str
    arguments: dict[str, Any]
    lines: list[str]
    classes: list[str] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evidence:
    """Everything known about one explained photo; JSON-serialisable through to_dict / from_dict.

    contrast_class: the class the contrastive map explains the prediction against (the true class when
    the prediction is wrong, else the runner-up). facts: per heatmap method, the facts of its map of the
    predicted class; contrastive: the facts of the map of (predicted - contrast_class) evidence.
    agreement: Pearson r between the ScoreCAM and GradCAM maps (None without both).
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

    @property
    def confidence(self) -> float:
        return self.probabilities[self.predicted]

    @property
    def verdict(self) -> str:
        if self.true_label is None:
            return "unknown"
        return "correct" if self.true_label == self.predicted else "wrong"

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
        """The classes the evidence involves: predicted, true, contrast, the counterfactuals' predictions
        and the nearest training photos' labels. An explanation may blame no other class."""
        names = [self.predicted, self.true_label, self.contrast_class]
        if self.counterfactual is not None and self.counterfactual.hot_area > 0:  # else no line names them
            names += [self.counterfactual.hidden_prediction, self.counterfactual.kept_prediction]
        names += [n.label for n in self.neighbours]
        names += [c for f in self.findings for c in f.classes]
        return [n for n in dict.fromkeys(names) if n is not None]

    def lines(self) -> list[str]:
        """The evidence as short numbered plain-English lines ("1. ..."), the facts a prompt cites.

        Probabilities are percentages; AUCs, similarities and r are two-decimal numbers. Evidence that is
        missing has no line, and the numbers close up. A map that does not beat a random map is called
        uninformative, both in its own line and in the trust line.
        """
        out = [self._prediction_line()]
        for method in self.facts_in_line_order():
            out.append(self._map_line(method))
        if self.contrastive is not None:
            c = self.contrastive
            top, share = _top_region(c)
            out.append(
                f"Contrastive map ({self.predicted} over {self.contrast_class}): peak in the "
                f"{c.peak_region}; {_heat_lead(share)} ({share:.0%}) in the {top}."
            )
        cf = self.counterfactual
        if cf is not None and cf.hot_area > 0:  # an empty map has no hot region to hide or keep
            before, after = cf.original[cf.predicted], cf.hidden[cf.predicted]
            change = (
                f"leaves {cf.predicted} at {before:.0%}" if f"{before:.0%}" == f"{after:.0%}"
                else f"drops {cf.predicted} from {before:.0%} to {after:.0%}" if after < before
                else f"raises {cf.predicted} from {before:.0%} to {after:.0%}"
            )  # fmt: skip
            if abs(before - after) < BARELY:
                change += " (barely a change: the region alone does not decide)"
            out.append(
                f"Hiding the hot region ({cf.hot_area:.0%} of the image) {change}; "
                f"{_becomes(cf.hidden_prediction, cf.predicted)}."
            )
            out.append(
                f"Keeping only the hot region gives {cf.predicted} {cf.kept[cf.predicted]:.0%}; "
                f"{_becomes(cf.kept_prediction, cf.predicted)}."
            )
        if self.appearance is not None and self.appearance.hot.colours:
            look = self.appearance
            rest = f"; the rest is {look_words(look.rest)}" if look.rest.colours else ""
            out.append(f"The hot region is mostly {look_words(look.hot)}{rest}.")
        if self.neighbours:
            out.append(self._neighbours_line())
        if self.trust:
            out.append(
                " ".join(_trust_sentence(t) for _, t in sorted(self.trust.items(), key=_first_scorecam))
            )
        if self.agreement is not None:
            r = self.agreement
            verb = "agree" if r >= 0.5 else "partly agree" if r >= 0.2 else "disagree"
            names = " and ".join(method_name(m) for m in ("scorecam", "gradcam"))
            out.append(f"{names} {verb} (r = {r:.2f}).")
        out += [line for finding in self.findings for line in finding.lines]
        return [f"{i}. {line}" for i, line in enumerate(out, 1)]

    def facts_in_line_order(self) -> list[str]:
        """The methods of `facts` in the order of their lines (ScoreCAM first): line [2] is the first's."""
        return sorted(self.facts, key=lambda m: (m != "scorecam", m))

    def map_lines(self) -> dict[int, tuple[str, HeatmapFacts]]:
        """Each map line's number in `lines()`, with the map it describes: (method, facts) for each method,
        ("contrastive", facts) for the contrastive map."""
        maps = [(m, self.facts[m]) for m in self.facts_in_line_order()]
        if self.contrastive is not None:
            maps.append(("contrastive", self.contrastive))
        return {n: item for n, item in enumerate(maps, 2)}

    def finding_lines(self, finding: Finding) -> list[int]:
        """The numbers that the lines of `finding` (one of `findings`) have in `lines()`."""
        end = len(self.lines())
        for f in reversed(self.findings):
            if f is finding:
                return list(range(end - len(f.lines) + 1, end + 1))
            end -= len(f.lines)
        raise ValueError(f"{finding.probe}: not a finding of this evidence")

    def with_finding(self, finding: Finding) -> Evidence:
        """A copy of this evidence with `finding` added last (the original is left as it was)."""
        return replace(self, findings=[*self.findings, finding])

    def _prediction_line(self) -> str:
        head = f"The classifier predicted {self.predicted} with {self.confidence:.0%} confidence"
        if self.true_label is None:
            return f"{head}; the true label is not known."
        return f"{head}; the true label is {self.true_label} ({self.verdict})."

    def _map_line(self, method: str) -> str:
        f = self.facts[method]
        if f.area_above_half == 0.0:  # only an all-zero map has no pixel above half its peak
            line = f"{method_name(method)}: the map is empty; no part of the image stands out"
        else:
            top, share = _top_region(f)
            line = (
                f"{method_name(method)}: {_heat_lead(share)} ({share:.0%}) in the {top}; peak in the "
                f"{f.peak_region}; {f.area_above_half:.0%} of the image is above half the peak"
            )
        trust = self.trust.get(method)
        if trust is not None and not trust.informative:
            line += " (uninformative: it does not beat a random map)"
        return line + "."

    def _neighbours_line(self) -> str:
        labels = Counter(n.label for n in self.neighbours)  # ties: the label of the nearer photo first
        label, count = labels.most_common(1)[0]
        sims = [n.similarity for n in self.neighbours]
        others = ", ".join(f"{c} {name}" for name, c in labels.most_common()[1:])
        agree = "agree with" if label == self.predicted else "disagree with"
        return (
            f"Nearest training photos: {count} of {len(sims)} are {label}"
            f"{f', {others}' if others else ''} (similarity {max(sims):.2f}\u2013{min(sims):.2f}); "
            f"they {agree} the prediction."
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists)."""
        out = asdict(self)
        out["facts"] = {m: f.to_dict() for m, f in self.facts.items()}
        out["contrastive"] = self.contrastive.to_dict() if self.contrastive else None
        for method, trust in self.trust.items():
            out["trust"][method]["informative"] = trust.informative
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evidence:
        """Inverse of to_dict."""
        look = lambda r: RegionLook(**r)  # noqa: E731
        counterfactual = d.get("counterfactual")
        appearance = d.get("appearance")
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
            findings=[Finding(**f) for f in d.get("findings", [])],
        )


_METHOD_NAMES = {"scorecam": "ScoreCAM", "gradcam": "GradCAM"}


def method_name(method: str) -> str:
    """How the evidence lines name a heatmap method ("scorecam" -> "ScoreCAM")."""
    return _METHOD_NAMES.get(method, method)


def _first_scorecam(item: tuple[str, Any]) -> tuple[bool, str]:
    return item[0] != "scorecam", item[0]


def _top_region(facts: HeatmapFacts) -> tuple[str, float]:
    return max(facts.region_shares.items(), key=lambda kv: kv[1])  # first maximum on ties


def _heat_lead(share: float) -> str:
    return "most heat" if share > 0.5 else "the largest share of heat"  # as HeatmapFacts.describe


def _becomes(new: str, predicted: str) -> str:
    return f"the prediction stays {predicted}" if new == predicted else f"the prediction becomes {new}"


# Mean luma (0..1) below DARK reads as dark, at least BRIGHT as bright; in between, mid-toned.
DARK, BRIGHT = 0.35, 0.6
_TEXTURE_WORDS = {"strand-like edges": "with strand-like edges", "smooth surface": "smooth"}


def look_words(look: RegionLook) -> str:
    """A region's look in words: "beige and white, bright, with strand-like edges"."""
    *first, last = look.colours
    colours = f"{', '.join(first)} and {last}" if first else last
    tone = "dark" if look.brightness < DARK else "bright" if look.brightness >= BRIGHT else "mid-toned"
    texture = _TEXTURE_WORDS.get(look.texture, f"with {look.texture} texture")
    return f"{colours}, {tone}, {texture}"


def _trust_sentence(t: MapTrust) -> str:
    numbers = (
        f"deletion {t.deletion:.3f} vs {t.random_deletion:.3f}, insertion {t.insertion:.3f} vs "
        f"{t.random_insertion:.3f}"
    )
    name = method_name(t.method)
    if t.informative:
        return f"{name} beats a random map ({numbers}): informative."
    return f"{name} does not beat a random map ({numbers}): uninformative; do not rely on it."

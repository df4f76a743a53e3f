"""The grounding gate: every explanation is checked against the evidence before anyone reads it.

`check_explanation(text, evidence)` runs plain, deterministic checks and says in words what failed.
`template_explanation(evidence)` writes an explanation from the evidence alone, one that always passes.
`grounded(generate, evidence)` asks a model, retries once with the reasons it was rejected, and falls back to
the template; its `source` says whose text it is ("llm", "llm_retry" or "template").

The checks read English with simple patterns, so they have limits (tests/test_grounding.py shows each):
- classes are found by name (plural "s"/"es", "_" or "-" read as a space); a claim about which class the
  photo *is* or what the classifier *predicted* is recognised in common phrasings only ("it is X", "the
  photo shows X", "the true label is X", "predicted X", "took this X dish for Y"); "confused X with Y" and
  "X instead of Y" are not read (their order is ambiguous), nor are claims split over two sentences;
- regions are found by the 9 names of `noodlenext.explain.facts.REGIONS` and plain words ("top left",
  "top-right corner", "bottom", "centre", "left side", "on the right"...); a region named in a clause that
  says it is cold ("little heat in the lower left", "not the centre") is allowed when it is not hot, but a
  "not only ... but also ..." clause is read as a negation too; a sentence is about a map when it names
  it ("GradCAM", "Score-CAM", "the contrastive map") or cites its line, and a peak is put where the next
  region named after "peak" (and any joined to it by "and"/"or") is, "hottest"/"most heat" where any
  region of its clause is;
- a cause the evidence does not give ("because of the broth") is caught only when it names a class or a
  region the evidence does not, or when too many of the answer's content words come from nowhere in the
  evidence (MAX_FOREIGN: a vocabulary heuristic, words compared by their first 5 letters, with a list of
  words any explanation may use, EXPLANATION_WORDS); numbers are checked as percentages and decimals
  ("0.42"), not as counts or words ("five photos").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from noodlenext.explain.evidence import BARELY, HOT_SHARE, Evidence, Finding, method_name
from noodlenext.explain.facts import REGIONS, HeatmapFacts
from noodlenext.llm.base import Backend, Message
from noodlenext.llm.text import ends_on_sentence, sentences, words

MAX_WORDS = 90
NGRAM = 4  # a repeated word 4-gram is a repeated phrase
# An answer whose content words are more than this share foreign to the evidence (and at least
# MIN_FOREIGN distinct ones) is inventing: measured on SmolLM2's drafts, the template scores <= 0.09,
# answers that invent an "algorithm designed to evaluate performance" 0.25-0.55.
MAX_FOREIGN = 0.25
MIN_FOREIGN = 3
# A sentence whose content words are more than half foreign (and at least MIN_FOREIGN distinct ones) says
# something no line says: the template's sentences score 0, "Gradient map for max shade was mixed to match
# color scheme of Gradcam maps" (a draft that passed the whole-answer share) 0.75.
MAX_FOREIGN_SENTENCE = 0.5
MIN_SENTENCES = 2  # one sentence restates the verdict at most; the prompt asks for 2 to 4
# Talk about the instructions instead of the photo, as a small model parrots them ("citing the facts you
# use like [2]", "in 2 to 4 short sentences").
_META = re.compile(
    r"\b(?:cit(?:e|es|ed|ing)\s+(?:the\s+|these\s+|those\s+)?(?:facts?|lines?|numbers?)|the\s+facts\s+you\b|"
    r"numbered\s+facts?|\d\s+to\s+\d\s+(?:short\s+)?sentences|short\s+sentences)",
    re.I,
)
# The user turn a rejected draft is answered with; {reasons}: the failed checks, joined by "; ".
FEEDBACK = (
    "Your answer was rejected: {reasons}. Rewrite it using only the numbered facts, citing them like [2]."
)


@dataclass
class GroundingVerdict:
    """The gate's answer for one text: passed when no check failed; one plain reason per failed check."""

    passed: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GroundedText:
    """An explanation that passed the gate, or the template's.

    text: what a reader may see; source: "llm" (first draft passed), "llm_retry" (the second passed) or
    "template" (both failed, or no model); verdicts: the gate's verdict on each model attempt, in order;
    drafts: the rejected drafts, in order.
    """

    text: str
    source: str
    verdicts: list[GroundingVerdict] = field(default_factory=list)
    drafts: list[str] = field(default_factory=list)

    def for_reader(self) -> str:
        """The text as a reader sees it: marked with whose words it is and what the gate said."""
        if self.source == "llm":
            return f"{self.text}\n\n(checked against the evidence: passed)"
        if self.source == "llm_retry":
            return f"{self.text}\n\n(checked against the evidence: passed on the second try)"
        if not self.verdicts:
            return f"{self.text}\n\n(from the evidence template: the language model gave no answer)"
        why = "; ".join(self.verdicts[-1].reasons)
        return f"{self.text}\n\n(from the evidence template; the model's answer failed the check: {why})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "source": self.source,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "drafts": list(self.drafts),
        }


# ------------------------------------------------------------------------------------------ regions
_ROW = {"upper": 0, "top": 0, "middle": 1, "center": 1, "centre": 1, "central": 1, "lower": 2, "bottom": 2}
_COL = {"left": 0, "middle": 1, "center": 1, "centre": 1, "central": 1, "right": 2}
_CELL = rf"(?:{'|'.join(_ROW)})[\s-]+(?:{'|'.join(_COL)})(?:-hand)?"
_BAND_NOUN = r"(?:half|halves|parts?|edges?|sides?|row|column|third|portion|area|region|section|border|strip)"
_PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], frozenset[str]]]] = []
_NOT_A_PLACE = r"\s+(?:class|classes|prediction|guess|choice|candidates?|scores?|one|two|three|\d)"
# "top and bottom", "left or right": a bare direction word joined to the region named just before it
_JOINED = re.compile(
    rf"\s*,?\s*(?:and|or|&)\s+(?:the\s+)?(?:very\s+|far\s+)?(?P<w>top|bottom|left|right)\b(?!{_NOT_A_PLACE})",
    re.I,
)
_JOINED_BAND = {
    "top": ([0], range(3)),
    "bottom": ([2], range(3)),
    "left": (range(3), [0]),
    "right": (range(3), [2]),
}


def _cells(rows: Sequence[int], cols: Sequence[int]) -> frozenset[str]:
    return frozenset(REGIONS[3 * r + c] for r in rows for c in cols)


def _cell(m: re.Match[str]) -> frozenset[str]:
    first, second = re.split(r"[\s-]+", m.group(0).lower().removesuffix("-hand"))[:2]
    return _cells([_ROW[first]], [_COL[second]])


def _row_band(m: re.Match[str]) -> frozenset[str]:
    return _cells([_ROW[m.group("row").lower()]], range(3))


def _col_band(m: re.Match[str]) -> frozenset[str]:
    return _cells(range(3), [_COL[m.group("col").lower()]])


_PATTERNS += [
    # "upper left", "top-right", "bottom middle", "centre left" (a row word, then a column word)
    (re.compile(rf"\b{_CELL}\b", re.I), _cell),
    # "the top half", "lower part", "bottom edge"
    (re.compile(rf"\b(?P<row>upper|top|lower|bottom)\s+{_BAND_NOUN}\b", re.I), _row_band),
    # "at the top", "near the bottom" (not "the top class", "the top two")
    (
        re.compile(
            rf"\b(?:at|in|on|near|along|towards?|across|to)\s+the\s+(?:very\s+)?(?P<w>(?P<row>top|bottom))\b"
            rf"(?!{_NOT_A_PLACE})",
            re.I,
        ),
        _row_band,
    ),
    # "peak on top", "at bottom" (not "on top of the noodles": a place on the dish, not in the photo)
    (
        re.compile(
            rf"\b(?:at|in|on|near|towards?|to)\s+(?P<w>(?P<row>top|bottom))\b(?!\s+of\b)(?!{_NOT_A_PLACE})",
            re.I,
        ),
        _row_band,
    ),
    # "the left side", "right-hand edge", "on the left", "to the far right"
    (re.compile(rf"\b(?P<col>left|right)(?:-hand)?\s+{_BAND_NOUN}\b", re.I), _col_band),
    (
        re.compile(
            r"\b(?:on|to|at|in|near|towards?|along)\s+the\s+(?:far\s+)?(?P<w>(?P<col>left|right))\b", re.I
        ),
        _col_band,
    ),
    # "the centre", "in the middle", "central" (what is left once the cells above are taken)
    (re.compile(r"\b(?:centre|center|central|middle)\b", re.I), lambda m: frozenset({"center"})),
]
_COLD = re.compile(
    r"\b(?:not|no|little|less|least|low|cold|cool|without|barely|hardly|none|nothing|outside|ignor\w*|"
    r"instead\s+of|rather\s+than|away\s+from)\b",
    re.I,
)
_CLAUSE = re.compile(r"[.;!?]|,|\bbut\b|\bwhile\b|\bwhereas\b", re.I)


def region_mentions(text: str) -> list[tuple[str, frozenset[str], int]]:
    """(the words, the regions they can mean, where they start) for each place `text` names a region;
    longer names first, so "middle left" is one mention, not "middle" and "left"."""
    return [(said, regions, start) for said, regions, start, _ in _mentions(text)]


def _mentions(text: str) -> list[tuple[str, frozenset[str], int, int]]:
    """region_mentions, with where each mention ends."""
    taken = [False] * len(text)
    found = []
    for pattern, regions in _PATTERNS:
        for m in pattern.finditer(text):
            if any(taken[m.start() : m.end()]):
                continue
            taken[m.start() : m.end()] = [True] * (m.end() - m.start())
            said = m.groupdict().get("w") or m.group(0)  # "bottom", not "at the bottom"
            found.append((said, regions(m), m.start(), m.end()))
    found.sort(key=lambda f: f[2])
    for _, _, _, end in list(found):  # "on top and bottom": "bottom" is a region too
        while (m := _JOINED.match(text, end)) and not any(taken[m.start("w") : m.end("w")]):
            taken[m.start("w") : m.end("w")] = [True] * (m.end("w") - m.start("w"))
            rows, cols = _JOINED_BAND[m.group("w").lower()]
            found.append((m.group("w"), _cells(rows, cols), m.start("w"), m.end("w")))
            end = m.end()
    return sorted(found, key=lambda f: f[2])


def allowed_regions(evidence: Evidence) -> set[str]:
    """The regions an explanation may name: `Evidence.hot_regions`'s rule (the peak's region and any
    holding at least HOT_SHARE of the heat) over every map the evidence lines describe (each method's and
    the contrastive map), plus each map's largest share (its line names it even when that share is small),
    plus the regions of each finding (`Evidence.findings`: the tests the chat ran). An empty map (no pixel
    above half its peak) has no hot region: its neutral "center" peak is no finding.
    """
    allowed: set[str] = set()
    for _, facts in evidence.map_lines().values():
        allowed |= map_regions(facts)
    for finding in evidence.findings:  # a test run on demand names the regions it found
        allowed |= set(finding.regions)
    return allowed


def map_regions(facts: HeatmapFacts) -> set[str]:
    """The regions one map's line lets an explanation name: its peak's, its largest share's and any
    holding at least HOT_SHARE of its heat; none for an empty map."""
    if facts.area_above_half == 0.0:
        return set()
    hot = {r for r, share in facts.region_shares.items() if share >= HOT_SHARE}
    return hot | {facts.peak_region, _largest_share(facts)}


def _largest_share(facts: HeatmapFacts) -> str:
    return max(facts.region_shares.items(), key=lambda kv: kv[1])[0]  # first maximum, as its line


# Where a map peaks ("peak", "hot spot"): the place named next, and any joined to it ("on top and bottom"),
# must hold the peak. Where it is hottest, or holds most heat: one of the clause's places must hold it.
_POINT = re.compile(r"\b(?:peak\w*|hot\s*spots?|maxim\w+)\b", re.I)
_HOTTEST = re.compile(r"\b(?:hottest|strongest|brightest|most\s+intense)\b", re.I)
_MOST = re.compile(
    r"\b(?:most|largest|biggest|greatest|main)\s+(?:share\s+)?(?:of\s+)?(?:the\s+|its\s+|[\w-]+'s\s+)?heat\b|"
    r"\b(?:largest|biggest|greatest)\s+share\b",
    re.I,
)
_AND = re.compile(r"\s*,?\s*(?:and|or|&)\s+(?:the\s+)?(?:very\s+|far\s+)?", re.I)


def _map_pattern(method: str) -> re.Pattern[str]:
    if method == "contrastive":
        return re.compile(r"\bcontrast(?:ive)?\s+(?:heat\s*)?map", re.I)
    name = method_name(method)  # "ScoreCAM": also "Score-CAM", "score cam"
    parts = re.findall(r"[A-Z]+[a-z]*|[a-z]+|\d+", name) or [name]
    return re.compile(r"\b" + r"[\s-]?".join(re.escape(p) for p in parts) + r"\b", re.I)


def _map_label(method: str) -> str:
    return "the contrastive map" if method == "contrastive" else method_name(method)


def _region_reasons(text: str, evidence: Evidence) -> list[str]:
    """The region checks, sentence by sentence.

    A sentence about a map (it names ScoreCAM, GradCAM or the contrastive map, or cites its line) may name
    only the regions that map's line calls hot (`map_regions`), plus those of any test it cites; any other
    sentence, the regions any line calls hot (`allowed_regions`). A clause that puts a map's peak, or most
    of its heat, somewhere must name a place holding that map's peak, or largest share (any map's, in a
    sentence about none). A clause that calls a region cold is never counted.
    """
    allowed = allowed_regions(evidence)
    map_lines = evidence.map_lines()
    stray: list[str] = []
    out: list[str] = []
    for sentence in sentences(text):
        cited = set(_cited(sentence))
        plain = _CITATION.sub(" ", sentence)
        about = {method: facts for method, facts in map_lines.values() if _map_pattern(method).search(plain)}
        about |= {method: facts for n, (method, facts) in map_lines.items() if n in cited}
        about = {m: f for m, f in about.items() if f.area_above_half > 0}  # an empty map has no place
        tested = {  # a test's own map (why not that class?) puts heat where its lines say
            r
            for f in evidence.findings
            for r in f.regions
            if not about or cited & set(evidence.finding_lines(f))
        }
        own = set().union(*(map_regions(f) for f in about.values())) if about else set(allowed)
        own |= tested
        mentions = [m for m in _mentions(plain) if not _COLD.search(_clause_around(plain, m[2]))]
        for said, regions, _, _ in mentions:
            if regions & own:
                continue
            if not about:
                stray += [said.lower()] if said.lower() not in stray else []
                continue
            whose = _join([_map_label(m) for m in about])
            reason = f"names the {said.lower()} for {whose}, whose line does not call it hot"
            out += [reason] if reason not in out else []
        maps = about or {m: f for m, f in map_lines.values() if f.area_above_half > 0}
        for reason in _placement_reasons(plain, mentions, maps, tested):
            out += [reason] if reason not in out else []
    if stray:
        names = " and ".join(f"the {s}" for s in stray)
        out.insert(0, f"names {names}, which the evidence does not call hot")
    return out


def _placement_reasons(
    text: str,
    mentions: list[tuple[str, frozenset[str], int, int]],
    maps: dict[str, HeatmapFacts],
    tested: set[str],
) -> list[str]:
    """One reason per place `text` gives a peak, or most heat, that none of `maps` has there, nor a test's
    map (`tested`: the regions a test the text may speak of found)."""
    out = []
    for claim, what in ((_POINT, "peak"), (_HOTTEST, "peak"), (_MOST, "largest share of heat")):
        place = _largest_share if claim is _MOST else (lambda f: f.peak_region)
        for word in claim.finditer(text):
            start, end = _clause_span(text, word.start())
            named = [m for m in mentions if start <= m[2] < end]
            wrong = [m for m in named if not (m[1] & tested or any(place(f) in m[1] for f in maps.values()))]
            if claim is _POINT:  # each place the peak is put must hold it
                wrong = [m for m in _named_at(named, word.end(), text) if m in wrong]
            elif len(wrong) < len(named):  # "hottest in the upper and middle right": one holding it will do
                wrong = []
            for said, *_ in wrong[:1] if claim is not _POINT else wrong:
                whose = _join([f"{_map_label(m)}'s {what} in the {place(f)}" for m, f in maps.items()])
                out.append(f"puts the {what} at the {said.lower()}, but the evidence puts {whose}")
    return out


def _named_at(
    mentions: list[tuple[str, frozenset[str], int, int]], after: int, text: str
) -> list[tuple[str, frozenset[str], int, int]]:
    """The places a peak word points at: the first mention after it and those joined to that one by
    "and" or "or" (else the last mention before it: "the upper left is the peak")."""
    later = [m for m in mentions if m[2] >= after]
    if not later:
        return mentions[-1:]
    chain = later[:1]
    for m in later[1:]:
        if not _AND.fullmatch(text, chain[-1][3], m[2]):
            break
        chain.append(m)
    return chain


def _clause_around(text: str, start: int) -> str:
    """The clause of `text` around offset `start` (between commas, semicolons, "but", sentence ends)."""
    before, after = _clause_span(text, start)
    return text[before:after]


def _clause_span(text: str, start: int) -> tuple[int, int]:
    cuts = [m for m in _CLAUSE.finditer(text)]
    before = max((m.end() for m in cuts if m.end() <= start), default=0)
    after = min((m.start() for m in cuts if m.start() > start), default=len(text))
    return before, after


# ------------------------------------------------------------------------------------------ classes
def _class_core(name: str) -> str:
    """A class name as a regex: its words with any spaces, "_" or "-" between them."""
    return r"[\s_-]+".join(re.escape(p) for p in re.split(r"[\s_-]+", name.strip()) if p)


def _class_pattern(name: str) -> str:
    return rf"\b{_class_core(name)}(?:s|es)?\b"


def _canonical(found: str, names: Sequence[str]) -> str:
    """The class name that the words `found` (a match of some _class_pattern) spell."""
    flat = re.sub(r"[\s_-]+", " ", found.lower()).strip()
    for name in names:
        n = re.sub(r"[\s_-]+", " ", name.lower()).strip()
        if flat in (n, n + "s", n + "es"):
            return name
    raise ValueError(f"{found!r} is none of {list(names)}")


def class_mentions(text: str, class_names: Sequence[str]) -> dict[str, list[int]]:
    """Where `text` names each class (start offsets), for the classes it names; a longer name wins over a
    shorter one inside it ("pad thai" is not also "thai")."""
    out: dict[str, list[int]] = {}
    taken = [False] * len(text)
    for name in sorted(class_names, key=len, reverse=True):
        for m in re.finditer(_class_pattern(name), text, re.I):
            if not any(taken[m.start() : m.end()]):
                taken[m.start() : m.end()] = [True] * (m.end() - m.start())
                out.setdefault(name, []).append(m.start())
    return out


# Words that make "it is X" someone's belief ("thinks it is ramen") or about another photo ("its nearest
# training photo is udon") rather than a claim about this photo.
_BELIEF = re.compile(
    r"\b(?:thinks?|thought|believes?|believed|says?|said|predict\w*|decided?|guess\w*|conclude\w*|"
    r"classif\w*|label\w*|calls?|called|considers?|considered|judged?|sure|confident|if|whether|as|"
    r"training|nearest|neighbou?rs?|similar|other|another)\b",
    re.I,
)
_ARTICLE = r"(?:(?:a|an|the)\s+)?(?:(?:photo|picture|image|dish|bowl)\s+of\s+)?[\"“']?"
_PREDICTS = (
    r"\b(?:predict(?:ed|s)?|chose|chooses|picked|picks|guessed|guesses|labell?ed\s+it|called\s+it|"
    r"classif(?:ied|ies)\s+(?:it|this|the\s+\w+)\s+as|thinks?\s+(?:it\s+is|it's|it’s)|thought\s+it\s+was|"
    r"says|said)\s+(?:it\s+(?:is|was)\s+|that\s+it\s+is\s+|as\s+)?"
)
_IS = (
    r"\b(?:(?:it|this|that)(?:\s+is|\s+was|'s|’s)|(?:photo|picture|image|dish|bowl)\s+(?:is|was|shows?|"
    r"showed|contains?|depicts?)|(?:true|real|actual|correct)\s+(?:label|class|dish|answer)\s+(?:is|was)|"
    r"actually|really|in\s+fact)\s+(?:actually\s+|really\s+|in\s+fact\s+)?"
)
_TOOK = r"\b(?:mistook|mistaken|mistakes|took|taken|takes|mistaking|taking)\s+(?:(?:a|an|the|this|that)\s+)?"


def _claims(text: str, names: Sequence[str]) -> dict[str, list[Any]]:
    """What `text` says the classifier predicted ("predicted": class names), what the photo is ("truth"),
    and the (true, predicted) pairs it names as "took X for Y" ("took")."""
    alt = "|".join(_class_core(n) for n in sorted(names, key=len, reverse=True))
    cls = rf"(?P<c>(?:{alt})(?:s|es)?)\b"
    predicted = [_canonical(m.group("c"), names) for m in re.finditer(_PREDICTS + _ARTICLE + cls, text, re.I)]
    truth = []
    for m in re.finditer(_IS + _ARTICLE + cls, text, re.I):
        clause = re.split(r"[,;:.!?]|\bbut\b|\band\b", text[: m.start()])[-1]
        if not _BELIEF.search(" ".join(clause.split()[-3:])):
            truth.append(_canonical(m.group("c"), names))
    took = [
        (_canonical(m.group("x"), names), _canonical(m.group("y"), names))
        for m in re.finditer(
            rf"{_TOOK}(?P<x>(?:{alt})(?:s|es)?)\s+(?:(?:dish|photo|picture|image|bowl)\s+)?for\s+{_ARTICLE}"
            rf"(?P<y>(?:{alt})(?:s|es)?)\b",
            text,
            re.I,
        )
    ]
    return {"predicted": predicted, "truth": truth, "took": took}


_SAYS_WRONG = re.compile(
    r"\b(?:(?:prediction|classifier|model|it|guess|answer)\s+(?:is|was)\s+(?:wrong|incorrect|mistaken)|"
    r"misclassif\w*|mistook|mistaken|made\s+a\s+mistake|got\s+it\s+wrong)\b",
    re.I,
)
_SAYS_RIGHT = re.compile(
    r"\b(?:(?:prediction|classifier|model|it|guess|answer)\s+(?:is|was)\s+(?:correct|right)|"
    r"correctly\s+(?:predict\w*|classif\w*|recogni[sz]\w*|identif\w*|label\w*)|got\s+it\s+right)\b",
    re.I,
)


def _class_reasons(text: str, evidence: Evidence, followup: bool = False) -> list[str]:
    """At most one reason, the first of: a misstated verdict, a misstated prediction or true class (a swap),
    a missing predicted or true class (not asked of a follow-up answer), an uninvolved class."""
    names = list(evidence.class_names)
    pred, true = evidence.predicted, evidence.true_label
    mentioned = class_mentions(text, names)
    if evidence.verdict == "correct" and _SAYS_WRONG.search(text):
        return ["calls the prediction wrong, but it is correct"]
    if evidence.verdict == "wrong" and _SAYS_RIGHT.search(text):
        return ["calls the prediction correct, but it is wrong"]
    if evidence.verdict == "unknown" and (_SAYS_WRONG.search(text) or _SAYS_RIGHT.search(text)):
        return ["calls the prediction right or wrong, but the true label is not known"]
    claims = _claims(text, names)
    for said in claims["predicted"]:
        if said != pred:
            return [f"says the classifier predicted {said}, but it predicted {pred}"]
    for said in claims["truth"]:
        if true is None and said != pred:
            return [f"says the photo is {said}, but its true label is not known"]
        if true is not None and said != true:
            return [f"says the photo is {said}, but its true label is {true}"]
    for x, y in claims["took"]:
        if true is not None and (x, y) != (true, pred):
            return [f"says the classifier took {x} for {y}, but it took {true} for {pred}"]
    if not followup and pred not in mentioned:
        return [f"does not name the predicted class, {pred}"]
    if not followup and evidence.verdict == "wrong" and true not in mentioned:
        return [f"does not name the true class, {true}"]
    involved = set(evidence.involved_classes())
    stray = [n for n in names if n in mentioned and n not in involved]
    if stray:
        return [f"blames {_join(stray)}, which the evidence does not involve"]
    return []


# ------------------------------------------------------------------------------------------ vocabulary
# Words of 4+ letters any explanation may use although no evidence line does.
EXPLANATION_WORDS = frozenset(
    """classifier classified classify model decision decided decide evidence region regions area areas part
    parts image images photo photos picture pictures heat heatmap heatmaps map maps confidence confident sure
    trust trusted prediction predicted predicts predict label labels labelled labeled true truth wrong correct
    correctly mistake mistaken mistook took take takes taken taking similar nearest training shows show showed
    shown suggests suggest means mean looks look looked sees seen likely probably mostly mainly strongest
    strong strongly weak weakly high higher highest lower lowest hidden hiding hide keeping kept keep drops
    drop dropped raises raise raised support supports supported agree agrees disagree disagrees random rely
    relies reason reasons explain explains based rest rests fact facts point points pointed focus focused
    focuses cold left right upper middle center centre bottom corner side half dish dishes noodle noodles
    recognised recognized says said think thinks thought call called because since while although however
    instead also only both each other some most more less than which that this these those where when what
    there their they them with from into onto over under about around across along within without very much
    many well little enough quite rather still even just same different matter matters mattered use used
    uses using chose choose chooses chosen like misclassified misclassification misclassifies""".split()
)
_STOPWORDS = frozenset(
    """about above after again against also among another because been before being below between both
    cannot could does doing down during each even every from further have having here into itself just
    more most much must near nor once only other ought over same shall should some such than that their
    theirs them then there these they this those though through thus under until upon were what when where
    whether which while whom whose will with within would your yours""".split()
)


def _stem(word: str) -> str:
    return word[:5]  # crude, and enough: "classifier", "classified" and "classifies" meet


def foreign_words(text: str, evidence: Evidence) -> tuple[float, list[str]]:
    """The share of `text`'s content words (4+ letters, not stopwords or numbers) found in no evidence line,
    class name or EXPLANATION_WORDS, and those words (distinct, in order of appearance)."""
    vocabulary = {_stem(w) for w in words(" ".join([*evidence.lines(), *evidence.class_names]))}
    vocabulary |= {_stem(w) for w in EXPLANATION_WORDS}
    content = [w for w in words(text) if len(w) >= 4 and w not in _STOPWORDS and not w.isdigit()]
    foreign = [w for w in content if _stem(w) not in vocabulary]
    return len(foreign) / max(1, len(content)), list(dict.fromkeys(foreign))


# ------------------------------------------------------------------------------------------ the gate
_CITATION = re.compile(r"\[\s*(\d+(?:\s*(?:[,;]|–|-|and)\s*\d+)*)\s*\]")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*(?:%|percent\b|per\s+cent\b)", re.I)
_DECIMAL = re.compile(r"(?<![\d.])\d+\.\d+(?!\d|\.\d|\s*%|\s*per)")


def _join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _cited(text: str) -> list[int]:
    numbers = []
    for m in _CITATION.finditer(text):
        for part in re.split(r"\s*(?:[,;]|and)\s*", m.group(1)):
            ends = [int(x) for x in re.split(r"\s*[–-]\s*", part) if x]
            numbers += list(range(ends[0], ends[-1] + 1)) if len(ends) == 2 and ends[0] <= ends[1] else ends
    return numbers


def _repetition_reason(text: str) -> str | None:
    seen: set[tuple[str, ...]] = set()
    for sentence in sentences(text):
        key = tuple(words(sentence))
        if key and key in seen:
            return f'repeats the sentence "{sentence}"'
        seen.add(key)
    ws = words(text)
    grams: set[tuple[str, ...]] = set()
    for i in range(len(ws) - NGRAM + 1):
        gram = tuple(ws[i : i + NGRAM])
        if gram in grams:
            return f'repeats the phrase "{" ".join(gram)}"'
        grams.add(gram)
    return None


def _percentages(text: str) -> list[float]:
    return [float(m.group(1)) for m in _PERCENT.finditer(text)]


def _decimals(text: str) -> list[float]:
    """Numbers written with a decimal point and no percent sign ("0.42", "r = 0.60")."""
    return [float(m.group(0)) for m in _DECIMAL.finditer(text)]


def check_explanation(
    text: str,
    evidence: Evidence,
    max_words: int = MAX_WORDS,
    followup: bool = False,
    finding: Finding | None = None,
    previous: Sequence[str] = (),
) -> GroundingVerdict:
    """Check `text` against `evidence`; each failed check gives one plain reason.

    The checks: it names the predicted class (and, for a mistake, the true one) without swapping them or
    misstating the verdict; names only regions the evidence calls hot, in a sentence about one map only
    that map's, and puts a map's peak or largest share of heat only where its line does
    (`_region_reasons`); names no class the evidence does not involve (`Evidence.involved_classes`); does
    not talk about its instructions ("citing the facts"); has at least MIN_SENTENCES sentences; repeats no
    phrase (a word 4-gram) or sentence; ends on a full sentence; has at most `max_words` words; cites (as
    "[2]") only line numbers that `evidence.lines()` has; quotes only percentages (within one point) and
    decimals (within 0.01) that an evidence line gives; takes at most MAX_FOREIGN of its content words
    from outside the evidence (`foreign_words`), and no sentence more than MAX_FOREIGN_SENTENCE of them.
    max_words: the longest answer accepted, in words (citations not counted).
    A sentence that cites lines may quote only the percentages those lines give (a number put on the
    wrong line is a misattribution).
    followup: an answer to a follow-up question, which need not name the predicted and true classes again
    and may be one sentence long; every other check holds. finding: the test run to answer it (one of
    `evidence.findings`): the answer must cite at least one of its lines. previous: the conversation's
    earlier answers: an answer may not repeat a sentence of one (a small model repeats itself across turns).
    """
    if not text.strip():
        return GroundingVerdict(False, ["is empty"])
    lines = evidence.lines()
    plain = _CITATION.sub(" ", text)  # citations are not words, phrases or numbers of the text
    reasons = _class_reasons(plain, evidence, followup)

    reasons += _region_reasons(text, evidence)

    meta = _META.search(plain)
    if meta:
        said = " ".join(meta.group(0).split())  # the citations taken out leave gaps
        reasons.append(f'talks about the instructions ("{said}") instead of the photo')
    n_sentences = len(sentences(text))
    least = 1 if followup else MIN_SENTENCES
    if n_sentences < least:
        reasons.append(f"has {n_sentences} sentence; an explanation needs at least {least}")
    repeated = _repetition_reason(plain)
    if repeated:
        reasons.append(repeated)
    if not ends_on_sentence(text):
        reasons.append("stops mid-sentence")
    n_words = len(words(plain))
    if n_words > max_words:
        reasons.append(f"is {n_words} words long; the limit is {max_words}")
    bad = sorted({n for n in _cited(text) if not 1 <= n <= len(lines)})
    if bad:
        listed = _join([f"[{n}]" for n in bad])
        reasons.append(f"cites {listed}, but the evidence has lines [1] to [{len(lines)}] only")
    reasons += _foreign_reasons(plain, evidence)
    known = _percentages(" ".join(lines))
    invented = [f"{p:g}%" for p in _percentages(plain) if not any(abs(p - k) <= 1.0 for k in known)]
    known_decimals = _decimals(" ".join(lines))
    invented += [f"{d:g}" for d in _decimals(plain) if not any(abs(d - k) <= 0.01 for k in known_decimals)]
    if invented:
        reasons.append(f"gives {_join(invented)}, which no evidence line gives")
    reasons += _misattributions(text, lines)
    if finding is not None:
        own = evidence.finding_lines(finding)
        if not set(_cited(text)) & set(own):
            span = f"[{own[0]}]" if len(own) == 1 else f"[{own[0]}] to [{own[-1]}]"
            reasons.append(f"does not cite the test's result, {span}")
    said = {
        tuple(words(sentence)) for answer in previous for sentence in sentences(_CITATION.sub(" ", answer))
    }
    again = [x for x in sentences(plain) if tuple(words(x)) in said and words(x)]
    if again:
        reasons.append(f'repeats an earlier answer ("{again[0].strip()}")')
    return GroundingVerdict(not reasons, reasons)


def _foreign_reasons(text: str, evidence: Evidence) -> list[str]:
    """The vocabulary checks: too many foreign words in the whole answer, or else in one sentence of it
    (an invented sentence hides in an answer otherwise close to the lines)."""
    share, foreign = foreign_words(text, evidence)
    if share > MAX_FOREIGN and len(foreign) >= MIN_FOREIGN:
        return [
            f"uses words no evidence line uses ({', '.join(foreign[:4])}): {share:.0%} of its words, "
            "so it may give causes the evidence does not"
        ]
    out = []
    for sentence in sentences(text):
        share, foreign = foreign_words(sentence, evidence)
        if share > MAX_FOREIGN_SENTENCE and len(foreign) >= MIN_FOREIGN:
            listed = ", ".join(foreign[:4])
            out.append(f'says "{sentence}", whose words mostly come from no evidence line ({listed})')
    return out


def _misattributions(text: str, lines: Sequence[str]) -> list[str]:
    """One reason per sentence that cites lines none of which gives a percentage the sentence quotes (one
    that some other line gives: an invented number has its own reason)."""
    known = _percentages(" ".join(lines))
    out = []
    for sentence in sentences(text):
        cited = [n for n in _cited(sentence) if 1 <= n <= len(lines)]
        if not cited:
            continue
        given = _percentages(" ".join(lines[n - 1] for n in cited))
        quoted = [
            p for p in _percentages(_CITATION.sub(" ", sentence)) if any(abs(p - k) <= 1.0 for k in known)
        ]
        wrong = [p for p in quoted if not any(abs(p - k) <= 1.0 for k in given)]
        if wrong:
            where = _join([f"[{n}]" for n in cited])
            out.append(f"cites {where} for {_join([f'{p:g}%' for p in wrong])}, which {where} does not give")
    return out


# ------------------------------------------------------------------------------------------ the template
def _primary(evidence: Evidence) -> str | None:
    if "scorecam" in evidence.facts:
        return "scorecam"
    return next(iter(evidence.facts), None)


def _heat_sentence(evidence: Evidence, method: str | None) -> str:
    if method is None:
        return "No heatmap of this photo is available, so nothing shows where the classifier looked."
    facts = evidence.facts[method]
    label = {"scorecam": "ScoreCAM", "gradcam": "GradCAM"}.get(method, method)
    trust = evidence.trust.get(method)
    if facts.area_above_half == 0.0:
        return f"Its {label} map is empty, so it shows no region that drove the decision."
    shares = facts.region_shares
    hot = [r for r in evidence.hot_regions(method) if r in allowed_regions(evidence)] or [facts.peak_region]
    top = sorted(dict.fromkeys(hot), key=lambda r: -shares.get(r, 0.0))[:2]
    where = f"Its {label} heat is strongest in the {' and '.join(top)}"
    look = evidence.appearance.hot if evidence.appearance is not None else None
    if look is not None and look.colours:
        colours = " and ".join(look.colours[:2])
        texture = {"strand-like edges": "with strand-like edges", "smooth surface": "with a smooth surface"}
        where += f", which looks {colours} {texture.get(look.texture, f'with {look.texture} texture')}"
    if trust is not None and not trust.informative:
        where += ", but this map does no better than a random one, so do not rely on it"
    return where + "."


def _hiding_sentence(evidence: Evidence) -> str | None:
    cf = evidence.counterfactual
    if cf is None or cf.hot_area <= 0:
        return None
    before, after = cf.original[cf.predicted], cf.hidden[cf.predicted]
    if f"{before:.0%}" == f"{after:.0%}":  # the same to the percent: no change worth a direction
        change = f"leaves {cf.predicted} at {before:.0%}"
    else:
        verb = "drops" if after < before else "raises"
        change = f"{verb} {cf.predicted} from {before:.0%} to {after:.0%}"
    new = cf.hidden_prediction
    outcome = f"the prediction stays {new}" if new == cf.predicted else f"the prediction becomes {new}"
    if abs(before - after) < BARELY:
        return f"Hiding that region barely changes anything ({change}), so that region alone does not decide."
    return f"Hiding that region {change}, and {outcome}."


def _neighbours_sentence(evidence: Evidence) -> str | None:
    if not evidence.neighbours:
        return None
    counts: dict[str, int] = {}
    for n in evidence.neighbours:
        counts[n.label] = counts.get(n.label, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])  # stable: nearer photo's label first on ties
    label, count = ranked[0]
    rest = "".join(f", {c} {name}" for name, c in ranked[1:])
    support = "support" if label == evidence.predicted else "do not support"
    return (
        f"{count} of its {len(evidence.neighbours)} nearest training photos are {label}{rest}, so they "
        f"{support} the prediction."
    )


def template_explanation(evidence: Evidence, max_words: int = MAX_WORDS) -> str:
    """2-4 sentences written from `evidence` alone: verdict and confidence; where the heat is and what it
    looks like (with a warning when that map is uninformative); what hiding it did; what the nearest
    training photos are. The last two are left out when they would pass `max_words` words (the first two,
    at most about 45 words, always stay). Passes `check_explanation(text, evidence, max_words)`."""
    pred, true, conf = evidence.predicted, evidence.true_label, f"{evidence.confidence:.0%}"
    if evidence.verdict == "wrong":
        first = f"The classifier took this {true} photo for {pred}, with {conf} confidence."
    elif evidence.verdict == "correct":
        first = f"The classifier correctly recognised {pred}, with {conf} confidence."
    else:
        first = f"The classifier says {pred} with {conf} confidence; the true label is not known."
    out = [first, _heat_sentence(evidence, _primary(evidence))]
    for extra in (_hiding_sentence(evidence), _neighbours_sentence(evidence)):
        if extra is not None and len(words(" ".join([*out, extra]))) <= max_words:
            out.append(extra)
    return " ".join(out)


# ------------------------------------------------------------------------------------------ the retry loop
def finding_answer(evidence: Evidence, finding: Finding) -> str:
    """The template's answer to a follow-up that `finding` (one of `evidence.findings`) answers: its own
    sentences, with the evidence line numbers cited. Passes `check_explanation(..., followup=True)`."""
    numbers = evidence.finding_lines(finding)
    cited = [
        f"{line[:-1]} [{n}]." if line.endswith(".") else f"{line} [{n}]"
        for line, n in zip(finding.lines, numbers, strict=True)
    ]
    return " ".join(cited)


def grounded(
    generate: Callable[[str | None], str],
    evidence: Evidence,
    max_words: int = MAX_WORDS,
    feedback: str = FEEDBACK,
    *,
    followup: bool = False,
    template: str | None = None,
    finding: Finding | None = None,
    previous: Sequence[str] = (),
) -> GroundedText:
    """An explanation that passed the gate: the model's, its retry, or the template's.

    generate(None) is the first draft; if the gate rejects it, generate(message) once more, message being
    `feedback` with the reasons filled in ({reasons}), which the caller appends to the conversation after
    the rejected draft. If the retry fails too, the template (`template_explanation`, or `template` when
    given, e.g. `finding_answer`). followup, finding, previous: as `check_explanation`.
    """
    verdicts: list[GroundingVerdict] = []
    drafts: list[str] = []
    message: str | None = None
    for source in ("llm", "llm_retry"):
        text = generate(message).strip()
        verdict = check_explanation(text, evidence, max_words, followup, finding, previous)
        verdicts.append(verdict)
        if verdict.passed:
            return GroundedText(text, source, verdicts, drafts)
        drafts.append(text)
        message = feedback_message(verdict, feedback)
    fallback = template if template is not None else template_explanation(evidence, max_words)
    return GroundedText(fallback, "template", verdicts, drafts)


def feedback_message(verdict: GroundingVerdict, feedback: str = FEEDBACK) -> str:
    """The user turn that tells a model why its draft was rejected."""
    return feedback.format(reasons="; ".join(verdict.reasons))


def retry_conversation(messages: list[Message], draft: str, message: str) -> list[Message]:
    """`messages` with the rejected draft as the model's turn and the feedback as the next user turn."""
    return [*messages, {"role": "assistant", "content": draft}, {"role": "user", "content": message}]


def grounded_batch(
    backend: Backend,
    conversations: Sequence[list[Message]],
    evidences: Sequence[Evidence],
    max_words: int = MAX_WORDS,
    feedback: str = FEEDBACK,
    **options: Any,
) -> list[GroundedText]:
    """`grounded` for many conversations at once, batched as the backend allows: all first drafts in one
    `generate` call, the retries of the rejected ones in a second. options: `Backend.generate` keywords
    (e.g. `**generation_options(cfg.llm)`)."""
    if len(conversations) != len(evidences):
        raise ValueError(f"{len(conversations)} conversations but {len(evidences)} evidences")
    first = backend.generate(list(conversations), **options)
    verdicts = [check_explanation(t.strip(), e, max_words) for t, e in zip(first, evidences, strict=True)]
    results: list[GroundedText | None] = [
        GroundedText(t.strip(), "llm", [v]) if v.passed else None
        for t, v in zip(first, verdicts, strict=True)
    ]
    todo = [i for i, r in enumerate(results) if r is None]
    retries = [
        retry_conversation(list(conversations[i]), first[i].strip(), feedback_message(verdicts[i], feedback))
        for i in todo
    ]
    second = backend.generate(retries, **options) if retries else []
    for i, text in zip(todo, second, strict=True):
        text = text.strip()
        verdict = check_explanation(text, evidences[i], max_words)
        if verdict.passed:
            results[i] = GroundedText(text, "llm_retry", [verdicts[i], verdict], [first[i].strip()])
        else:
            template = template_explanation(evidences[i], max_words)
            results[i] = GroundedText(template, "template", [verdicts[i], verdict], [first[i].strip(), text])
    return [r for r in results if r is not None]

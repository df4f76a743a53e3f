"""The grounding gate: every explanation is checked against the evidence's claims before anyone reads it.

`check_explanation(text, evidence)` reads the answer once (`noodlenext.llm.reading`) into the kinds of
values the claims hold (`noodlenext.explain.claims`) and compares them; each failed check is one plain
reason naming the sentence's words and the line. Every sentence is linked to the claims it cites (an
uncited sentence, to all of them), and every checkable thing it says must agree with a linked claim:

- classes: the answer names the predicted class (and for a mistake the true one) without swapping them or
  misstating the verdict, blames no class the evidence does not involve, and names another class in a
  sentence only where a linked claim involves it;
- regions: only regions a linked claim calls hot; in a sentence that names a map, only that map's; a peak
  or the largest share of heat only where that map's claim puts it; a region named as cold is not counted;
- numbers: percentages, decimals, fractions in words ("a quarter of the picture", "just over a third") and
  counts ("three of the five", "most of them are udon") must be a linked claim's (a true number of
  another line is a misattribution);
- directions and outcomes: "raises udon", "drops", "more sure", "the prediction switches to ramen",
  "stays udon" must be what a linked claim's edit did;
- what the photo shows: a word of `vocabulary.yaml` (foods, toppings, utensils, tableware, colours,
  textures, lighting, background, ...) must be carried by a claim (the hot region's look, a class name);
- advice: a suggestion is let through only when its source claim is in the evidence (add photos of the
  true class, collect photos of the pair, check the label, do not rely on the map), and none other;
- form: at least MIN_SENTENCES sentences (one for a follow-up), full sentences, at most `max_words`
  words, no repeated phrase or sentence, no talk about the instructions, citations of lines that exist,
  a follow-up cites its test's lines and repeats no earlier answer.

Words of ordinary explanation ("really", "covering", "highlighted", "next step") never count against an
answer. `grounded` asks a model, retries once with the reasons, and falls back to a template written from
the evidence (`noodlenext.explain.templates`); its `source` says whose text it is ("llm", "llm_retry" or
"template").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from noodlenext.explain.claims import Claim
from noodlenext.explain.evidence import BARELY, Evidence, Finding
from noodlenext.explain.templates import MAX_WORDS, photo_template, tested_allowance
from noodlenext.explain.wording import method_name
from noodlenext.llm.base import Backend, LLMError, Message
from noodlenext.llm.reading import (
    CITATION,
    EDIT,
    Amount,
    Counted,
    Said,
    SaidSentence,
    canonical_class,
    cited,
    class_alternation,
    class_mentions,
    clause_span,
    read_answer,
    vocabulary,
)
from noodlenext.llm.structured import SCHEMA, as_text
from noodlenext.llm.text import ends_on_sentence, sentences, words

log = logging.getLogger(__name__)

__all__ = [
    "MAX_WORDS",
    "GroundedText",
    "GroundingVerdict",
    "check_explanation",
    "class_mentions",
    "grounded",
    "grounded_batch",
    "retry_conversation",
]

# A repeated phrase: an 8-word one twice, or a 4-word one three times (a small model's loop; said twice it
# is ordinary English: "of its nearest training photos").
LONG_NGRAM, NGRAM = 8, 4
MIN_SENTENCES = 2  # one sentence restates the verdict at most; the prompt asks for 2 to 4
# Talk about the instructions instead of the photo, as a small model parrots them ("citing the facts you
# use like [2]", "in 2 to 4 short sentences").
_META = re.compile(
    r"\b(?:cit(?:e|es|ed|ing)\s+(?:the\s+|these\s+|those\s+)?(?:facts?|lines?|numbers?)|the\s+facts\s+you\b|"
    r"numbered\s+facts?|\d\s+to\s+\d\s+(?:short\s+)?sentences|short\s+sentences)",
    re.I,
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


def _join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _cite(numbers: Sequence[int]) -> str:
    return _join([f"[{n}]" for n in numbers])


def _quote(sentence: SaidSentence, limit: int = 60) -> str:
    text = " ".join(CITATION.sub("", sentence.text).split())
    return f'"{text if len(text) <= limit else text[: limit - 3].rstrip() + "..."}"'


# ------------------------------------------------------------------------------------------ classes
_BELIEF = re.compile(
    r"\b(?:thinks?|thought|believes?|believed|says?|said|predict\w*|decided?|guess\w*|conclude\w*|"
    r"classif\w*|label\w*|calls?|called|considers?|considered|judged?|sure|confident|if|whether|as|"
    r"training|nearest|neighbou?rs?|similar|other|another|becomes?|became|switch\w*|turns?|into)\b",
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


# "pink is rare in the spaghetti training photos", "a colour the udon photos hardly ever show": which
# class's training photos a colour is said to be unusual for (a format string: {c}, the class names).
_RARE_IN = (
    r"\b(?:rare(?:ly)?|hardly|seldom|never|uncommon|unusual|almost\s+never|barely)\b[^.;]{{0,60}}?"
    r"\b(?P<c>{c})\s+(?:training\s+)?(?:photos|images|pictures|examples)|"
    r"\b(?P<d>{c})\s+(?:training\s+)?(?:photos|images|pictures|examples)[^.;]{{0,40}}?"
    r"\b(?:rarely|hardly|seldom|never|almost\s+never)\b"
)


def _statements(text: str, names: Sequence[str]) -> dict[str, list[Any]]:
    """What `text` says the classifier predicted ("predicted"), what the photo is ("truth"), and the
    (true, predicted) pairs it names as "took X for Y" ("took")."""
    cls = rf"(?P<c>{class_alternation(names)})"
    # What it says about an edited photo is what the prediction becomes, checked as such (reading).
    unedited = " ".join(s for s in sentences(text) if not EDIT.search(s))
    predicted = [
        canonical_class(m.group("c"), names) for m in re.finditer(_PREDICTS + _ARTICLE + cls, unedited, re.I)
    ]
    truth = []
    for m in re.finditer(_IS + _ARTICLE + cls, text, re.I):
        clause = re.split(r"[;:.!?]|\b(?:but|however|although|though|while|whereas)\b", text[: m.start()])[-1]
        if not _BELIEF.search(clause):  # "sure, about 83%, that this udon photo was ramen": a belief
            truth.append(canonical_class(m.group("c"), names))
    alt = class_alternation(names)
    took = [
        (canonical_class(m.group("x"), names), canonical_class(m.group("y"), names))
        for m in re.finditer(
            rf"{_TOOK}(?P<x>{alt})\s+(?:(?:dish|photo|picture|image|bowl)\s+)?for\s+{_ARTICLE}(?P<y>{alt})",
            text,
            re.I,
        )
    ]
    return {"predicted": predicted, "truth": truth, "took": took}


def _class_reasons(text: str, evidence: Evidence, followup: bool) -> list[str]:
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
    said = _statements(text, names)
    compared = {str(c.fields.get("truth")) for c in evidence.claims() if c.kind == "occlusion_look"}
    for m in re.finditer(_RARE_IN.format(c=class_alternation(names)), text, re.I):
        cls = canonical_class(m.group("c") or m.group("d"), names)
        if cls not in compared:
            return [
                f"says a colour is rare in the {cls} training photos, which no evidence line compares with"
            ]
    for cls in said["predicted"]:
        if cls != pred:
            return [f"says the classifier predicted {cls}, but it predicted {pred}"]
    for cls in said["truth"]:
        if true is None and cls != pred:
            return [f"says the photo is {cls}, but its true label is not known"]
        if true is not None and cls != true:
            return [f"says the photo is {cls}, but its true label is {true}"]
    for x, y in said["took"]:
        if true is not None and (x, y) != (true, pred):
            return [f"says the classifier took {x} for {y}, but it took {true} for {pred}"]
    if not followup and evidence.summary:  # a group: the pair it is about, by either class
        if pred not in mentioned and true not in mentioned:
            return [f"names neither {true} nor {pred}, the pair the group is about"]
    elif not followup and pred not in mentioned:
        return [f"does not name the predicted class, {pred}"]
    elif not followup and evidence.verdict == "wrong" and true not in mentioned:
        return [f"does not name the true class, {true}"]
    involved = set(evidence.involved_classes())
    stray = [n for n in names if n in mentioned and n not in involved]
    if stray:
        return [f"blames {_join(stray)}, which the evidence does not involve"]
    return []


# ------------------------------------------------------------------------------------------ one sentence
class _Sentence:
    """A sentence of the answer and the claims it is checked against: each thing it says is linked to the
    lines that its part of the sentence cites ("A [5], while B [6]": A to [5], B to [6]), or to all the
    claims where the sentence cites none."""

    def __init__(self, said: SaidSentence, claims: list[Claim], evidence: Evidence) -> None:
        self.said, self.evidence, self.all = said, evidence, claims
        valid = [n for n in said.cited if 1 <= n <= len(claims)]
        self.numbers = valid
        self.linked = [claims[n - 1] for n in valid] if valid else list(claims)
        self.where = f" citing {_cite(valid)}" if valid else ""

    def at(self, mention: Said) -> tuple[list[int], list[Claim]]:
        """The lines, and their claims, that the part of the sentence holding `mention` cites."""
        numbers = [n for n in self.said.cites_at(mention.start) if 1 <= n <= len(self.all)]
        return (numbers, [self.all[n - 1] for n in numbers]) if numbers else ([], list(self.all))

    def misplaced(self, what: str, test: Callable[[Claim], bool], mention: Said) -> str:
        """The reason for something no linked claim says: another line's (a misattribution), or none."""
        numbers = self.at(mention)[0]
        others = [n for n, c in enumerate(self.all, 1) if n not in numbers and test(c)] if numbers else []
        if others:
            return f"{_quote(self.said)} cites {_cite(numbers)} for {what}, which {_cite(others)} gives"
        return f"{_quote(self.said)} says {what}, which no evidence line{' cited' if numbers else ''} gives"


def _amount_fits(amount: Amount, claim: Claim, unit: str, shares: bool = False) -> bool:
    """Whether a number read from an answer is one the claim states: a decimal within its last place; a
    percentage, fraction or "N points" within what its words allow, of the class it names if it names one;
    shares: a count's share counts too ("half of them", "a third of the photos")."""
    if unit == "decimal":
        return any(q.unit == "decimal" and amount.low <= q.value <= amount.high for q in claim.quantities)
    if unit == "points":
        values = [abs(round(100 * m.after) - round(100 * m.before)) for m in claim.moves]
        values += [q.value for q in claim.quantities if q.of == "points"]
    else:
        of = amount.of
        values = [q.value for q in claim.quantities if q.unit == "percent" and _same_of(of, q.of)]
        if shares:
            values += [100 * c.n / c.of for c in claim.counts if c.of and (of is None or c.label == of)]
    return any(amount.low - 1e-9 <= v <= amount.high + 1e-9 for v in values)


def _same_of(said: str | None, stated: str) -> bool:
    """Whether a number said to be of `said` (None: of nothing said; a class; "area"; "share", or
    "share:<regions>" for a share of heat in those regions) may be the claim's number of `stated`."""
    if said is None:
        return True
    if said.startswith("share"):
        if not stated.startswith("share"):
            return False
        regions = said.partition(":")[2]
        return not regions or stated.partition(":")[2] in regions.split("|")
    return said == stated


def _count_fits(counted: Counted, claim: Claim, classes: set[str]) -> bool:
    for c in claim.counts:
        if counted.label is not None and c.label in classes and c.label != counted.label:
            continue
        if counted.label is not None and c.label not in classes and c.label:
            continue  # a count of regions or colours is not a count of a class
        if counted.majority:
            if 2 * c.n > c.of:
                return True
            continue
        if counted.n is not None and counted.of is not None:
            if c.n == counted.n and c.of == counted.of:
                return True
        elif counted.n is not None:
            if c.n == counted.n:
                return True
        elif counted.of is not None and counted.of in (c.of, c.n):
            return True
    return False


def _moves_fit(direction: str, cls: str | None, claim: Claim) -> bool:
    for m in claim.moves:
        if cls is not None and m.cls != cls:
            continue
        if direction == m.direction or (direction == "stays" and abs(m.after - m.before) < BARELY):
            return True
    return False


def _number_reasons(s: _Sentence, classes: set[str]) -> list[str]:
    out = []
    # A group's size ("5 of the 13 spaghetti photos") frames any sentence about it, whatever it cites.
    framing = [c for c in s.all if c.kind == "group_size"]
    for said in s.said.said:
        linked = s.at(said)[1]
        if said.kind in ("percent", "fraction", "decimal", "points"):
            unit = {"decimal": "decimal", "points": "points"}.get(said.kind, "percent")
            shares = said.kind == "fraction"  # "half of them": a count's share; "50%" must be stated
            if not any(_amount_fits(said.value, c, unit, shares) for c in linked):
                of = said.value.of
                whose = f" for {of}" if of and of not in said.text else ""
                test = lambda c, a=said.value, u=unit, k=shares: _amount_fits(a, c, u, k)  # noqa: E731
                out.append(s.misplaced(f'"{said.text}"{whose}', test, said))
        elif said.kind == "count":
            counted: Counted = said.value
            if not any(c.counts for c in linked) and counted.label is None:
                continue  # "both photos", "5 nearest photos" where no line counts: not a claim to check
            if not any(_count_fits(counted, c, classes) for c in [*linked, *framing]):
                what = f'"{said.text}"' + (f" ({counted.label})" if counted.label else "")
                out.append(s.misplaced(what, lambda c, k=counted: _count_fits(k, c, classes), said))
    return out


def _change_reasons(s: _Sentence) -> list[str]:
    out = []
    for said in s.said.of("direction"):
        direction, cls = said.value
        numbers, linked = s.at(said)
        where = f" citing {_cite(numbers)}" if numbers else ""
        if any(_moves_fit(direction, cls, c) for c in linked):
            continue
        if not any(c.moves for c in linked) and cls is None:
            continue  # a direction with no class, and no linked edit: nothing it could be about
        whose = f" {cls}" if cls else ""
        stated = [m for c in linked for m in c.moves if cls is None or m.cls == cls]
        if stated:
            truth = stated[0]
            named = f" {cls}" if cls and cls not in said.text else ""
            change = f"{truth.direction} {truth.cls} ({truth.before:.0%} to {truth.after:.0%})"
            said_it = f'{_quote(s.said)} says "{said.text}"{named}'
            out.append(f"{said_it}, but the evidence{where} says it {change}")
        else:
            out.append(
                s.misplaced(f'"{said.text}"{whose}', lambda c, d=direction, k=cls: _moves_fit(d, k, c), said)
            )
    for said in s.said.of("contrast"):
        a, b = said.value
        numbers, linked = s.at(said)
        weighed = [c for c in linked if "other" in c.fields and "predicted" in c.fields]
        if not weighed or any((c.fields["predicted"], c.fields["other"]) == (a, b) for c in weighed):
            continue
        if any((c.fields["predicted"], c.fields["other"]) == (b, a) for c in weighed):
            where = f" citing {_cite(numbers)}" if numbers else ""
            out.append(f"{_quote(s.said)} weighs {a} over {b}, but the evidence{where} weighs {b} over {a}")
    for said in s.said.of("becomes"):
        kind, cls = said.value
        numbers, linked = s.at(said)
        if any(cls in c.becomes for c in linked):
            continue
        outcomes = [b for c in linked for b in c.becomes]
        if outcomes:
            verb = "stays" if kind == "stays" else "becomes"
            out.append(
                f"{_quote(s.said)} says the prediction {verb} {cls}, but the evidence"
                f"{f' citing {_cite(numbers)}' if numbers else ''} says it "
                f"becomes {_join(list(dict.fromkeys(outcomes)))}"
            )
        else:
            out.append(s.misplaced(f"the prediction {kind} {cls}", lambda c, k=cls: k in c.becomes, said))
    return out


def _class_in_sentence(s: _Sentence, evidence: Evidence) -> list[str]:
    """A class other than the predicted and true one may be named only where a linked claim involves it."""
    context = {evidence.predicted, evidence.true_label, evidence.contrast_class}
    involved = set(evidence.involved_classes())  # an uninvolved class has its own reason
    out = []
    for said in s.said.of("class"):
        if said.value in context or said.value not in involved:
            continue
        if any(said.value in c.classes for c in s.at(said)[1]):
            continue
        out.append(s.misplaced(said.value, lambda c, k=said.value: k in c.classes, said))
    return list(dict.fromkeys(out))


# ------------------------------------------------------------------------------------------ regions
_POINT = re.compile(r"\b(?:peak\w*|hot\s*spots?|maxim\w+)\b", re.I)
_HOTTEST = re.compile(r"\b(?:hottest|strongest|brightest|most\s+intense)\b", re.I)
_MOST = re.compile(
    r"\b(?:most|largest|biggest|greatest|main)\s+(?:share\s+)?(?:of\s+)?(?:the\s+|its\s+|[\w-]+'s\s+)?heat\b|"
    r"\b(?:largest|biggest|greatest)\s+share\b",
    re.I,
)
_AND = re.compile(r"\s*,?\s*(?:and|or|&)\s+(?:the\s+)?(?:very\s+|far\s+)?", re.I)
_MAP_KINDS = {"map", "contrastive", "why_not_where", "which_heat", "group_hot"}


def _map_label(method: str | None) -> str:
    return method_name(method) if method else "the map"


def _region_reasons(s: _Sentence) -> list[str]:
    """A sentence names only regions its linked claims call hot; a sentence about a map (it names it, or
    cites its line), only that map's; a peak or the largest share only where that map's claim (a linked
    one, else any) puts it. A region named as cold is not counted."""
    mentions = [m for m in s.said.of("region") if not m.cold]
    named = {m.value for m in s.said.of("map")}
    stray: dict[str, list[str]] = {}
    for mention in mentions:
        numbers, linked = s.at(mention)
        linked = linked if numbers else []  # cites no line there: about no one map
        about = named or {c.map for c in linked if c.kind in ("map", "contrastive") and c.map}
        if about:
            pool = [c for c in s.all if c.map in about]
        else:
            pool = [c for c in linked if c.regions] or [c for c in s.all if c.regions]
        if mention.value & {r for c in pool for r in c.regions}:
            continue
        whose = (
            f" for {_join([_map_label(m) for m in sorted(about)])}, whose line does not call it hot"
            if about
            else ", which the evidence does not call hot"
        )
        stray.setdefault(whose, []).append(mention.text.lower())
    out = [
        f"names {_join([f'the {t}' for t in dict.fromkeys(said)])}{whose}" for whose, said in stray.items()
    ]
    linked_maps = [c for c in s.linked if c.kind in _MAP_KINDS] if s.said.cited else []
    placed = [c for c in s.all if c.map in named] if named else linked_maps
    placed = [c for c in placed if c.kind in _MAP_KINDS and (c.peak or c.top)]
    placed = placed or [c for c in s.all if c.kind in _MAP_KINDS and (c.peak or c.top)]
    text = s.said.plain
    # "Peak" is the hottest point; "most heat" the largest share; "hottest"/"strongest" either of them.
    for claim_word, what in ((_POINT, "peak"), (_HOTTEST, "hottest part"), (_MOST, "largest share of heat")):
        where = {
            c.map: [
                p
                for p in (
                    (c.peak,)
                    if claim_word is _POINT
                    else (c.top,)
                    if claim_word is _MOST
                    else (c.peak, c.top)
                )
                if p
            ]
            for c in placed
        }
        places = {p for ps in where.values() for p in ps}
        if not places:
            continue
        for word in claim_word.finditer(text):
            start, end = clause_span(text, word.start())
            here = [m for m in mentions if start <= m.start < end]
            if claim_word is _POINT:
                here = _named_at(here, word.end(), text)
                wrong = [m for m in here if not m.value & places]
            else:
                wrong = [] if any(m.value & places for m in here) else here[:1]
            whose = _join([f"{_map_label(m)}'s {what} in the {_join(ps)}" for m, ps in where.items() if ps])
            for m in wrong:
                out.append(f"puts the {what} at the {m.text.lower()}, but the evidence puts {whose}")
    return list(dict.fromkeys(out))


def _named_at(mentions: list[Said], after: int, text: str) -> list[Said]:
    """The places a peak word points at: the first mention after it and those joined to it by "and"/"or"
    (else the last mention before it: "the upper left is the peak")."""
    later = [m for m in mentions if m.start >= after]
    if not later:
        return mentions[-1:]
    chain = later[:1]
    for m in later[1:]:
        if not _AND.fullmatch(text, chain[-1].end, m.start):
            break
        chain.append(m)
    return chain


# ------------------------------------------------------------------------------------------ the photo's look
def _visual_reasons(s: _Sentence, evidence: Evidence, looks: set[str]) -> list[str]:
    """Words describing the photo must be carried by a claim: its look words, or a class name."""
    words, licensed_by = vocabulary()
    classes = {n.lower() for n in evidence.class_names}
    bad: dict[str, list[str]] = {"photo": [], "model": []}
    for said in s.said.of("visual"):
        word = said.value
        if word in looks or word in classes or said.text.lower() in classes:
            continue
        if any(w in looks or w in classes for w in licensed_by.get(word, ())):
            continue
        bad["model" if words.get(word) == "model" else "photo"].append(said.text.lower())
    what = {"photo": "describes the photo with", "model": "speaks of how the model works with"}
    return [
        f"{_quote(s.said)} {what[k]} {_join([repr(w) for w in dict.fromkeys(ws)])}, which no evidence line "
        "measures"
        for k, ws in bad.items()
        if ws
    ]


# ------------------------------------------------------------------------------------------ advice
def _advice_reasons(s: _Sentence, evidence: Evidence, claims: list[Claim]) -> list[str]:
    kind = s.said.advice
    if kind is None:
        return []
    advice = [c for c in claims if c.kind == "advice"]
    sources = {c.advice for c in advice}
    asked = set(s.said.advice_classes)
    if kind == "distrust_map":
        untrusted = {c.map for c in claims if c.verdict in ("uninformative", "half")} | {
            c.map for c in advice if c.advice == "distrust_map"
        }
        named = {m.value for m in s.said.of("map")}
        if untrusted and (not named or named & untrusted or None in untrusted):
            return []
        return [f"{_quote(s.said)} advises distrusting a map that the evidence finds informative"]
    if kind == "check_label":
        if "check_label" in sources:
            return []
        return [f"{_quote(s.said)} suggests checking the label, but no cross-validation flags it"]
    if kind in ("add_photos", "collect_pair"):
        for c in advice:
            if c.advice == "add_photos" and asked <= {c.fields["true"]} and (asked or kind == "add_photos"):
                return []
            if c.advice == "collect_pair" and asked <= {c.fields["true"], c.fields["predicted"]}:
                return []
        targets = [c.fields["true"] for c in advice if c.advice == "add_photos"]
        if targets:
            return [
                f"{_quote(s.said)} suggests photos of {_join(sorted(asked)) or 'other classes'}, but the "
                f"evidence supports adding {targets[0]} photos"
            ]
        return [f"{_quote(s.said)} suggests collecting photos, which no evidence line supports"]
    if any(c.kind == "tested_fix" for c in s.linked) and s.numbers:
        return []  # the fix a retrain proved, citing the line that reports it (its numbers checked apart)
    return [f"{_quote(s.said)} gives advice that no evidence line supports"]


# ------------------------------------------------------------------------------------------ a tested fix
_RETRAIN = re.compile(
    r"\b(?:re-?train\w*|(?:taught|trained)\s+again|(?:was|were)\s+shown\s+to|proven|proved)\b", re.I
)
_RETRAIN_RESULT = re.compile(
    r"\b(?:retrained|raised|improved|lowered|fixed|gave|increased|reduced|lifted|corrected|boosted|helped|"
    r"(?:was|were)\s+shown\s+to|proven|proved)\b",
    re.I,
)
_ACCURACY_DOWN = re.compile(
    r"\b(?:lower\w*|cut\w*|reduc\w*|drop\w*|decreas\w*|worsen\w*|hurt\w*)\s+(?:(?:the|its|overall|test)\s+)*"
    r"accuracy\b|\baccuracy\s+(?:fell|dropped|decreased|went\s+down)\b",
    re.I,
)


_SEEDS = re.compile(r"\b(\d+)\s+(?:seeds?|runs|retrains|trainings)\b", re.I)
# "… and corrected this very photo to udon": the line reports the test set's accuracy and recall, not one
# photo's fate.
_THIS_PHOTO = re.compile(
    r"\b(?:correct\w*|fix\w*|got|gets|turn\w*|classif\w*|call\w*|label\w*)\s+(?:\w+\s+){0,2}?this\s+(?:very\s+)?"
    r"(?:photo|image|picture|one)\b",
    re.I,
)


def _tested_reasons(s: _Sentence, claims: list[Claim]) -> list[str]:
    """What a sentence says of a retrain is what the tested-fix line reports, no more: it cites that line
    (or carries its numbers), says nothing more of a retrain after them ("…, and it was shown to reduce the
    reliance on colour"), and never that the fix lowered test accuracy (a fix is cited only when it raised
    it)."""
    text = s.said.plain
    mentions = list(_RETRAIN.finditer(text))
    if not mentions:
        return []
    lines = [n for n, c in enumerate(claims, 1) if c.kind == "tested_fix"]
    if not lines or not set(s.said.cited) & set(lines):
        if _RETRAIN_RESULT.search(text):  # advice ("retrain with more udon photos") is checked as advice
            return [f"{_quote(s.said)} reports a retrain's result, which no evidence line cited reports"]
        return []
    # after the line's numbers (or, with none, after its citation) a sentence says no more of a retrain
    digits = [m.end() for m in re.finditer(r"\d", text)]
    cites = [m.end() for m in CITATION.finditer(s.said.text) if set(cited(m.group(0))) & set(lines)]
    last = max(digits or cites)
    out = []
    if any(m.start() > last for m in mentions):
        out.append(f"{_quote(s.said)} says more of the retrain than its line reports")
    if _ACCURACY_DOWN.search(text):
        out.append(f"{_quote(s.said)} says the fix lowered test accuracy; its line says it raised it")
    seeds = {c.fields.get("seeds") for c in claims if c.kind == "tested_fix"}
    for m in _SEEDS.finditer(text):
        if int(m.group(1)) not in seeds:
            out.append(
                f"{_quote(s.said)} says the retrain ran {m.group(0)}; its line says {_join(sorted(seeds))}"
            )
    if _THIS_PHOTO.search(text):
        out.append(
            f"{_quote(s.said)} says what the retrain did to this photo; its line reports accuracy only"
        )
    return out


# ------------------------------------------------------------------------------------------ trust
_VERDICTS = ("informative", "uninformative", "half")
# A random map enters an answer only as the trust check's yardstick ("beats a random map", "no better than
# chance"); "the maps are based on a random map" (SmolLM2) is no such statement.
_RANDOM_MAP = re.compile(r"\b(?:random|chance)\b", re.I)
# "without the random picture alterations" (a tested fix that turned augmentation off) is no map
_RANDOM_CHANGES = re.compile(
    r"\brandom\s+(?:\w+\s+){0,2}?(?:alteration|change|edit|transform|augment|crop|flip|jitter|eras)\w*", re.I
)


def _map_trust(claims: list[Claim]) -> dict[str, set[str]]:
    """What the evidence says of each map against a random one: {method: {"informative"} or
    {"uninformative"}}, both for a group whose maps beat random in exactly half of the photos."""
    out: dict[str, set[str]] = {}
    for c in claims:
        if c.kind == "trust":
            for m in c.fields.get("maps", []):
                out.setdefault(m["method"], set()).add("informative" if m["informative"] else "uninformative")
        elif c.kind in ("map", "group_trust") and c.map and c.verdict in _VERDICTS:
            both = c.verdict == "half"
            out.setdefault(c.map, set()).update({"informative", "uninformative"} if both else {c.verdict})
        elif c.kind == "advice" and c.advice == "distrust_map" and c.map:
            out.setdefault(c.map, set()).add("uninformative")
    return out


def _trust_reasons(s: _Sentence, truth: dict[str, set[str]], legacy: bool) -> list[str]:
    """A map said to beat a random map (or not to) must be one the trust check says so of: the maps the
    clause names, else those of the lines it cites, else any map (each of them, for "both", "neither",
    "the maps")."""
    out = []
    for said in s.said.of("trust"):
        verdict, named, every = said.value
        if verdict == "counted":
            continue
        want = "uninformative" if verdict == "random" else "informative"
        numbers, linked = s.at(said)
        cited = {c.map for c in linked if c.map in truth} | {
            m["method"] for c in linked if c.kind == "trust" for m in c.fields.get("maps", [])
        }
        target = list(named) if named else sorted(cited) if numbers and cited else sorted(truth)
        known = [m for m in target if m in truth]
        what = "does no better than a random map" if verdict == "random" else "beats a random map"
        if not known:
            if not legacy:
                out.append(f"{_quote(s.said)} says a map {what}, which no evidence line gives")
            continue
        if (all if every else any)(want in truth[m] for m in known):
            continue
        names = _join([method_name(m) for m in known])
        out.append(
            f"{_quote(s.said)} says {'each of ' if every and len(known) > 1 else ''}{names} {what}, "
            f"which the trust check does not find"
        )
    return out


def _map_state_reasons(s: _Sentence, claims: list[Claim], legacy: bool) -> list[str]:
    """ "The map is empty" only where a map is; "no heatmap is available" only where there is none."""
    maps = [c for c in claims if c.kind == "map"]
    out = []
    for said in s.said.of("map_state"):
        if legacy or (said.value == "empty" and any(c.fields.get("empty") for c in maps)):
            continue
        if said.value == "none" and not maps:
            continue
        what = "a map is empty" if said.value == "empty" else "no heatmap is available"
        out.append(f"{_quote(s.said)} says {what}, which no evidence line gives")
    return out


def _no_fix_reasons(s: _Sentence, claims: list[Claim]) -> list[str]:
    """ "The facts suggest no fix" is wrong where a line suggests one."""
    if not s.said.of("no_fix"):
        return []
    # A fix, not the caution about a map.
    lines = [n for n, c in enumerate(claims, 1) if c.advice and c.advice != "distrust_map"]
    return [f"{_quote(s.said)} says no fix is suggested, but {_cite(lines)} suggests one"] if lines else []


# A reason given: what follows must state something a line states ("since 4 of its 5 nearest training
# photos are udon"), not only a class ("because the training set has few ramen photos taken from above").
# Of the 87 such clauses in the benchmark's faithful and erroneous answers, none states nothing.
_CAUSE = re.compile(
    r"\b(?:because(?:\s+of)?|since|due\s+to|owing\s+to|as\s+a\s+result\s+of|thanks\s+to|given\s+that|"
    r"which\s+(?:is\s+why|explains|means)|(?:that|this)\s+is\s+why|that's\s+why|the\s+reason\s+is|"
    r"caused\s+by|driven\s+by|based\s+on)\b",
    re.I,
)


def _statements_of(said: SaidSentence) -> list[Said]:
    """What a sentence states beyond naming classes and maps (a class name is a food word too: alone it is
    only a class)."""
    named = [(x.start, x.end) for x in said.of("class")]
    return [
        x
        for x in said.said
        if x.kind not in ("class", "map")
        and not (x.kind == "visual" and any(a <= x.start < b for a, b in named))
    ]


def _cause_reasons(said: SaidSentence) -> list[str]:
    if not ends_on_sentence(said.text):
        return []  # an unfinished sentence has its own reason
    out = []
    for m in _CAUSE.finditer(said.plain):
        end = max(clause_span(said.plain, m.end() + 1)[1], m.end())
        stated = [x for x in _statements_of(said) if m.end() <= x.start < end]
        if not stated and said.advice is None:
            clause = " ".join(said.plain[m.start() : end].split())
            out.append(f'{_quote(said)} gives a reason ("{clause}") that no evidence line states')
    return out


# The training as a cause: "its training set had blue backgrounds", "it saw too few spaghetti photos during
# training". Only the nearest training photos and the colours compared with the training photos measure
# anything about the training data; a suggestion to add photos to it is advice, not a cause.
_TRAINING = re.compile(
    r"\b(?:training\s+(?:set|data)|during\s+(?:its\s+)?training|(?:was|were)\s+trained|learn(?:ed|t)\s+from)\b",
    re.I,
)
_TRAINING_KINDS = ("neighbours", "group_neighbours", "occlusion_look", "similar_counts", "similar_majority")


def _training_reasons(said: SaidSentence, claims: list[Claim]) -> list[str]:
    m = _TRAINING.search(said.plain)
    if m is None or said.advice is not None:
        return []
    cited = [claims[n - 1] for n in said.cited if 0 < n <= len(claims)]
    if any(c.kind in _TRAINING_KINDS for c in cited):
        return []
    what = m.group(0)
    return [f'{_quote(said)} gives the training ("{what}") as a cause, which no line it cites measures']


_BELIEVES = re.compile(
    r"\b(?:sure|confident|certain|thinks?|thought|believ\w*|guess\w*|decided?|call(?:s|ed)?|predict\w*|"
    r"classif(?:y|ies|ied|ying|ication)|label(?:s|ed|led)?)\b",
    re.I,
)


# The claims of an edit of the photo: hiding or keeping the hot region, and the probes that hide parts.
_EDIT_KINDS = {
    "occlusion",
    "whole_photo",
    "whole_photo_none",
    "group_occlusion",
    "group_whole_photo",
    "group_whole_photo_none",
    "hiding",
    "keeping",
    "group_hiding",
    "group_keeping",
    "why_not_hidden",
    "change_none",
    "change_at",
    "which_part",
    "which_flip",
    "mirror",
}


def _says_nothing(said: SaidSentence, evidence: Evidence) -> bool:
    """A sentence that states no region, number, count, change, look, trust or advice of the evidence, and
    whose classes are not a statement of the verdict ("took this ramen photo for udon", "the photo is
    ramen", "it was wrong"), can only carry a cause nobody measured ("based on data it never saw"). Every
    faithful answer of the benchmark's 219 states something in each sentence."""
    kinds = {x.kind for x in said.said if x.kind == "class"} | {x.kind for x in _statements_of(said)}
    if "edit" in kinds and not any(c.kind in _EDIT_KINDS for c in evidence.claims()):
        kinds.discard("edit")  # an edit the evidence never made states nothing it measured

    if kinds - {"class"}:
        return False
    if kinds and (
        any(_statements(said.plain, evidence.class_names).values())
        or _SAYS_WRONG.search(said.plain)
        or _SAYS_RIGHT.search(said.plain)
        or _BELIEVES.search(said.plain)  # "sure this was spaghetti": the prediction, as a belief
        or re.search(_IS + _ARTICLE + rf"(?:{class_alternation(evidence.class_names)})\b", said.plain, re.I)
    ):
        return False
    return True


# ------------------------------------------------------------------------------------------ the gate
def _repetition_reason(text: str) -> str | None:
    seen: set[tuple[str, ...]] = set()
    for sentence in sentences(text):
        key = tuple(words(sentence))
        if key and key in seen:
            return f'repeats the sentence "{sentence}"'
        seen.add(key)
    ws = words(text)
    for n, most in ((LONG_NGRAM, 1), (NGRAM, 2)):
        counts: dict[tuple[str, ...], int] = {}
        for i in range(len(ws) - n + 1):
            gram = tuple(ws[i : i + n])
            counts[gram] = counts.get(gram, 0) + 1
            if counts[gram] > most:
                return f'repeats the phrase "{" ".join(gram)}"'
    return None


def check_explanation(
    text: str,
    evidence: Evidence,
    max_words: int = MAX_WORDS,
    followup: bool = False,
    finding: Finding | None = None,
    previous: Sequence[str] = (),
) -> GroundingVerdict:
    """Check `text` against `evidence`'s claims (see the module docstring); each failed check gives one
    plain reason. max_words: the longest answer accepted, in words (citations not counted). followup: an
    answer to a follow-up question, which need not name the predicted and true classes again and may be
    one sentence long. finding: the test run to answer it (one of `evidence.findings`): the answer must
    cite at least one of its lines. previous: the conversation's earlier answers: an answer may not repeat
    a sentence of one."""
    if not text.strip():
        return GroundingVerdict(False, ["is empty"])
    claims = evidence.claims()
    plain = CITATION.sub(" ", text)
    reasons = _class_reasons(plain, evidence, followup)
    read = read_answer(text, evidence.class_names)
    looks = {w for c in claims for w in c.looks}
    classes = set(evidence.class_names)
    truth, legacy = _map_trust(claims), any(c.kind == "legacy" for c in claims)
    for said in read:
        s = _Sentence(said, claims, evidence)
        for reason in (
            _class_in_sentence(s, evidence)
            + _region_reasons(s)
            + _number_reasons(s, classes)
            + _change_reasons(s)
            + _visual_reasons(s, evidence, looks)
            + _advice_reasons(s, evidence, claims)
            + _tested_reasons(s, claims)
            + _trust_reasons(s, truth, legacy)
            + _map_state_reasons(s, claims, legacy)
            + _no_fix_reasons(s, claims)
        ):
            if reason not in reasons:
                reasons.append(reason)
        if _RANDOM_MAP.search(_RANDOM_CHANGES.sub(" ", said.plain)) and not said.of("trust"):
            reasons.append(
                f"{_quote(said)} speaks of a random map without saying whether a map beats it, as the trust "
                "check does"
            )
        caused = _cause_reasons(said) or _training_reasons(said, claims)
        reasons += [r for r in caused if r not in reasons]
        if not caused and not followup and said.advice is None and _says_nothing(said, evidence):
            reasons.append(f"{_quote(said)} says nothing that an evidence line says")
    meta = _META.search(plain)
    if meta:
        reasons.append(
            f'talks about the instructions ("{" ".join(meta.group(0).split())}") instead of the photo'
        )
    least = 1 if followup else MIN_SENTENCES
    if len(read) < least:
        reasons.append(f"has {len(read)} sentence; an explanation needs at least {least}")
    repeated = _repetition_reason(plain)
    if repeated:
        reasons.append(repeated)
    if not ends_on_sentence(text):
        reasons.append("stops mid-sentence")
    n_words = len(words(plain))
    limit = max_words + tested_allowance(claims)
    if n_words > limit:
        reasons.append(f"is {n_words} words long; the limit is {limit}")
    bad = sorted({n for s in read for n in s.cited if not 1 <= n <= len(claims)})
    if bad:
        reasons.append(f"cites {_cite(bad)}, but the evidence has lines [1] to [{len(claims)}] only")
    if finding is not None:
        own = evidence.finding_lines(finding)
        if not {n for s in read for n in s.cited} & set(own):
            span = f"[{own[0]}]" if len(own) == 1 else f"[{own[0]}] to [{own[-1]}]"
            reasons.append(f"does not cite the test's result, {span}")
    said_before = {tuple(words(x)) for answer in previous for x in sentences(CITATION.sub(" ", answer))}
    again = [x for x in sentences(plain) if tuple(words(x)) in said_before and words(x)]
    if again:
        reasons.append(f'repeats an earlier answer ("{again[0].strip()}")')
    return GroundingVerdict(not reasons, reasons)


# ------------------------------------------------------------------------------------------ the retry loop
Check = Callable[[str], GroundingVerdict]


def feedback_message(verdict: GroundingVerdict, feedback: str) -> str:
    """The user turn that tells a model why its draft was rejected ({reasons} in `feedback`)."""
    return feedback.format(reasons="; ".join(verdict.reasons))


def retry_conversation(messages: list[Message], draft: str, message: str) -> list[Message]:
    """`messages` with the rejected draft as the model's turn and the feedback as the next user turn."""
    return [*messages, {"role": "assistant", "content": draft}, {"role": "user", "content": message}]


def grounded(
    generate: Callable[[str | None], str], check: Check, template: Callable[[], str], feedback: str
) -> GroundedText:
    """An explanation that passed `check`: the model's, its retry, or `template()`'s.

    generate(None) is the first draft; if the check rejects it, generate(message) once more, message being
    `feedback` with the reasons filled in ({reasons}), which the caller appends to the conversation after
    the rejected draft. If the retry fails too, the template."""
    verdicts: list[GroundingVerdict] = []
    drafts: list[str] = []
    message: str | None = None
    for source in ("llm", "llm_retry"):
        text = generate(message).strip()
        verdict = check(text)
        verdicts.append(verdict)
        if verdict.passed:
            return GroundedText(text, source, verdicts, drafts)
        drafts.append(text)
        message = feedback_message(verdict, feedback)
    return GroundedText(template(), "template", verdicts, drafts)


def with_instruction(messages: list[Message], instruction: str) -> list[Message]:
    """The conversation with `instruction` added to its last user turn (text after any images)."""
    *head, last = messages
    content = last["content"]
    if isinstance(content, str):
        return [*head, {**last, "content": f"{content}\n{instruction}"}]
    return [*head, {**last, "content": [*content, {"type": "text", "text": instruction}]}]


def drafts(
    backend: Backend, conversations: Sequence[list[Message]], structured: str | None, **options: Any
) -> list[tuple[str, str]]:
    """Each conversation's reply as (the text the gate reads and a reader sees, the reply as written).

    structured: the instruction that asks for sentences with their citations as JSON (the prompt
    settings' `structured`); with it, a backend that can constrain its output to `structured.SCHEMA` is
    asked so (the instruction added to the last turn), and the JSON read back as text (`as_text`). A
    backend that cannot, or a server that refuses, answers in plain text."""
    if structured and backend.supports_schema:
        asked = [with_instruction(list(c), structured) for c in conversations]
        try:
            return [(as_text(r), r) for r in backend.generate_json(asked, SCHEMA, **options)]
        except LLMError as err:
            log.warning("%s: no structured answer (%s); asking for plain text", backend.name, err)
    return [(t.strip(), t.strip()) for t in backend.generate(list(conversations), **options)]


def grounded_batch(
    backend: Backend,
    conversations: Sequence[list[Message]],
    checks: Sequence[Check],
    templates: Sequence[Callable[[], str]],
    feedback: str,
    *,
    structured: str | None = None,
    **options: Any,
) -> list[GroundedText]:
    """`grounded` for many conversations at once, batched as the backend allows: all first drafts in one
    `generate` call, the retries of the rejected ones in a second. checks, templates: one per
    conversation; structured: see `drafts`. options: `Backend.generate` keywords (e.g.
    `**generation_options(cfg.llm)`)."""
    if not len(conversations) == len(checks) == len(templates):
        raise ValueError(
            f"{len(conversations)} conversations, {len(checks)} checks, {len(templates)} templates"
        )
    replies = drafts(backend, conversations, structured, **options)
    first = [text for text, _ in replies]
    verdicts = [check(t) for t, check in zip(first, checks, strict=True)]
    results: list[GroundedText | None] = [
        GroundedText(t, "llm", [v]) if v.passed else None for t, v in zip(first, verdicts, strict=True)
    ]
    todo = [i for i, r in enumerate(results) if r is None]
    retries = [
        retry_conversation(list(conversations[i]), replies[i][1], feedback_message(verdicts[i], feedback))
        for i in todo
    ]
    second = [text for text, _ in drafts(backend, retries, structured, **options)] if retries else []
    for i, text in zip(todo, second, strict=True):
        verdict = checks[i](text)
        if verdict.passed:
            results[i] = GroundedText(text, "llm_retry", [verdicts[i], verdict], [first[i]])
        else:
            results[i] = GroundedText(templates[i](), "template", [verdicts[i], verdict], [first[i], text])
    return [r for r in results if r is not None]


def photo_check(evidence: Evidence, max_words: int = MAX_WORDS) -> Check:
    """The gate for an explanation of one photo."""
    return lambda text: check_explanation(text, evidence, max_words)


def photo_fallback(evidence: Evidence, max_words: int = MAX_WORDS) -> Callable[[], str]:
    """The template for an explanation of one photo."""
    return lambda: photo_template(evidence, max_words)

"""Reading a language model's answer into the values the evidence's claims hold, once, so the grounding
gate compares data with data (`noodlenext.llm.grounding`).

`read_answer(text, class_names)` splits an answer into sentences and finds, in each, what can be checked:
the lines it cites ("[2]", "[3, 5]", "[2-4]"), the classes it names, the regions ("the upper left", "the
top-middle of the picture", "the bottom-left corner", "the middle", "on the right"; and whether the clause
calls them cold), the maps it is about ("ScoreCAM", "the contrastive map"), what it says of a map against a
random one ("no better than random", "beats a random map"), percentages ("62%", "sixty
percent", "about 60%"), decimals ("0.42"), fractions in words ("a quarter of the picture", "just over a
third", "half"), counts ("three of the five", "4 of 5 nearest photos are udon", "all five", "both",
"none of the 4", "most of them are udon"), directions ("raises udon", "drops", "more sure", "leaves udon
at 40%"), what the prediction becomes or stays ("switches to ramen", "still udon"), words that describe the
photo (`vocabulary.yaml`: foods, toppings, utensils, tableware, colours, textures, lighting, background,
...), and, for a sentence that gives advice, which kind (add photos of a class, collect photos of a pair,
check the label, do not rely on a map, or something else).

The limits (tests/test_grounding.py shows each): a claim split over two sentences is read sentence by
sentence; a direction is read only with a class, or a word of probability or confidence, in its clause;
counts are read in the phrasings above, not in every way English can count.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from noodlenext.explain.facts import REGIONS
from noodlenext.llm.text import sentences

__all__ = [
    "CITATION",
    "EDIT",
    "Said",
    "SaidSentence",
    "class_mentions",
    "cited",
    "read_answer",
    "region_mentions",
    "vocabulary",
]

CITATION = re.compile(r"\[\s*(\d+(?:\s*(?:[,;]|–|-|and)\s*\d+)*)\s*\]")


@dataclass(frozen=True)
class Said:
    """One checkable thing a sentence says. kind: class, region, map, trust, map_state, edit, percent,
    decimal, fraction, count, direction, becomes, visual, no_fix ("the facts suggest no specific fix");
    text: its words; start, end: where it is in the sentence (citations blanked); value: what it says (see
    `read_answer`); cold: a region named in a clause that calls it cold ("little heat in the lower left")."""

    kind: str
    text: str
    start: int
    end: int
    value: Any
    cold: bool = False


@dataclass
class SaidSentence:
    """A sentence of an answer: as written, with its citations blanked (`plain`, same offsets), the line
    numbers it cites, what it says, and the advice it gives (None: none; else add_photos, collect_pair,
    check_label, distrust_map or other) with the classes it asks photos of."""

    text: str
    plain: str
    cited: list[int]
    said: list[Said] = field(default_factory=list)
    advice: str | None = None
    advice_classes: list[str] = field(default_factory=list)
    # (end, lines): a sentence citing mid-way ("A [5], while B [6].") is read as parts, each up to and
    # with its citation; what follows the last citation goes with it.
    parts: list[tuple[int, list[int]]] = field(default_factory=list)

    def of(self, kind: str) -> list[Said]:
        return [s for s in self.said if s.kind == kind]

    def cites_at(self, offset: int) -> list[int]:
        """The lines the part of the sentence around `offset` cites ([] where the sentence cites none)."""
        for end, lines in self.parts:
            if offset < end:
                return lines
        return self.parts[-1][1] if self.parts else []


def cited(text: str) -> list[int]:
    """The line numbers a text cites: "[2]", "[3, 5]", "[2-4]", "[2 and 6]"."""
    numbers = []
    for m in CITATION.finditer(text):
        for part in re.split(r"\s*(?:[,;]|and)\s*", m.group(1)):
            ends = [int(x) for x in re.split(r"\s*[–-]\s*", part) if x]
            numbers += list(range(ends[0], ends[-1] + 1)) if len(ends) == 2 and ends[0] <= ends[1] else ends
    return numbers


def _blank(text: str) -> str:
    """Citations replaced by spaces (offsets kept): they are not words, phrases or numbers."""
    return CITATION.sub(lambda m: " " * len(m.group(0)), text)


# ------------------------------------------------------------------------------------------ classes
def _class_core(name: str) -> str:
    """A class name as a regex: its words with any spaces, "_" or "-" between them."""
    return r"[\s_-]+".join(re.escape(p) for p in re.split(r"[\s_-]+", name.strip()) if p)


def canonical_class(found: str, names: Sequence[str]) -> str:
    """The class name that the words `found` (a class mention) spell."""
    flat = re.sub(r"[\s_-]+", " ", found.lower()).strip()
    for name in names:
        n = re.sub(r"[\s_-]+", " ", name.lower()).strip()
        if flat in (n, n + "s", n + "es"):
            return name
    raise ValueError(f"{found!r} is none of {list(names)}")


def class_alternation(names: Sequence[str]) -> str:
    """A regex matching any class name (longest first), plural "s"/"es" allowed."""
    alt = "|".join(_class_core(n) for n in sorted(names, key=len, reverse=True))
    return rf"(?:{alt})(?:s|es)?\b"


def class_mentions(text: str, class_names: Sequence[str]) -> dict[str, list[int]]:
    """Where `text` names each class (start offsets), for the classes it names; a longer name wins over a
    shorter one inside it ("pad thai" is not also "thai")."""
    out: dict[str, list[int]] = {}
    taken = [False] * len(text)
    for name in sorted(class_names, key=len, reverse=True):
        for m in re.finditer(rf"\b{_class_core(name)}(?:s|es)?\b", text, re.I):
            if not any(taken[m.start() : m.end()]):
                taken[m.start() : m.end()] = [True] * (m.end() - m.start())
                out.setdefault(name, []).append(m.start())
    return out


def _classes(text: str, names: Sequence[str]) -> list[Said]:
    found = class_mentions(text, names)
    out = []
    for name, starts in found.items():
        for start in starts:
            m = re.match(rf"{_class_core(name)}(?:s|es)?\b", text[start:], re.I)
            end = start + (m.end() if m else len(name))
            out.append(Said("class", text[start:end], start, end, name))
    return sorted(out, key=lambda s: s.start)


# ------------------------------------------------------------------------------------------ regions
_ROW = {"upper": 0, "top": 0, "middle": 1, "center": 1, "centre": 1, "central": 1, "lower": 2, "bottom": 2}
_COL = {"left": 0, "middle": 1, "center": 1, "centre": 1, "central": 1, "right": 2}
_CELL = rf"(?:{'|'.join(_ROW)})[\s-]+(?:{'|'.join(_COL)})(?:-hand)?"
_BAND_NOUN = r"(?:half|halves|parts?|edges?|sides?|row|column|third|portion|area|region|section|border|strip)"
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


def _row_of_side(m: re.Match[str]) -> frozenset[str]:
    return _cells([_ROW[m.group("row").lower()]], [_COL[m.group("col").lower()]])


_REGION_PATTERNS: list[tuple[re.Pattern[str], Any]] = [
    # "the middle of the right side", "the top of the left edge", "the bottom of the left half"
    (
        re.compile(
            r"\b(?P<row>top|upper|middle|centre|center|bottom|lower)\s+(?:part\s+)?of\s+the\s+(?P<col>left|right)"
            r"(?:-hand)?\s+(?:side|edge|half|part)\b",
            re.I,
        ),
        _row_of_side,
    ),
    # "upper left", "top-right", "bottom middle", "centre left", "top-middle" (a row word, then a column word)
    (re.compile(rf"\b{_CELL}\b", re.I), _cell),
    # "the top half", "lower part", "bottom edge"
    (re.compile(rf"\b(?P<row>upper|top|lower|bottom)\s+{_BAND_NOUN}\b", re.I), _row_band),
    # "at the top", "near the bottom" (not "the top class", "the top two")
    (
        re.compile(
            rf"\b(?:at|in|on|near|along|towards?|across|to|from)\s+the\s+(?:very\s+)?(?P<w>(?P<row>top|bottom))\b"
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
            r"\b(?:on|to|at|in|near|towards?|along|from)\s+the\s+(?:far\s+)?(?P<w>(?P<col>left|right))\b",
            re.I,
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
CLAUSE = re.compile(r"[.;!?]|,|\bbut\b|\bwhile\b|\bwhereas\b", re.I)


def region_mentions(text: str) -> list[tuple[str, frozenset[str], int, int]]:
    """(the words, the regions they can mean, where they start and end) for each place `text` names a
    region; longer names first, so "middle left" is one mention, not "middle" and "left"."""
    taken = [False] * len(text)
    found = []
    for pattern, regions in _REGION_PATTERNS:
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


def clause_span(text: str, start: int) -> tuple[int, int]:
    """Where the clause around offset `start` begins and ends (between commas, semicolons, "but", "while",
    sentence ends)."""
    cuts = list(CLAUSE.finditer(text))
    before = max((m.end() for m in cuts if m.end() <= start), default=0)
    after = min((m.start() for m in cuts if m.start() > start), default=len(text))
    return before, after


def _regions(text: str) -> list[Said]:
    out = []
    for said, regions, start, end in region_mentions(text):
        before, after = clause_span(text, start)
        out.append(Said("region", said, start, end, regions, cold=bool(_COLD.search(text[before:after]))))
    return out


# ------------------------------------------------------------------------------------------ maps
_MAPS = {
    "scorecam": re.compile(r"\bscore[\s-]?cam\b", re.I),
    "gradcam": re.compile(r"\bgrad[\s-]?cam\b", re.I),
    "contrastive": re.compile(r"\bcontrast(?:ive)?\s+(?:heat\s*)?map", re.I),
}


def _maps(text: str) -> list[Said]:
    return [
        Said("map", m.group(0), m.start(), m.end(), name)
        for name, p in _MAPS.items()
        for m in p.finditer(text)
    ]


# ------------------------------------------------------------------------------------------ trust
# What the trust check said of a map: "no better than random", "fails to beat a random map",
# "uninformative" (value "random"), or "beats a random map", "better than chance" (value "beats").
_RANDOM = r"(?:a\s+|an\s+|the\s+)?(?:random|chance|guess\w*|coin[\s-]?(?:flip|toss))"
_NOT_BEATS = re.compile(
    rf"\b(?:no|not|n't|hardly|barely|never)\s+(?:any\s+|much\s+|really\s+|a\s+lot\s+)?better\s+than\s+{_RANDOM}|"
    rf"\b(?:fail\w*\s+to|(?:does|do|did)\s+not|doesn't|don't|didn't|cannot|can't|never|not)\s+"
    rf"(?:\w+\s+)?beat\w*\s+{_RANDOM}|"
    rf"\b(?:neither|none|no)\b(?:[^.;,]*?)\b(?:beat\w*|(?:do\w*|did|is|are|was|were)\s+better\s+than)\s+"
    rf"{_RANDOM}|"
    rf"\b(?:no|not|n't|hardly)\s+(?:any\s+)?more\s+(?:reliable|informative|useful|trustworthy|telling)\s+than\s+"
    rf"{_RANDOM}|"
    rf"\buninformative\b|\b(?:worse\s+than|(?:as\s+good\s+as|on\s+par\s+with|no\s+more\s+than|"
    rf"at|like)\s+){_RANDOM}",
    re.I,
)
_BEATS = re.compile(rf"\bbeat\w*\s+{_RANDOM}|\bbetter\s+than\s+{_RANDOM}|\binformative\b", re.I)
_COUNTED = re.compile(
    r"\s*(?:[\w-]+\s+){0,3}?(?:in|for|on|of)\s+(?:only\s+|just\s+|exactly\s+)?"
    r"(?:none|no|all|every|most|half|few|[\w-]+\s+(?:of|out\s+of))\b",
    re.I,
)
_ONE_OF = re.compile(r"\b(?:one|some|either|at\s+least\s+one)\s+of\b", re.I)
_ALL_MAPS = re.compile(r"\b(?:both|neither|all|none|maps|heat\s*maps|heatmaps|highlights)\b", re.I)


_MAP_STATE = {
    "empty": re.compile(
        r"\b(?:map|heatmap|heat\s*map)s?\s+(?:is|are|was|were)\s+(?:all\s+)?(?:empty|blank|flat)\b|"
        r"\b(?:empty|blank)\s+(?:heat\s*)?map\b",
        re.I,
    ),
    "none": re.compile(
        r"\bno\s+(?:heat\s*map|heatmap|map)s?\b(?:\s+of\s+this\s+(?:photo|image))?\s+(?:is|are)\s+"
        r"available",
        re.I,
    ),
}


EDIT = re.compile(
    r"\b(?:hid(?:e|es|ing|den)|cover(?:s|ed|ing)?(?:\s+up)?|mask(?:s|ed|ing)?|block(?:s|ed|ing)?(?:\s+out)?|"
    r"blank(?:s|ed|ing)?(?:\s+out)?|keep(?:s|ing)?\s+(?:only|just)|kept\s+(?:only|just)|"
    r"show(?:s|ed|ing|n)?\s+(?:only|just)|(?:only|just)\s+(?:that|the\s+hot(?:test)?|the\s+highlighted)\s+"
    r"(?:part|region|area|patch)|on\s+its\s+own|by\s+itself|"
    # the whole photo changed (explain.causes): grey, a tint, a crop, a lower resolution, a colour out
    r"black[\s-]+and[\s-]+white|gr[ae]y\s*-?scale|monochrome|(?:turn(?:s|ed|ing)?|made|make|making)\s+"
    r"(?:[\w-]+\s+){0,5}?gr[ae]y|tint(?:s|ed)?|(?:warm|cold|cool)(?:er)?\s+(?:light|tint|colou?rs?)|"
    r"white\s+balance|trimm(?:ed|ing)|crop(?:s|ped|ping)?|cut(?:s|ting)?\s+off|mirror(?:s|ed|ing)?|"
    r"flipp(?:ed|ing)\s+(?:it|the\s+photo|left)|(?:lower|reduced|quarter\s+of\s+the)\s+resolution|"
    r"blurr(?:ed|ing)|re-?compress\w*|(?:took|taking|take|takes)\s+(?:the\s+)?\w+\s+out|"
    r"remov(?:e|es|ed|ing))\b",
    re.I,
)


def _edits(text: str) -> list[Said]:
    """An edit of the photo the sentence speaks of: "hiding the hot region", "covering up the highlighted
    part", "keeping only that region", "that part on its own"."""
    return [Said("edit", m.group(0), m.start(), m.end(), True) for m in EDIT.finditer(text)]


def _map_state(text: str) -> list[Said]:
    """ "The map is empty" (value "empty"), "no heatmap of this photo is available" ("none")."""
    return [
        Said("map_state", m.group(0), m.start(), m.end(), state)
        for state, p in _MAP_STATE.items()
        for m in p.finditer(text)
    ]


def _trust(text: str, maps: list[Said]) -> list[Said]:
    """What the sentence says of maps against a random map: Said("trust", value=(verdict, maps, every)),
    verdict "random", "beats" or "counted" (in how many photos of a group: a count, checked as one); maps:
    the maps its clause names (empty: the ones it cites); every: the verdict is said of each of them ("both
    maps", "neither", "the maps") rather than of one."""
    out, taken = [], [False] * len(text)
    for verdict, pattern in (("random", _NOT_BEATS), ("beats", _BEATS)):
        for m in pattern.finditer(text):
            if any(taken[m.start() : m.end()]):
                continue
            taken[m.start() : m.end()] = [True] * (m.end() - m.start())
            before, after = clause_span(text, m.start())
            named = sorted({s.value for s in maps if before <= s.start < after and s.value != "contrastive"})
            clause = text[before:after]
            # "beats a random map in 2 of 5": a count, checked as one
            said = "counted" if _COUNTED.match(text, m.end(), after) else verdict
            every = len(named) > 1 or bool(_ALL_MAPS.search(clause) and not _ONE_OF.search(clause))
            out.append(Said("trust", m.group(0), m.start(), m.end(), (said, tuple(named), every)))
    return out


# ------------------------------------------------------------------------------------------ numbers
_UNITS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen".split()
    )
}
_TENS = {
    w: 10 * i
    for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split())
    if i > 1
}
_NUMWORD = (
    rf"(?:(?:{'|'.join(_TENS)})(?:[\s-](?:{'|'.join(w for w in _UNITS if 0 < _UNITS[w] < 10)}))?"
    rf"|{'|'.join(sorted(_UNITS, key=len, reverse=True))}|a\s+hundred|one\s+hundred|hundred)"
)
_NUM = rf"(?:\d+(?:\.\d+)?|{_NUMWORD})"


def number_value(token: str) -> float:
    """The value of a numeral or number words ("62", "0.5", "sixty-two", "a hundred")."""
    token = token.lower().strip()
    try:
        return float(token)
    except ValueError:
        pass
    if "hundred" in token:
        return 100.0
    parts = re.split(r"[\s-]+", token)
    return float(sum(_TENS.get(p, _UNITS.get(p, 0)) for p in parts))


# A hedge before a number: how far the claim's value may be from the words', in points (low, high).
_HEDGES = [
    (
        r"just\s+(?:over|above)|a\s+little\s+(?:over|more\s+than)|slightly\s+(?:over|more\s+than|above)",
        (0, 8),
    ),
    (
        r"just\s+(?:under|below)|a\s+little\s+(?:under|less\s+than)|slightly\s+(?:under|less\s+than|below)",
        (-8, 0),
    ),
    (r"well\s+(?:over|above)|far\s+(?:over|above|more\s+than)", (5, 40)),
    (r"(?:over|above|more\s+than|at\s+least)", (0, 25)),
    (r"(?:under|below|less\s+than|at\s+most|up\s+to)", (-25, 0)),
    (r"(?:about|around|roughly|approximately|nearly|almost|close\s+to|some|approx\.?|~)", (-6, 6)),
]
_HEDGE = "|".join(f"(?:{h})" for h, _ in _HEDGES)
_PERCENT = re.compile(rf"(?:(?P<hedge>{_HEDGE})\s+)?(?P<num>{_NUM})\s*(?:%|percent\b|per\s+cent\b)", re.I)
# A minus sign counts where it cannot be a dash between two numbers ("r = -0.37", not "0.99-0.97").
_DECIMAL = re.compile(r"(?<![\d.])(?:(?<=[\s(=:])[-−])?\d+\.\d+(?!\d|\.\d|\s*%|\s*per)")
_POINTS = re.compile(rf"(?:(?P<hedge>{_HEDGE})\s+)?(?P<num>{_NUM})\s+(?:percentage\s+)?points?\b", re.I)
_FRACTIONS = {
    "half": 50.0,
    "a half": 50.0,
    "one half": 50.0,
    "a third": 100 / 3,
    "one third": 100 / 3,
    "two thirds": 200 / 3,
    "a quarter": 25.0,
    "one quarter": 25.0,
    "three quarters": 75.0,
    "a fifth": 20.0,
    "one fifth": 20.0,
    "two fifths": 40.0,
    "three fifths": 60.0,
    "a tenth": 10.0,
    "one tenth": 10.0,
    "a fourth": 25.0,
}
_FRACTION_WORDS = "|".join(
    r"[\s-]+".join(re.escape(w) for w in f.split()) for f in sorted(_FRACTIONS, key=len, reverse=True)
)
_FRACTION = re.compile(rf"(?:(?P<hedge>{_HEDGE})\s+)?(?P<frac>{_FRACTION_WORDS})\b", re.I)
_ONE_IN = re.compile(rf"(?:(?P<hedge>{_HEDGE})\s+)?\b(?P<n>{_NUM})\s+in\s+(?P<d>{_NUM})\b", re.I)


def _of_what(text: str, start: int, end: int) -> str | None:
    """ "a fifth of the image" is an area; "26% of its heat", "most heat (48%) in the upper left" a share
    of a map's heat, of the region its clause names ("share:upper left", several joined by "|")."""
    rest = text[end:]
    if re.match(
        r"\s+of\s+(?:the\s+|this\s+|its\s+)?(?:whole\s+|entire\s+)?(?:image|picture|photo|frame|pixels)\b",
        rest,
        re.I,
    ):
        return "area"
    after = re.match(
        r"\s+of\s+(?:the\s+|its\s+|their\s+|[\w-]+'s\s+)?(?:heat|evidence|attention)\b", rest, re.I
    )
    before = re.search(r"\bheat\s*(?:\(|,|:)?\s*(?:about\s+|around\s+|roughly\s+)?$", text[:start], re.I)
    if not (after or before):
        return None
    clause_start, clause_end = clause_span(text, start)
    regions = sorted(
        {r for said, cells, s0, _ in region_mentions(text[clause_start:clause_end]) for r in cells}
    )
    return "share:" + "|".join(regions) if regions else "share"


def _tolerance(hedge: str | None, exact: tuple[float, float]) -> tuple[float, float]:
    if not hedge:
        return exact
    for pattern, bounds in _HEDGES:
        if re.fullmatch(pattern, hedge.strip(), re.I):
            return bounds
    return exact


# counts: "3 of 5", "three out of the five", "all five", "none of the 4", "both photos", "most of them"
_OF = r"(?:\s+out)?\s+of\s+(?:the\s+|its\s+|their\s+|these\s+|those\s+|all\s+|his\s+)?"
_COUNT_PATTERNS = [
    re.compile(
        rf"\b(?:every\s+one|each\s+one|each|every|all)\s+of\s+(?:the\s+|its\s+|their\s+)?(?P<of>{_NUM})\b(?P<all>)",
        re.I,
    ),
    re.compile(rf"\b(?P<n>{_NUM}){_OF}(?P<of>{_NUM})\b", re.I),
    re.compile(rf"\b(?P<all>all)\s+(?P<of>{_NUM})\b", re.I),
    re.compile(
        rf"\b(?P<none>none|neither)\s+of\s+(?:the\s+|its\s+|their\s+|them\s*)?(?P<of>{_NUM})?\b", re.I
    ),
    re.compile(
        r"\b(?P<both>both)\s+(?:of\s+)?(?:the\s+|its\s+|their\s+)?(?:two\s+)?(?:\w+\s+){0,3}?"
        r"(?:photos|images|pictures|neighbou?rs|examples|of\s+them)\b",
        re.I,
    ),
    re.compile(
        r"\b(?P<most>most(?=\s+of\b|\s+(?:nearest|training|neighbouring|neighboring)\b)"
        r"(?!\s+of\s+(?:the\s+|its\s+|their\s+|[\w-]+'s\s+)?(?:heat|evidence|attention|weight|signal|it)\b)|"
        r"the\s+majority|a\s+majority)\b",
        re.I,
    ),
    re.compile(
        rf"\b(?P<n>{_NUM})\s+(?:of\s+(?:its|the|their|these|those)\s+)?(?:(?:nearest|closest|most\s+similar|similar|"
        r"neighbouring|neighboring|training|examined|test)\s+)*(?:photos?|images?|pictures?|neighbou?rs?|"
        r"examples?|mistakes?)\b",
        re.I,
    ),
]
# "this one are spaghetti", "each one": "one" with a determiner before it is no count.
_DETERMINED = re.compile(r"\b(?:this|that|each|every|which|any|no|the)\s+$", re.I)
# "none of the facts suggests a fix": not a count of photos.
# What "none of the ..." counts when it is not photos: the facts, or the tests and changes tried on the photo.
_NOT_COUNTED = re.compile(
    r"\s*(?:facts?|lines?|evidence|numbers?|above|these\s+facts|tests?|changes?|edits?|parts?|squares?|"
    r"strips?|these\s+(?:tests|changes|edits))\b",
    re.I,
)
_NOT_COUNT_AFTER = re.compile(r"\s*(?:%|percent|per\s+cent|points?\b|\.\d)", re.I)


@dataclass(frozen=True)
class Amount:
    """A number read from an answer: in percent (0..100) for percentages and fractions, else as is; the
    range the true value may lie in (what the words allow, with their hedge)."""

    value: float
    low: float
    high: float
    of: str | None = None  # the class it is the probability of ("gives udon 20%"), when the words say


@dataclass(frozen=True)
class Counted:
    """A count read from an answer: n of `of` (None where the words do not say), a class it is of (label),
    and `majority` for "most of" (n unknown, more than half)."""

    n: int | None
    of: int | None
    label: str | None = None
    majority: bool = False


def _numbers(text: str, names: Sequence[str], taken: list[bool]) -> list[Said]:
    out: list[Said] = []

    def free(m: re.Match[str]) -> bool:
        return not any(taken[m.start() : m.end()])

    def take(m: re.Match[str]) -> None:
        taken[m.start() : m.end()] = [True] * (m.end() - m.start())

    alternation = class_alternation(names) if names else None
    for m in _PERCENT.finditer(text):
        if free(m):
            take(m)
            v = number_value(m.group("num"))
            lo, hi = _tolerance(m.group("hedge"), (-0.5, 0.5))  # the lines give whole percents
            of = _of_what(text, m.start(), m.end()) or (
                _percent_class(text, m, alternation, names) if alternation else None
            )
            out.append(Said("percent", m.group(0), m.start(), m.end(), Amount(v, v + lo, v + hi, of)))
    for m in _POINTS.finditer(text):
        if free(m):
            take(m)
            v = number_value(m.group("num"))
            lo, hi = _tolerance(m.group("hedge"), (-0.5, 1.5))
            out.append(Said("points", m.group(0), m.start(), m.end(), Amount(v, v + lo, v + hi)))
    for m in _FRACTION.finditer(text):
        if free(m) and not re.match(r"\s+(?:of\s+)?(?:the\s+|its\s+)?peak", text[m.end() :], re.I):
            take(m)
            v = _FRACTIONS[re.sub(r"[\s-]+", " ", m.group("frac").lower())]
            lo, hi = _tolerance(m.group("hedge"), (-6.0, 6.0))
            amount = Amount(v, v + lo, v + hi, _of_what(text, m.start(), m.end()))
            out.append(Said("fraction", m.group(0), m.start(), m.end(), amount))
    for m in _ONE_IN.finditer(text):  # "one in six"
        if free(m):
            take(m)
            v = 100 * number_value(m.group("n")) / max(1.0, number_value(m.group("d")))
            lo, hi = _tolerance(m.group("hedge"), (-4.0, 4.0))
            out.append(Said("fraction", m.group(0), m.start(), m.end(), Amount(v, v + lo, v + hi)))
    for m in _DECIMAL.finditer(text):
        if free(m):
            take(m)
            v = float(m.group(0).replace("−", "-"))
            places = len(m.group(0).split(".")[1])
            tol = 0.5 * 10 ** (-places) + 1e-9
            out.append(Said("decimal", m.group(0), m.start(), m.end(), Amount(v, v - tol, v + tol)))
    for pattern in _COUNT_PATTERNS:
        for m in pattern.finditer(text):
            if not free(m) or _NOT_COUNT_AFTER.match(text, m.end()) or _NOT_COUNTED.match(text, m.end()):
                continue
            groups = m.groupdict()
            if groups.get("most"):
                counted = Counted(None, None, majority=True)
            elif groups.get("both"):
                counted = Counted(2, 2)
            elif groups.get("none"):
                of = groups.get("of")
                counted = Counted(
                    0, int(number_value(of)) if of else (2 if groups["none"].lower() == "neither" else None)
                )
            elif groups.get("all") is not None:
                n = int(number_value(groups["of"]))
                total = re.search(r"\bof\s+$", text[: m.start()], re.I)  # "70% of all 10": a total
                counted = Counted(None, n) if total else Counted(n, n)
            elif groups.get("of") is not None:
                counted = Counted(int(number_value(groups["n"])), int(number_value(groups["of"])))
            else:
                counted = Counted(None, int(number_value(groups["n"])))  # "its five nearest photos"
            label = _count_label(text, m.start(), m.end(), alternation, names) if alternation else None
            take(m)
            counted = Counted(counted.n, counted.of, label, counted.majority)
            out.append(Said("count", m.group(0), m.start(), m.end(), counted))
    if alternation:
        verb = r"(?:of\s+them\s+)?(?:are|were|is|was)\s+(?:labell?ed\s+|all\s+|also\s+)?"
        for pattern in (
            rf"\b(?P<n>{_NUM})\s+{verb}(?P<c>{alternation})",  # "3 are spaghetti and 2 are udon"
            rf"\b(?P<n>{_NUM})\s+(?P<c>{alternation})",  # "3 of 5 are udon, 1 ramen": a count of the class
        ):
            for m in re.finditer(pattern, text, re.I):
                if free(m) and not _DETERMINED.search(text, 0, m.start()):
                    take(m)
                    cls = canonical_class(m.group("c"), names)
                    counted = Counted(int(number_value(m.group("n"))), None, cls)
                    out.append(Said("count", m.group(0), m.start(), m.end(), counted))
    return out


def _percent_class(text: str, m: re.Match[str], alternation: str, names: Sequence[str]) -> str | None:
    """The class a percentage is the probability of: named right after it ("44% udon", "49% for udon"),
    else at most four words before it in its clause ("drops udon from 62% to 20%", "gives ramen just
    54%"); none for a confidence ("87% confidence", "was 87% sure") or a class that describes a photo
    ("this ramen photo with 87% confidence")."""
    after = re.match(rf"\s*(?:(?:for|of|on|as)\s+)?(?P<c>{alternation})", text[m.end() :], re.I)
    if after:
        return canonical_class(after.group("c"), names)
    if re.match(r"\s*(?:mean\s+|average\s+)?(?:confiden\w*|sure|certain\w*)\b", text[m.end() :], re.I):
        return None
    start, _ = clause_span(text, m.start())
    before = list(re.finditer(rf"\b(?P<c>{alternation})", text[start : m.start()], re.I))
    if not before:
        return None
    last = before[-1]
    lead, between = text[start : start + last.start()], text[start + last.end() : m.start()]
    if re.search(r"\bby\s*$", between, re.I):  # "moves udon by 3%", "leads udon by 40%": a difference
        return None
    if re.search(
        r"\b(?:maps?|heatmaps?|over|versus|vs)\b",
        between + " " + text[start + last.start() - 8 : start + last.start()],
        re.I,
    ):
        return None  # "the udon-over-spaghetti contrastive map holds 59%": a share of a map's heat
    if re.search(r"%\s*$", lead) or re.match(
        r"\s*(?:photos?|images?|pictures?|dish(?:es)?|bowls?)\b", between, re.I
    ):
        return None  # "56% spaghetti and 44%": that class is the first number's
    if len(between.split()) <= 4 and not re.search(
        r"\b(?:sure|confident|certain|that|which|who)\b", between, re.I
    ):
        return canonical_class(last.group("c"), names)
    return None


_CONTRAST = r"[\s-]+(?:over|rather[\s-]+than|instead[\s-]+of|versus|vs\.?|against)[\s-]+"


def _contrasts(text: str, names: Sequence[str]) -> list[Said]:
    """ "udon over spaghetti", "ramen rather than udon", "udon-versus-spaghetti": which class is weighed
    against which (a contrastive map's order)."""
    if not names:
        return []
    alt = class_alternation(names)
    return [
        Said(
            "contrast",
            m.group(0),
            m.start(),
            m.end(),
            (canonical_class(m.group("a"), names), canonical_class(m.group("b"), names)),
        )
        for m in re.finditer(rf"\b(?P<a>{alt}){_CONTRAST}(?P<b>{alt})", text, re.I)
    ]


def _count_label(text: str, start: int, end: int, alternation: str, names: Sequence[str]) -> str | None:
    """The class a count is of: the first class named after it in its clause ("three of the five nearest
    photos are udon", "3 udon photos"), else the last one named before it there ("keeps the prediction
    ramen in 4 of 5 photos"); a class inside the count's words is its own ("both ramen photos")."""
    inside = re.search(rf"\b(?P<c>{alternation})", text[start:end], re.I)
    if inside is not None:
        return canonical_class(inside.group("c"), names)
    aside = re.match(rf"\s*,\s*(?:are|were)\s+(?:all\s+)?(?P<c>{alternation})\b", text[end:], re.I)
    if aside is not None:  # "most of its nearest photos, 4 of 5, are udon"
        return canonical_class(aside.group("c"), names)
    cut = next((m.start() for m in CLAUSE.finditer(text) if m.start() >= end), len(text))
    m = re.search(rf"\b(?P<c>{alternation})", text[end:cut], re.I)
    if m is not None:
        between = text[end : end + m.start()]
        if not re.search(r"\b(?:than|while|whereas|but|except|not|instead)\b", between, re.I):
            return canonical_class(m.group("c"), names)
        return None
    begin, _ = clause_span(text, start)
    before = list(re.finditer(rf"\b(?P<c>{alternation})", text[begin:start], re.I))
    if before and not re.search(
        r"\b(?:photos?|images?|pictures?)\b", text[begin + before[-1].end() : start], re.I
    ):
        return canonical_class(before[-1].group("c"), names)
    return None


# ------------------------------------------------------------------------------------------ directions
_RAISE = (
    r"rais(?:es|e|ed|ing)|increas(?:es|e|ed|ing)|boost(?:s|ed|ing)?|lift(?:s|ed|ing)?|push(?:es|ed)?\s+up|"
    r"ris(?:es|e|ing)|rose|risen|goes\s+up|went\s+up|gone\s+up|jump(?:s|ed)?|climb(?:s|ed)?|grow(?:s|n)?|grew|"
    r"strengthen(?:s|ed)?|more\s+(?:sure|confident|certain)|surer|higher|"
    r"(?:nudg|push|bump|tick|edg|creep|mov|driv|send|lift|pull)\w*\s+(?:\w+\s+){0,2}up\b|crept\s+up"
)
_DROP = (
    r"drop(?:s|ped|ping)?|lower(?:s|ed|ing)?(?!\s+(?:left|right|cent(?:er|re)|middle|half|part|third|edge|side|"
    r"corner|portion|region|area|row|band))|reduc(?:es|e|ed|ing)|cut(?:s|ting)?|decreas(?:es|e|ed|ing)|"
    r"fall(?:s|ing|en)?|fell|goes\s+down|went\s+down|gone\s+down|sink(?:s)?|sank|slip(?:s|ped)?|"
    r"plummet(?:s|ed)?|weaken(?:s|ed)?|dip(?:s|ped)?|shrink(?:s)?|shrank|less\s+(?:sure|confident|certain)|"
    r"(?:nudg|push|bump|tick|edg|creep|mov|driv|send|knock|bring|brought|pull)\w*\s+(?:\w+\s+){0,2}down\b|"
    r"crept\s+down"
)
_STAY = (
    r"stay(?:s|ed)?\s+(?:at|around)|remain(?:s|ed)?\s+(?:at|around)|"
    r"unchanged|(?:does|did)\s*n[o']t\s+(?:change|move)|barely\s+(?:change|move)s?|hardly\s+(?:change|move)s?"
)
_DIRECTION = re.compile(rf"\b(?:(?P<raises>{_RAISE})|(?P<drops>{_DROP})|(?P<stays>{_STAY}))\b", re.I)
_PROBABILITY_WORDS = re.compile(
    r"\b(?:confiden\w*|probabilit\w*|score|scores|certaint\w*|sure|chances?|likelihood|belief|"
    r"vote|support\w*)\b",
    re.I,
)
_NEGATED = re.compile(
    r"(?:\b(?:not|never|no\s+longer|without|rather\s+than|instead\s+of)|n't)\s+(?:\w+\s+){0,2}$", re.I
)


def _directions(text: str, names: Sequence[str], classes: list[Said]) -> list[Said]:
    out = []
    for m in _DIRECTION.finditer(text):
        if _NEGATED.search(text[max(0, m.start() - 30) : m.start()]):
            continue
        direction = "raises" if m.group("raises") else "drops" if m.group("drops") else "stays"
        before, after = clause_span(text, m.start())
        in_clause = [c for c in classes if before <= c.start < after]
        inside = [c for c in in_clause if m.start() <= c.start < m.end()]  # "nudges udon down"
        later = [c for c in in_clause if c.start >= m.end()]
        earlier = [c for c in in_clause if c.end <= m.start()]
        # The nearest in words: "drops udon", "the udon guess fell", "lowered the udon score".
        gap_after = len(text[m.end() : later[0].start].split()) if later else 99
        gap_before = len(text[earlier[-1].end : m.start()].split()) if earlier else 99
        if inside:
            subject = inside[0]
        elif later or earlier:
            subject = earlier[-1] if gap_before < gap_after else later[0] if later else earlier[-1]
        else:
            subject = None
        if subject is None and not _PROBABILITY_WORDS.search(text[before:after]):
            continue  # "the heat drops off": not a class's probability
        out.append(
            Said("direction", m.group(0), m.start(), m.end(), (direction, subject.value if subject else None))
        )
    return out


# What an edit turns into another class: the prediction, or the photos of a group ("turns them into udon",
# "flips both to ramen", "turns every one into udon").
_TURNED = (
    r"(?:it|them|these|those|each(?:\s+one)?|every\s+one|all(?:\s+of\s+them)?|both(?:\s+of\s+them)?|"
    r"(?:the|its|their)\s+(?:predictions?|answers?|guess(?:es)?|labels?|votes?))\s+"
)
_BECOMES = (
    rf"becom(?:es|e|ing)|became|turn(?:s|ed)?\s+(?:{_TURNED})?into|"
    rf"(?:switch(?:es|ed)?|flip(?:s|ped)?)\s+(?:{_TURNED})?(?:over\s+)?to|"
    r"chang(?:es|e|ed)\s+(?:its\s+(?:answer|mind|prediction|guess)\s+|the\s+prediction\s+)?to|goes\s+to|went\s+to|"
    r"would\s+(?:be|say|call\s+it|predict)|now\s+(?:says|predicts|calls\s+it)|shift(?:s|ed)?\s+to|mov(?:es|ed)\s+to|"
    r"(?:is|was)\s+now\s+(?:read|seen|taken|classified|predicted)\s+as"
)
_STAYS = (
    r"leav(?:es|e|ing)\s+the\s+prediction\s+(?:at|as)|left\s+the\s+prediction\s+(?:at|as)|"
    r"keep(?:s|ing)?\s+the\s+prediction\s+(?:at|as|on)|kept\s+the\s+prediction\s+(?:at|as|on)|"
    r"stay(?:s|ed)?|remain(?:s|ed)?|still|keep(?:s)?\s+(?:predicting|saying|calling\s+it|choosing)|kept|"
    r"stick(?:s)?\s+with|stuck\s+with|hold(?:s)?\s+(?:on\s+)?to"
)


# In a sentence about an edit of the photo, what the classifier then says is what the prediction becomes:
# "when we showed it in black and white, it guessed spaghetti".
_ANSWERED = (
    r"guess(?:ed|es)?|said|says|answer(?:ed|s)|call(?:ed|s)\s+it|chose|picked|predict(?:ed|s)|"
    r"(?:went|goes)\s+with|opt(?:ed|s)\s+for"
)


def _becoming(text: str, names: Sequence[str]) -> list[Said]:
    if not names:
        return []
    alt = class_alternation(names)
    art = r"(?:(?:a|an|the)\s+)?(?:prediction\s+(?:of\s+)?)?"
    out = []
    passes: list[tuple[str, ...]] = [("becomes", _BECOMES), ("stays", _STAYS)]
    if EDIT.search(text):
        passes.append(("becomes", rf"(?:{_ANSWERED})\s+(?:(?:it|that\s+it)\s+(?:is|was)\s+)?"))
    if EDIT.search(text):
        # "again giving udon": the outcome, not a number ("gives udon 90%" is the probability)
        passes.append(
            ("becomes", r"(?:giv(?:es|ing|e)|gave)(?:\s+(?:it|us))?", r"(?![^.;,\[]{0,24}\d|\s+(?:a|an)\s)")
        )
    for kind, verbs, *after in passes:
        for m in re.finditer(rf"\b(?:{verbs})\s+{art}(?P<c>{alt}){''.join(after)}", text, re.I):
            if _NEGATED.search(text[max(0, m.start() - 30) : m.start()]):
                continue
            out.append(
                Said("becomes", m.group(0), m.start(), m.end(), (kind, canonical_class(m.group("c"), names)))
            )
    return out


# ------------------------------------------------------------------------------------------ the photo's look
@functools.cache
def vocabulary() -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """The words that describe a photo ({word: its category}, multi-word entries included) and the
    everyday words a claim's look word licenses ({word: the look words}), from vocabulary.yaml."""
    data = yaml.safe_load(resources.files("noodlenext.llm").joinpath("vocabulary.yaml").read_text())
    words = {str(w).lower(): cat for cat, ws in data["categories"].items() for w in ws}
    licensed = {str(k).lower(): tuple(str(v).lower() for v in vs) for k, vs in data["licensed_by"].items()}
    return words, licensed


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("es") and word[:-2] in vocabulary()[0]:
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _visual(text: str, taken: list[bool]) -> list[Said]:
    words, _ = vocabulary()
    multi = sorted((w for w in words if " " in w), key=len, reverse=True)
    out = []
    used = list(taken)
    for phrase in multi:
        pattern = r"\b" + r"[\s-]+".join(re.escape(p) for p in phrase.split()) + r"(?:s|es)?\b"
        for m in re.finditer(pattern, text, re.I):
            if not any(used[m.start() : m.end()]):
                used[m.start() : m.end()] = [True] * (m.end() - m.start())
                out.append(Said("visual", m.group(0), m.start(), m.end(), phrase))
    for m in re.finditer(r"[A-Za-z]+(?:-[A-Za-z]+)*", text):
        if any(used[m.start() : m.end()]):
            continue
        token = m.group(0).lower()
        if token in ("light", "lights", "lit", "lighting") and re.match(r"\s+up\b", text[m.end() :], re.I):
            continue  # "the map lights up the middle": the heatmap's glow, not the photo's light
        for candidate in (token, _singular(token)):
            if candidate in words:
                out.append(Said("visual", m.group(0), m.start(), m.end(), candidate))
                break
    return out


# ------------------------------------------------------------------------------------------ advice
_ADVICE_MARK = re.compile(
    r"^\s*(?:to\s+(?:fix|improve|help|avoid|reduce)\b[^,]*,\s*)?(?:please\s+)?(?:add|adding|collect|collecting|"
    r"gather|gathering|include|including|get|getting|use|using|try|trying|train|training|retrain|retraining|"
    r"fine-tune|augment|augmenting|crop|cropping|increase|increasing|balance|balancing|consider|make\s+sure|"
    r"ensure|check|checking|review|reviewing|remove|removing|clean|cleaning|relabel|relabelling|relabeling|"
    r"verify|verifying|look\s+at|inspect|double-check|do\s+not|don't|avoid|treat|take|label|labelling|"
    r"labeling)\b"
    r"|\b(?:should|could\s+help|would\s+help|may\s+help|might\s+help|can\s+help|will\s+help|helps?\s+to|"
    r"recommend\w*|suggest\w*|next\s+step|worth\s+(?:checking|adding|collecting|trying|looking)|"
    r"it\s+would\s+be\s+(?:wise|good|better|worth)|a\s+good\s+idea|to\s+fix\s+this|to\s+improve|"
    r"would\s+(?:likely\s+)?(?:improve|fix|reduce)|could\s+(?:improve|fix|reduce))\b"
    r"|\b(?:step|fix|remedy|option|idea|move|thing\s+to\s+do)\s+(?:would\s+be|is|was|might\s+be|could\s+be)\s+to\b"
    r"|\b(?:add|adding|collect|collecting|gather|gathering)\s+more\b",
    re.I,
)
_CHECK_LABEL = re.compile(
    r"\b(?:re-?label\w*|mislabel\w*|wrong(?:ly)?\s+label\w*|label\s+(?:is|may\s+be|might\s+be|could\s+be)\s+"
    r"(?:wrong|incorrect|mistaken|off)|(?:check|verify|review|inspect|double-check|confirm|correct|fix|"
    r"look\s+at)\w*\s+(?:[\w'’]+\s+){0,4}labels?)\b",
    re.I,
)
_DISTRUST = re.compile(
    r"\b(?:(?:do\s+not|don't|not|never|shouldn't|should\s+not|cannot|can't)\s+(?:\w+\s+){0,2}"
    r"(?:rel(?:y|ie\w*|ying)|trust\w*|depend\w*|lean\w*|count\w*)|with\s+(?:caution|care|a\s+grain\s+of\s+salt)|"
    r"avoid\s+(?:relying|trusting|leaning|depending)|be\s+(?:careful|cautious|wary)|(?:isn't|is\s+not|not|aren't|are\s+not)\s+(?:very\s+|entirely\s+)?"
    r"(?:reliable|trustworthy|to\s+be\s+trusted)|unreliable|untrustworthy|need\w*\s+care|"
    r"treat\w*\s+(?:\w+\s+){0,4}(?:with\s+)?(?:caution|care|scepticism|skepticism))\b",
    re.I,
)
_DISTRUST_ANYWHERE = re.compile(
    r"\b(?:do\s+not|don't|not\s+to|stop|never|shouldn't|should\s+not|cannot|can't|avoid)\s+(?:\w+\s+){0,2}?"
    r"(?:rely|relying|trust|trusting|lean|leaning)\b|\b(?:can't|cannot|shouldn't|should\s+not)\s+be\s+"
    r"(?:trusted|relied)|\bnot\s+(?:very\s+|entirely\s+)?(?:reliable|trustworthy)\b|\bunreliable\b|"
    r"\buntrustworthy\b|\bnot\s+(?:something|one|a\s+map)\s+to\s+(?:lean|rely|trust|count)",
    re.I,
)
_MORE_PHOTOS = re.compile(
    r"\b(?:add\w*|collect\w*|gather\w*|includ\w*|get\w*|more|extra|additional)\b.*"
    r"\b(?:photos?|images?|pictures?|examples?|samples?|shots?|data)\b",
    re.I,
)


# "The facts suggest no specific fix": saying there is no advice gives none.
_NO_FIX = re.compile(
    r"\b(?:no|not\s+(?:a|any))\s+(?:specific\s+|clear\s+|obvious\s+|particular\s+|single\s+)?"
    r"(?:fix|fixes|suggestion|suggestions|remedy|remedies|advice|recommendation|next\s+step)\b|"
    r"\b(?:suggest|offer|give|point\s+to|support)s?\s+no(?:thing)?\b|"
    r"\b(?:do|does|did)\s*(?:not|n't)\s+(?:point\s+to|suggest|offer|give|support)\s+(?:any|a)\b|"
    r"\b(?:none\s+of\s+the\s+(?:facts|lines)|nothing\s+in\s+the\s+(?:facts|lines|evidence)|no\s+(?:fact|line))\b"
    r"[^.]*?\b(?:fix|fixes|suggest\w*|remed\w*|advice|recommend\w*)\b",
    re.I,
)


def _advice(plain: str, classes: list[Said], names: Sequence[str]) -> tuple[str | None, list[str]]:
    """The advice a sentence gives (None, add_photos, collect_pair, check_label, distrust_map or other) and
    the classes it asks photos of ("add more spaghetti training photos" -> [spaghetti])."""
    if _NO_FIX.search(plain):
        return None, []
    if not _ADVICE_MARK.search(plain):
        # "So it is best not to trust the ScoreCAM map", "Given that, do not rely on it": a caution about
        # a map anywhere in the sentence.
        return ("distrust_map", []) if _DISTRUST_ANYWHERE.search(plain) else (None, [])
    if _CHECK_LABEL.search(plain):
        return "check_label", []
    if _DISTRUST.search(plain) or _DISTRUST_ANYWHERE.search(plain):
        return "distrust_map", []
    more = _MORE_PHOTOS.search(plain)
    if more:
        objects = _photo_objects(plain, names) if names else []
        return ("collect_pair" if len(objects) >= 2 else "add_photos"), objects
    if re.search(
        r"\b(?:should|could|would|may|might|recommend\w*|suggest\w*|next\s+step)\b", plain, re.I
    ) or re.match(
        r"\s*(?:add|collect|gather|include|use|try|train|retrain|fine-tune|augment|crop|increase|balance|consider|"
        r"remove|clean|feed|give)\b",
        plain,
        re.I,
    ):
        return "other", []
    return None, []


def _photo_objects(plain: str, names: Sequence[str]) -> list[str]:
    """The classes named in the noun phrase of the photos asked for: "more spaghetti training photos",
    "more photos of ramen and udon", "more examples of spaghetti"."""
    alt = class_alternation(names)
    found = []
    before = re.finditer(
        rf"\b(?P<cs>(?:{alt})(?:\s*(?:,|and|or|&)\s*(?:{alt}))*)\s+(?:(?:training|test|labelled|labeled|"
        r"clear|varied|different|more)\s+)*(?:photos?|images?|pictures?|examples?|samples?|shots?)\b",
        plain,
        re.I,
    )
    after = re.finditer(
        rf"\b(?:photos?|images?|pictures?|examples?|samples?|shots?)\s+(?:of|showing|with|labelled|labeled)\s+"
        rf"(?:(?:real|true|actual|more|clear)\s+)*(?P<cs>(?:{alt})(?:\s*(?:,|and|or|&)\s*(?:{alt}))*)",
        plain,
        re.I,
    )
    for m in [*before, *after]:
        for c in re.finditer(alt, m.group("cs"), re.I):
            found.append(canonical_class(c.group(0), names))
    return list(dict.fromkeys(found))


# ------------------------------------------------------------------------------------------ the reader
def read_answer(text: str, class_names: Sequence[str]) -> list[SaidSentence]:
    """The sentences of `text`, each with what it says (see the module docstring)."""
    out = []
    for sentence in sentences(text):
        plain = _blank(sentence)
        classes = _classes(plain, class_names)
        taken = [False] * len(plain)
        maps = _maps(plain)
        said = classes + _regions(plain) + maps + _trust(plain, maps) + _map_state(plain) + _edits(plain)
        said += _numbers(plain, class_names, taken)
        said += _directions(plain, class_names, classes)
        said += _becoming(plain, class_names)
        said += _contrasts(plain, class_names)
        said += _visual(plain, [False] * len(plain))
        advice, objects = _advice(plain, classes, class_names)
        said += [Said("no_fix", m.group(0), m.start(), m.end(), True) for m in _NO_FIX.finditer(plain)]
        parts = [(m.end(), cited(m.group(0))) for m in _CITATION_RUN.finditer(sentence)]
        out.append(
            SaidSentence(
                sentence, plain, cited(sentence), sorted(said, key=lambda s: s.start), advice, objects, parts
            )
        )
    return out


# Citations side by side ("[2][9]", "[2], [5]") are one part's.
_CITATION_RUN = re.compile(rf"{CITATION.pattern}(?:\s*,?\s*{CITATION.pattern})*")

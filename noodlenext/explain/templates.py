"""Explanations written from the evidence alone, for when no language model answers or its answers fail the
grounding gate: a few lay sentences (`wording.sentence`), each citing the claim it says, so a reader can
check every one against the numbered lines.

- `photo_template(evidence)`: the verdict and confidence; where the primary map's heat is and what that
  region looks like (with a warning when the map is uninformative); what hiding it did; what the nearest
  training photos are; one suggestion, when the evidence supports one.
- `group_template(evidence)`: the same for a group of mistakes (`explain.groups`).
- `finding_answer(evidence, finding)`: a follow-up's answer: the test's own lines, cited.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

from noodlenext.explain.claims import Claim
from noodlenext.explain.evidence import CAUSE_KINDS, Evidence, Finding
from noodlenext.explain.wording import line, sentence

__all__ = ["MAX_WORDS", "finding_answer", "group_template", "photo_template", "tested_allowance"]

MAX_WORDS = 90  # the default longest explanation, in words (citations not counted)
# Hiding one part that drops the prediction by at least this much names a cause even when it does not flip.
STRONG_DROP = 0.25
# A group's change leads its paragraph when it turns back this much more of the group (2 of 8) than it
# turns of the reference photos (explain.groups.Reference).
SPECIFIC_MARGIN = 0.25
# Words as the grounding gate counts them (noodlenext.llm.text.words): "strand-like" is two.
_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?")


def _cited(text: str, numbers: list[int]) -> str:
    """A sentence with its claims' numbers before its full stop: "... confidence [1]."."""
    cite = f" [{', '.join(str(n) for n in numbers)}]"
    return f"{text[:-1]}{cite}{text[-1]}" if text[-1:] in ".!?" else f"{text}{cite}"


def _words(text: str) -> int:
    return len(_WORD.findall(re.sub(r"\[[\d,\s]+\]", " ", text)))


def _repeats(text: str) -> bool:
    """Whether a phrase repeats as the grounding gate rejects it: 8 words twice, or 4 words three times."""
    ws = [w.lower() for w in _WORD.findall(re.sub(r"\[[\d,\s]+\]", " ", text))]
    for n, most in ((8, 1), (4, 2)):
        grams = [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]
        if any(grams.count(g) > most for g in set(grams)):
            return True
    return False


def _fit(first: list[str], extras: list[str], max_words: int) -> str:
    """`first` always, then each extra while the words stay within max_words and no phrase repeats."""
    out = list(first)
    for extra in extras:
        longer = " ".join([*out, extra])
        if _words(longer) <= max_words and not _repeats(longer):
            out.append(extra)
    return " ".join(out)


def photo_template(evidence: Evidence, max_words: int = MAX_WORDS) -> str:
    """2-5 lay sentences from one photo's claims (see the module docstring); the verdict and the map's
    sentence always stay, the rest only while the whole keeps within `max_words` words."""
    claims = evidence.claims()
    number = {id(c): n for n, c in enumerate(claims, 1)}
    kinds: dict[str, Claim] = {}
    for c in claims:
        kinds.setdefault(c.kind if c.kind != "map" else f"map:{c.map}", c)
    say = lambda c, shown=None: _cited(sentence(shown or c), [number[id(c)]])  # noqa: E731
    first = [say(claims[0])]
    primary = evidence.primary
    main = kinds.get(f"map:{primary}")
    if main is None:
        first.append("No heatmap of this photo is available, so nothing shows where the classifier looked.")
        return _fit(first, [], max_words)
    first += _causes([c for c in claims if c.kind in CAUSE_KINDS], say)
    first.append(say(main))
    extras = []
    if "appearance" in kinds and not main.fields.get("empty"):
        extras.append(say(kinds["appearance"]))
    if "hiding" in kinds:
        extras.append(say(kinds["hiding"]))
    advice = [c for c in claims if c.kind == "advice"][:1]
    if "neighbours" in kinds and not any(c.advice == "add_photos" for c in advice):  # it says the same
        extras.append(say(kinds["neighbours"]))
    extras += [say(c) for c in advice]
    tested = [say(c) for c in claims if c.kind == "tested_fix"][:1]
    # the retrain that proved a fix always closes the paragraph, in words of its own (tested_allowance)
    return " ".join([_fit(first, extras, max_words), *tested])


def tested_allowance(claims: list[Claim]) -> int:
    """The words an explanation may spend beyond its limit on the retrain that proved a fix (the length of
    that line's lay sentence; 0 when there is none): its quoted fix can be long, and it must not crowd out
    why the photo was taken for what it was."""
    return next((len(_WORD.findall(sentence(c))) for c in claims if c.kind == "tested_fix"), 0)


def _causes(claims: list[Claim], say: Callable[..., str]) -> list[str]:
    """The sentences of what changing the photo did that found a cause, for the start of a paragraph: the
    part whose hiding matters (with its look), and the first whole-photo change that flips the prediction
    (or that turns photos of a group back). Nothing when no change matters. A group's second cause whose
    count on the photos it got right is the same as the first's says so briefly ("and none of those")."""
    out = []
    parts_said = False  # a group's part: one sentence, of the group_occlusion claim that leads
    references: set[tuple[int, ...]] = set()

    def said(c: Claim) -> str:
        ref = tuple(c.fields.get("reference") or ())
        if ref and ref in references:
            return say(c, shown=replace(c, fields={**c.fields, "reference_again": True}))
        references.add(ref)
        return say(c)

    for c in claims:
        f = c.fields
        flips = bool(c.becomes) and c.becomes[0] != f.get("predicted")
        strong = c.kind == "occlusion" and f["before"] - f["after"] >= STRONG_DROP
        if c.kind == "occlusion" and not f["barely"] and (flips or strong):
            out.append(said(c))
        elif c.kind == "occlusion_look" and out and f.get("unusual"):
            out.append(said(c))
        elif c.kind == "group_occlusion" and _specific(f) and not parts_said:
            out.append(said(c))
            parts_said = True
        elif (c.kind == "whole_photo" and flips) or (c.kind == "group_whole_photo" and _specific(f)):
            out.append(said(c))
            break
    return out


def _specific(f: dict) -> bool:
    """A group's change turns some of its photos back, and in at least SPECIFIC_MARGIN more of them than
    it turns of the photos of the predicted class it got right into the true class (when it was tried on
    them): on a quickstart with no shortcut, a warmer tint turned 3 of 8 mistakes back and 2 of 8 right
    photos over, which is no cause to lead a paragraph with."""
    back, k = f.get("back", 0), f["k"]
    if not back:
        return False
    m, of = f.get("reference") or (0, 1)
    return back / k - m / of >= SPECIFIC_MARGIN


def group_template(evidence: Evidence, max_words: int = MAX_WORDS) -> str:
    """2-5 lay sentences from a group's claims: how many photos of which class were taken for which, with
    what mean confidence; where their heat most often is and what it looks like (with a warning when most
    maps do not beat random); what hiding it did; what the nearest training photos are; the suggestion to
    collect photos of a dominant pair."""
    claims = evidence.claims()
    number = {id(c): n for n, c in enumerate(claims, 1)}
    kinds = {c.kind: c for c in evidence.summary}
    say = lambda c, *also, shown=None: _cited(sentence(shown or c), [*also, number[id(c)]])  # noqa: E731
    size, hot = kinds["group_size"], kinds["group_hot"]
    map_line = size.fields.get("map_line", 2)
    first = [say(size, 1), *_causes([c for c in claims if c.kind in CAUSE_KINDS], say)]
    first.append(say(hot, map_line) if hot.fields["shared"] else say(hot))
    if "group_look" in kinds and hot.regions:
        first.append(say(kinds["group_look"]))
    trust = kinds.get("group_trust")
    if trust is not None and trust.verdict != "informative":
        first.append(say(trust))
    extras = [say(kinds[k]) for k in ("group_hiding", "group_neighbours") if k in kinds]
    extras += [say(c) for c in evidence.summary if c.kind == "advice"][:1]
    return _fit(first, extras, max_words)


def finding_answer(evidence: Evidence, finding: Finding) -> str:
    """The template's answer to a follow-up that `finding` (one of `evidence.findings`) answers: its own
    lines, with the evidence line numbers cited."""
    numbers = evidence.finding_lines(finding)
    return " ".join(_cited(line(c), [n]) for c, n in zip(finding.claims, numbers, strict=True))

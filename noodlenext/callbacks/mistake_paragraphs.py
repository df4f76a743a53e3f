"""One paragraph per group of mistakes, from the run's language model, checked against the group's claims
by the grounding gate and two checks of its own (`check_paragraph`: not a list, no fact copied word for
word); a rejected draft is regenerated once with the reasons, then replaced by the group template
(`explain.templates.group_template`), marked as such.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from noodlenext.callbacks.guarded import step_error
from noodlenext.callbacks.mistake_groups import MistakeGroup
from noodlenext.explain.evidence import Evidence
from noodlenext.explain.templates import group_template
from noodlenext.explain.wording import line
from noodlenext.llm.base import generation_options
from noodlenext.llm.grounding import GroundedText, GroundingVerdict, check_explanation, grounded_batch
from noodlenext.llm.load import load_backend
from noodlenext.llm.prompt import PromptSettings, examples_of, group_messages, structured_instruction
from noodlenext.llm.text import words

log = logging.getLogger(__name__)

# A paragraph says what the photos share; a small model tends to copy the numbered facts back instead
# (seen with SmolLM2: "1. The classifier predicted udon with 58% confidence; ..."), which the gate lets by.
_LIST_ITEM = re.compile(r"(?m)^\s*(?:\d+[.)]|[-*\u2022])\s")
COPIED_WORDS = 12  # this many words in a row from one evidence line are a copy, not a summary


def check_paragraph(text: str, evidence: Evidence, max_words: int) -> GroundingVerdict:
    """The grounding gate (`check_explanation`), and two checks of its own: the paragraph is not a list
    (no line starts "1." or "-") and copies no COPIED_WORDS words in a row from an evidence line (but the
    first, the verdict, which a paragraph may restate)."""
    verdict = check_explanation(text, evidence, max_words)
    reasons = list(verdict.reasons)
    if _LIST_ITEM.search(text):
        reasons.append("is a list; write one paragraph saying what the photos share")
    said = words(text)
    grams = {tuple(said[i : i + COPIED_WORDS]) for i in range(len(said) - COPIED_WORDS + 1)}
    for n, claim in enumerate(evidence.claims()[1:], 2):
        ws = words(line(claim))
        if any(tuple(ws[i : i + COPIED_WORDS]) in grams for i in range(len(ws) - COPIED_WORDS + 1)):
            reasons.append(f"copies fact [{n}] word for word instead of saying what the photos share")
            break
    return GroundingVerdict(not reasons, reasons)


def explain_groups(
    groups: Sequence[MistakeGroup], llm: Mapping[str, Any] | Any, prompt: PromptSettings
) -> None:
    """One gated paragraph per group with evidence (step llm): the model's (`llm`, a conf/llm config;
    llm=none: none), its retry, or the group template's (`grounded_batch` with `check_paragraph`); when the
    model cannot load or answer, the template's and the error, for every group."""
    todo = [g for g in groups if g.evidence is not None]
    max_words = prompt.max_words
    backend = None
    try:
        for group in todo:
            group.messages, group.paragraph = group_messages(group.evidence, prompt, examples_of(llm)), None
        backend = load_backend(llm) if todo else None
        if backend is not None:
            results = grounded_batch(
                backend,
                [g.messages for g in todo],
                [lambda t, e=g.evidence: check_paragraph(t, e, max_words) for g in todo],
                [lambda e=g.evidence: group_template(e, max_words) for g in todo],
                prompt.retry,
                structured=structured_instruction(prompt, llm),
                **generation_options(llm),
            )
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

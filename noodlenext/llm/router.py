"""Which test a follow-up question needs: a keyword router for small models, tool calls for large ones.

A small model (SmolLM2-135M) cannot be trusted to pick a function and fill in its arguments, so `route`
reads the question with plain patterns: "why not udon?" -> `why_not(other="udon")`, "what would change
your mind?" -> `change_mind()`, and so on (`noodlenext.explain.probes.PROBES`). A backend with function
calling (an OpenAI-compatible server, a transformers chat template that takes tools) is offered
`tool_specs()` instead, and its call is read by `parse_tool_call`; whatever it picks is validated against
the probes before anything runs, and the router decides when it picks nothing usable.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from noodlenext.explain.evidence import Evidence
from noodlenext.explain.probes import PROBES
from noodlenext.llm.reading import class_mentions


@dataclass(frozen=True)
class ToolCall:
    """A probe to run: its name and arguments, and who picked it ("router" or "model")."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    source: str = "router"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": dict(self.arguments), "source": self.source}


# In order: the first probe whose pattern matches the question is the one run.
_ROUTES: list[tuple[str, re.Pattern[str]]] = [
    (
        "change_mind",
        re.compile(
            r"\bchange\s+(?:your|its|the\s+model'?s?|the\s+classifier'?s?)\s+mind\b|\bchange\s+the\s+"
            r"(?:prediction|answer|decision)\b|\bwhat\s+would\s+(?:make|it\s+take)\b|\bflip\b|\bconvince\b|"
            r"\bchange\s+(?:your|its)\s+(?:answer|decision|prediction)\b",
            re.I,
        ),
    ),
    (
        "how_sure",
        re.compile(
            r"\bhow\s+(?:sure|certain|confident)\b|\bconfiden\w*|\bcertain\w*|\bprobabilit\w*|\bunsure\b|"
            r"\btrust\b|\bdoubt\w*|\bchances?\b",
            re.I,
        ),
    ),
    (
        "similar",
        re.compile(
            r"\bsimilar\b|\bnearest\b|\bneighbou?rs?\b|\bresembl\w*|\btraining\s+(?:photo|image|picture|"
            r"example|data)\w*|\bother\s+(?:photos|images|pictures|examples)\b|\balike\b|\bexamples?\b",
            re.I,
        ),
    ),
    (
        "whole_photo",
        re.compile(
            r"\bgr[ae]y\s*-?scale\b|\bblack[\s-]+and[\s-]+white\b|\bmonochrome\b|\bresolution\b|\bblur\w*|"
            r"\bsharp\w*|\bjpe?g\b|\bcompress\w*|\btint\w*|\bwhite\s+balance\b|\bwarmer\b|\bcooler\b|"
            r"\bcrop\w*|\bborders?\b|\bframe[sd]?\b|\bbackground\b|\bsurroundings\b|\bwhole\s+(?:photo|"
            r"image|picture)\b|\bwithout\s+(?:the\s+|its\s+)?colou?rs?\b|\bshortcut\w*|\bwatermark\w*",
            re.I,
        ),
    ),
    (
        "looks_like",
        re.compile(
            r"\blooks?\s+like\b|\bcolou?rs?\b|\btexture\b|\bbright\w*|\bappearance\b|\bwhat\s+(?:did|does|do)"
            r"\s+(?:it|you|the\s+model)\s+see\b|\bwhat\s+is\s+there\b",
            re.I,
        ),
    ),
    (
        "which_part",
        re.compile(
            r"\bwhich\s+(?:part|region|area|bit)s?\b|\bwhat\s+(?:part|region|area)s?\b|\bwhere\b|\bmatter\w*|"
            r"\bfocus\w*|\blook(?:ed|ing)?\s+at\b|\bwhy\b|\bdecid\w*|\bhow\s+did\b|\breason\w*",
            re.I,
        ),
    ),
]
# Words that set the prediction against another class: "why not udon?", "ramen rather than udon".
_WHY_NOT = re.compile(
    r"\bnot\b|\bisn'?t\b|\bwasn'?t\b|\binstead\s+of\b|\brather\s+than\b|\bover\b|\bversus\b|\bvs\b",
    re.I,
)


def route(question: str, evidence: Evidence) -> ToolCall | None:
    """The probe a question needs, or None when none fits (then the answer rests on the evidence already
    gathered). A question naming a class other than the prediction, with "not", "instead of", "rather
    than" or "over", is `why_not` of that class; "why not?" alone is `why_not` of the contrast class."""
    mentioned = list(class_mentions(question, evidence.class_names))
    named = [n for n in mentioned if n != evidence.predicted]
    if _WHY_NOT.search(question):
        if named or mentioned:  # "why not ramen?" of a ramen prediction: the test says it is ramen
            return ToolCall("why_not", {"other": (named or mentioned)[0]})
        if re.search(r"\bwhy\s+not\b", question, re.I):
            return ToolCall("why_not", {"other": evidence.contrast_class})
    if named and re.search(r"\bwhy\b|\bhow\s+come\b", question, re.I):
        return ToolCall("why_not", {"other": named[0]})  # "why udon?" on a ramen prediction
    for name, pattern in _ROUTES:
        if pattern.search(question):
            return ToolCall(name)
    return None


def tool_specs() -> list[dict[str, Any]]:
    """The probes as OpenAI-style function tools (what `chat.completions.create(tools=...)` takes)."""
    return [
        {
            "type": "function",
            "function": {"name": spec.name, "description": spec.description, "parameters": spec.parameters},
        }
        for spec in PROBES.values()
    ]


_JSON = re.compile(r"\{.*\}", re.S)
_CALL = re.compile(r"\b(?P<name>[a-z_]+)\s*\((?P<args>[^()]*)\)")
_KWARG = re.compile(r"(?P<key>\w+)\s*=\s*(?P<q>[\"'])(?P<value>.*?)(?P=q)")


def parse_tool_call(text: str, source: str = "model") -> ToolCall | None:
    """A probe call in a model's words: JSON (`{"name": "why_not", "arguments": {"other": "udon"}}`, also
    with "parameters", or an OpenAI `function` object) or a Python-style call (`why_not(other="udon")`,
    as Gemma's function-calling prompt asks for). None when there is no call to a known probe."""
    match = _JSON.search(text)
    if match:
        try:
            data = json.loads(match.group(0))
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            data = data.get("function", data)
            name = data.get("name")
            args = data.get("arguments", data.get("parameters", {}))
            if isinstance(args, str):
                try:
                    args = json.loads(args or "{}")
                except json.JSONDecodeError:
                    args = None
            if name in PROBES and isinstance(args, dict):
                return ToolCall(str(name), {str(k): v for k, v in args.items()}, source)
    for m in _CALL.finditer(text):
        if m.group("name") in PROBES:
            args = {k.group("key"): k.group("value") for k in _KWARG.finditer(m.group("args"))}
            return ToolCall(m.group("name"), args, source)
    return None

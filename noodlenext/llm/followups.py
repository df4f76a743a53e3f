"""Follow-up questions answered by running the classifier: pick the test, run it, phrase it, check it.

`answer_followup(session, question, probe, evidence)`:
1. picks the probe the question needs: the backend's own tool call when it has function calling
   (`Backend.choose_tool`), else (or when the model's pick is unusable) the keyword router (`route`);
2. runs it on the photo (`PhotoProbe.run`): a `Finding` whose sentences join the evidence lines;
3. asks the language model to answer from those lines, and passes the answer through the grounding gate
   as a follow-up (`ChatSession.ask_grounded`); a failing answer is retried once, then replaced by the
   finding's own sentences (`templates.finding_answer`), marked as the template's.

A question no probe fits is answered from the evidence already gathered, through the same gate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from noodlenext.explain.evidence import Evidence
from noodlenext.explain.probes import PROBES, PhotoProbe, ProbeResult
from noodlenext.explain.templates import finding_answer
from noodlenext.llm.base import LLMError
from noodlenext.llm.grounding import GroundedText
from noodlenext.llm.prompt import PromptSettings
from noodlenext.llm.router import ToolCall, parse_tool_call, route, tool_specs
from noodlenext.llm.session import ChatSession

log = logging.getLogger(__name__)


@dataclass
class FollowupAnswer:
    """What a reader is shown: the checked text, the test that was run (None: no test fitted) and its
    result (the finding's lines, and a picture to show beside the words), and the evidence as it now is
    (with the finding added: what the next question is checked against)."""

    text: GroundedText
    call: ToolCall | None
    result: ProbeResult | None
    evidence: Evidence

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text.to_dict(),
            "call": self.call.to_dict() if self.call else None,
            "finding": self.result.finding.probe if self.result else None,
        }


def choose_probe(session: ChatSession, question: str, evidence: Evidence) -> ToolCall | None:
    """The model's tool call when its backend has function calling and it picked a valid probe, else the
    router's choice (None: no probe fits)."""
    backend = session.backend
    if backend.supports_tools:
        system = [m for m in session.messages[:1] if m.get("role") == "system"]
        asked = [*system, {"role": "user", "content": question}]
        try:
            picked = backend.choose_tool(asked, tool_specs())
        except LLMError as err:  # e.g. a server without tool support: the router decides instead
            log.warning("%s could not pick a test (%s): the router decides", backend.name, err)
            picked = None
        call = _as_call(picked)
        if call is not None:
            return call
    return route(question, evidence)


def _as_call(picked: dict[str, Any] | str | None) -> ToolCall | None:
    """A backend's pick as a call of a known probe (a native call's dict, or text to read one from)."""
    if isinstance(picked, dict):
        name, arguments = picked.get("name"), picked.get("arguments")
        if name in PROBES and isinstance(arguments, dict):
            return ToolCall(str(name), {str(k): v for k, v in arguments.items()}, "model")
        return None
    return parse_tool_call(picked) if picked else None


def _run(
    probe: PhotoProbe, call: ToolCall, question: str, evidence: Evidence
) -> tuple[ToolCall, ProbeResult]:
    try:
        return call, probe.run(call.name, **call.arguments)
    except ValueError as err:
        if call.source == "router":
            raise
        fallback = route(question, evidence)  # the model's arguments were unusable ("other": "pizza")
        log.warning("the model's test %s(%s) failed (%s): using the router's", call.name, call.arguments, err)
        if fallback is None:
            raise
        return fallback, probe.run(fallback.name, **fallback.arguments)


def followup_prompt(question: str, evidence: Evidence, result: ProbeResult) -> str:
    """The user turn: the question, then the test's lines numbered as they are in the evidence."""
    numbers = evidence.finding_lines(result.finding)
    lines = "\n".join(f"{n}. {line}" for n, line in zip(numbers, result.finding.lines, strict=True))
    cite = f"[{numbers[0]}]" if len(numbers) == 1 else f"[{numbers[0]}] to [{numbers[-1]}]"
    return (
        f"{question}\n\nTo answer this, the classifier was just tested. The result, facts {cite}:\n{lines}\n"
        f"Answer the question from these facts in one to three short sentences, citing them like {cite[:4]}."
    )


def answer_followup(
    session: ChatSession,
    question: str,
    probe: PhotoProbe | None,
    evidence: Evidence,
    prompt: PromptSettings | Any,
) -> FollowupAnswer:
    """Answer `question` by running the test it needs on the photo (see the module doc); without a probe
    (a resumed chat whose photo is gone) or a fitting test, from the evidence already gathered."""
    previous = [str(m["content"]) for m in session.messages[1:] if m["role"] == "assistant"]
    call = choose_probe(session, question, evidence) if probe is not None else None
    if call is None or probe is None:
        text = session.ask_grounded(question, evidence, prompt, followup=True, previous=previous)
        return FollowupAnswer(text, None, None, evidence)
    call, result = _run(probe, call, question, evidence)
    evidence = evidence.with_finding(result.finding)
    text = session.ask_grounded(
        followup_prompt(question, evidence, result),
        evidence,
        prompt,
        followup=True,
        template=finding_answer(evidence, result.finding),
        finding=result.finding,
        previous=previous,
    )
    session.metadata["evidence"] = evidence.to_dict()  # a resumed chat is checked against the findings too
    session.metadata.setdefault("followups", []).append({"question": question, "call": call.to_dict()})
    return FollowupAnswer(text, call, result, evidence)

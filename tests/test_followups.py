"""Follow-ups answered by running the classifier: the model's own tool call where the backend has function
calling (an OpenAI-compatible server; a transformers chat model), the router otherwise, and the gate."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from test_llm_openai import completion, local_server, send
from test_probes import probe_for
from tiny_llms import save_tiny_gemma3

from noodlenext.explain.probes import PROBES
from noodlenext.llm.base import Message
from noodlenext.llm.followups import answer_followup
from noodlenext.llm.grounding import check_explanation
from noodlenext.llm.openai_backend import OpenAIBackend
from noodlenext.llm.prompt import PromptSettings
from noodlenext.llm.router import ToolCall
from noodlenext.llm.session import ChatSession
from noodlenext.llm.transformers_backend import TransformersBackend

SYSTEM: list[Message] = [{"role": "system", "content": "You explain an image classifier's decisions."}]


PROMPT = PromptSettings.default()


def tool_call(name: str, arguments: dict[str, Any] | str) -> bytes:
    """An OpenAI chat completion that calls one function."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": args}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
    return json.dumps(
        {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]}
    ).encode()


def server(pick: bytes | int, answer: str):
    """A scripted OpenAI-compatible server: a request offering tools gets `pick` (a reply, or an HTTP
    error status), any other chat request the answer text; anything else (e.g. /tokenize) 404."""

    def reply(handler: BaseHTTPRequestHandler, record: dict[str, Any]) -> None:
        if not record["path"].endswith("/chat/completions"):
            return send(handler, 404, b"{}")
        if "tools" in json.loads(record["body"]):
            return (
                send(handler, pick, b'{"error": {"message": "tools need --jinja"}}')
                if isinstance(pick, int)
                else send(handler, 200, pick)
            )
        return send(handler, 200, completion(answer))

    return local_server(reply)


def test_a_native_tool_call_picks_the_test_and_its_result_is_cited() -> None:
    probe = probe_for()
    n = len(probe.evidence.lines())
    answer = f"The evidence for ramen over udon sits in the upper left [{n + 2}]."
    with server(tool_call("why_not", {"other": "udon"}), answer) as (url, seen):
        backend = OpenAIBackend(f"{url}/v1", "m", max_retries=0)
        session = ChatSession(backend, SYSTEM, max_new_tokens=64)
        out = answer_followup(session, "Could it be something else?", probe, probe.evidence, PROMPT)
        backend.close()
    assert out.call == ToolCall("why_not", {"other": "udon"}, "model")  # the router would have picked none
    offered = [json.loads(r["body"]) for r in seen if r["path"].endswith("/chat/completions")]
    assert [t["function"]["name"] for t in offered[0]["tools"]] == list(PROBES)
    assert offered[0]["tool_choice"] == "auto"
    assert out.text.source == "llm" and out.text.text == answer
    assert out.evidence.findings == [out.result.finding] and out.result.finding.probe == "why_not"
    # What the model was asked to phrase: the question and the test's lines, numbered as in the evidence.
    asked = offered[1]["messages"][-1]["content"]
    assert asked.startswith("Could it be something else?") and f"{n + 1}. Asked why not udon" in asked
    assert session.messages[-1] == {"role": "assistant", "content": answer}


@pytest.mark.parametrize(
    ("pick", "question", "expected"),
    [
        (tool_call("why_not", {"other": "pizza"}), "Why not udon?", ToolCall("why_not", {"other": "udon"})),
        (tool_call("why_not", "{not json"), "How sure is it?", ToolCall("how_sure")),
        (completion("how_sure()"), "Is it sure?", ToolCall("how_sure", {}, "model")),  # a call written out
        (500, "Which part mattered?", ToolCall("which_part")),  # a server without tools: the router
    ],
)
def test_an_unusable_tool_call_falls_back_to_the_router(
    pick: bytes | int, question: str, expected: ToolCall
) -> None:
    probe = probe_for()
    with server(pick, "It is ramen.") as (url, _):
        backend = OpenAIBackend(f"{url}/v1", "m", max_retries=0)
        session = ChatSession(backend, SYSTEM, max_new_tokens=64)
        out = answer_followup(session, question, probe, probe.evidence, PROMPT)
        backend.close()
    assert out.call == expected
    # "It is ramen." cites no line of the test: rejected twice, so the reader gets the test's own words.
    assert out.text.source == "template" and all(
        "does not cite the test's result" in " ".join(v.reasons) for v in out.text.verdicts
    )
    assert check_explanation(out.text.text, out.evidence, followup=True, finding=out.result.finding).passed


def test_a_transformers_chat_model_is_asked_for_a_call_and_the_router_covers_for_it(tmp_path: Path) -> None:
    """A random tiny Gemma 3 writes no usable call: the router picks, the gate still decides."""
    backend = TransformersBackend(str(save_tiny_gemma3(tmp_path / "gemma3")))
    assert backend.supports_tools
    picked = backend.choose_tool([*SYSTEM, {"role": "user", "content": "Why not udon?"}], [])
    assert picked is None or isinstance(picked, str)
    probe = probe_for()
    session = ChatSession(backend, SYSTEM, max_new_tokens=16)
    out = answer_followup(session, "Why not udon?", probe, probe.evidence, PROMPT)
    assert out.call == ToolCall("why_not", {"other": "udon"})
    # Its random words cite no line of the test: both drafts are rejected, the test's own words are shown.
    assert out.text.source == "template" and len(out.text.verdicts) == 2
    assert check_explanation(out.text.text, out.evidence, followup=True, finding=out.result.finding).passed
    # A question no test fits is answered from the evidence, through the same gate.
    plain = answer_followup(session, "Thanks!", probe, out.evidence, PROMPT)
    assert plain.call is None and plain.result is None and plain.evidence is out.evidence

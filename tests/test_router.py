"""The router that picks the test a follow-up question needs, and the reading of a model's tool call."""

from __future__ import annotations

import pytest

from noodlenext.explain.evidence import Evidence
from noodlenext.explain.facts import heatmap_facts
from noodlenext.explain.probes import PROBES
from noodlenext.llm.router import ToolCall, parse_tool_call, route, tool_specs


def evidence() -> Evidence:
    import numpy as np

    facts = heatmap_facts(np.eye(8, dtype=np.float32))
    return Evidence(
        file="a.jpg",
        class_names=["spaghetti", "ramen", "udon"],
        probabilities={"spaghetti": 0.1, "ramen": 0.7, "udon": 0.2},
        predicted="ramen",
        true_label="udon",
        contrast_class="udon",
        facts={"scorecam": facts},
    )


@pytest.mark.parametrize(
    ("question", "call"),
    [
        ("Why not udon?", ToolCall("why_not", {"other": "udon"})),
        ("why isn't it spaghetti", ToolCall("why_not", {"other": "spaghetti"})),
        ("Why ramen rather than udon?", ToolCall("why_not", {"other": "udon"})),
        ("Why spaghetti?", ToolCall("why_not", {"other": "spaghetti"})),
        ("Why not?", ToolCall("why_not", {"other": "udon"})),  # the contrast class
        ("Why not ramen?", ToolCall("why_not", {"other": "ramen"})),  # the prediction: "it does predict it"
        ("What would change your mind?", ToolCall("change_mind")),
        ("How sure are you?", ToolCall("how_sure")),
        ("What is the probability it is right?", ToolCall("how_sure")),
        ("Which training photos are similar?", ToolCall("similar")),
        ("What does it look like?", ToolCall("looks_like")),
        ("What colour is the hot part?", ToolCall("looks_like")),
        ("Which part mattered?", ToolCall("which_part")),
        ("Why did you decide that?", ToolCall("which_part")),
        ("Where did it look?", ToolCall("which_part")),
        ("What if the photo were black and white?", ToolCall("whole_photo")),
        ("Is it the background or the border?", ToolCall("whole_photo")),
        ("Would a lower resolution change it?", ToolCall("whole_photo")),
        ("Did it learn a shortcut?", ToolCall("whole_photo")),
        ("Thanks!", None),
    ],
)
def test_route(question: str, call: ToolCall | None) -> None:
    assert route(question, evidence()) == call


def test_tool_specs_are_openai_functions_for_every_probe() -> None:
    specs = tool_specs()
    assert [s["function"]["name"] for s in specs] == list(PROBES)
    why_not = specs[0]["function"]
    assert why_not["parameters"]["required"] == ["other"] and specs[0]["type"] == "function"


@pytest.mark.parametrize(
    ("text", "call"),
    [
        (
            '{"name": "why_not", "arguments": {"other": "udon"}}',
            ToolCall("why_not", {"other": "udon"}, "model"),
        ),
        ('```json\n{"name": "how_sure", "parameters": {}}\n```', ToolCall("how_sure", {}, "model")),
        (
            '{"function": {"name": "why_not", "arguments": "{\\"other\\": \\"udon\\"}"}}',
            ToolCall("why_not", {"other": "udon"}, "model"),
        ),
        (
            '```tool_code\nwhy_not(other="spaghetti")\n```',
            ToolCall("why_not", {"other": "spaghetti"}, "model"),
        ),
        ("I think change_mind() would tell.", ToolCall("change_mind", {}, "model")),
        ('{"name": "rm_rf", "arguments": {}}', None),  # not a probe
        ("The classifier predicted ramen.", None),
        ("{not json at all", None),
    ],
)
def test_parse_tool_call(text: str, call: ToolCall | None) -> None:
    assert parse_tool_call(text) == call

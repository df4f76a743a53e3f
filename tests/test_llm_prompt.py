"""The explanation prompt: facts in, chat messages out, templates from the real composed config."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from omegaconf import DictConfig

from noodlenext.explain.evidence import Evidence
from noodlenext.explain.facts import heatmap_facts
from noodlenext.llm.base import images_of, text_of, text_only
from noodlenext.llm.prompt import ExplainRequest, evidence_fields, evidence_messages, explain_messages

NAMES = ["spaghetti", "ramen", "udon"]


def request(true_label: str | None = "udon", predicted: str = "ramen") -> ExplainRequest:
    cam = np.zeros((30, 30), np.float32)
    cam[:10, :10] = 1.0  # heat in the upper left
    probs = {"spaghetti": 0.05, "ramen": 0.7, "udon": 0.25}
    return ExplainRequest(
        file="test/2_udon/001.jpg",
        class_names=NAMES,
        probabilities=probs,
        predicted=predicted,
        facts=heatmap_facts(cam),
        true_label=true_label,
        images=["photo.png", "overlay.png"],
    )


@pytest.fixture
def prompt(compose_cfg: Callable[..., DictConfig]) -> DictConfig:
    return compose_cfg("train").prompt


def test_a_mistake_is_asked_about_with_all_its_facts(prompt: DictConfig) -> None:
    system, user = explain_messages(request(), prompt, multimodal=False)
    assert system["role"] == "system" and "ScoreCAM" in system["content"]
    assert "spaghetti, ramen, udon" in system["content"]
    text = user["content"]
    assert isinstance(text, str)
    assert '"ramen" with 70% confidence' in text
    assert "True label: udon (the prediction is wrong)" in text
    assert "ramen 70%, udon 25%, spaghetti 5%" in text
    assert "upper left" in text and "taken this udon dish for ramen" in text
    assert "{" not in text  # every field filled


@pytest.mark.parametrize(
    ("true_label", "verdict", "asks"), [("ramen", "correct", "how sure"), (None, "unknown", "how far")]
)
def test_the_question_follows_the_verdict(
    prompt: DictConfig, true_label: str | None, verdict: str, asks: str
) -> None:
    _, user = explain_messages(request(true_label), prompt, multimodal=False)
    assert f"(the prediction is {verdict})" in user["content"] and asks in user["content"]


def test_a_multimodal_model_gets_photo_then_overlay_before_the_text(prompt: DictConfig) -> None:
    messages = explain_messages(request(), prompt, multimodal=True)
    assert images_of(messages[1]["content"]) == ["photo.png", "overlay.png"]
    assert text_of(messages[1]["content"]).startswith("The first image is the photo")
    flat = text_only(messages)
    assert images_of(flat[1]["content"]) == [] and "70% confidence" in flat[1]["content"]


def test_templates_are_overridable_and_a_bad_field_names_the_option(
    compose_cfg: Callable[..., DictConfig],
) -> None:
    cfg = compose_cfg("train", ["prompt.explain='Guess: {predicted} at {confidence}. {question}'"])
    _, user = explain_messages(request(), cfg.prompt, multimodal=False)
    assert user["content"].startswith("Guess: ramen at 70%.")
    bad = compose_cfg("train", ["prompt.system='You judge {dish}.'"]).prompt
    with pytest.raises(ValueError, match=r"prompt.system.*'dish'.*fields are \{file\}, \{classes\}"):
        explain_messages(request(), bad, multimodal=False)


def test_request_serialises_to_json_types() -> None:
    import json

    data = json.loads(json.dumps(request().to_dict()))
    assert data["predicted"] == "ramen" and data["facts"]["peak_region"] == "upper left"


# ------------------------------------------------------------------------------------------ evidence path
def evidence(true_label: str | None = "udon") -> Evidence:
    cam = np.zeros((30, 30), np.float32)
    cam[:10, :10] = 1.0  # heat in the upper left
    return Evidence(
        file="test/2_udon/001.jpg",
        class_names=NAMES,
        probabilities={"spaghetti": 0.05, "ramen": 0.7, "udon": 0.25},
        predicted="ramen",
        true_label=true_label,
        contrast_class=true_label or "udon",
        facts={"scorecam": heatmap_facts(cam)},
    )


def test_evidence_messages_list_the_numbered_lines_and_ask_for_citations(prompt: DictConfig) -> None:
    e = evidence()
    system, user = evidence_messages(e, prompt, multimodal=False)
    rules = system["content"]
    assert "Use only the numbered facts" in rules and "regions that the facts name" in rules
    assert "classes" in rules and "[2]" in rules
    assert "spaghetti" not in rules  # a class the facts do not involve is not put in the model's mouth
    text = user["content"]
    assert isinstance(text, str) and "{" not in text
    for line in e.lines():
        assert line in text
    assert text.index("1. The classifier predicted ramen") < text.index("took this udon photo for ramen")
    assert "2 to 4 short sentences" in text and "[2]" in text


@pytest.mark.parametrize(("true_label", "asks"), [("ramen", "how sure"), (None, "how far to trust")])
def test_the_evidence_question_follows_the_verdict(
    prompt: DictConfig, true_label: str | None, asks: str
) -> None:
    _, user = evidence_messages(evidence(true_label), prompt, multimodal=False)
    assert asks in user["content"] and "took this" not in user["content"]


def test_evidence_for_a_multimodal_model_comes_after_the_images(prompt: DictConfig) -> None:
    e = evidence()
    messages = evidence_messages(e, prompt, multimodal=True, images=["photo.png", "overlay.png"])
    assert images_of(messages[1]["content"]) == ["photo.png", "overlay.png"]
    assert text_of(messages[1]["content"]).startswith("The first image is the photo")
    assert (
        evidence_messages(e, prompt, multimodal=True)[1]["content"]
        == (evidence_messages(e, prompt, multimodal=False)[1]["content"])
    )  # no images given: text only
    fields = evidence_fields(e)
    assert fields["n_lines"] == str(len(e.lines())) and fields["true_label"] == "udon"


def test_evidence_templates_are_overridable_and_a_bad_field_names_the_option(
    compose_cfg: Callable[..., DictConfig],
) -> None:
    cfg = compose_cfg("train", ["prompt.evidence_explain='{n_lines} facts: {lines} {question}'"])
    _, user = evidence_messages(evidence(), cfg.prompt, multimodal=False)
    assert user["content"].startswith(f"{len(evidence().lines())} facts: 1. The classifier")
    bad = compose_cfg("train", ["prompt.evidence_ask_wrong='Why {dish}?'"]).prompt
    with pytest.raises(ValueError, match=r"prompt.evidence_ask_wrong.*'dish'.*fields are \{classes\}"):
        evidence_messages(evidence(), bad, multimodal=False)
    assert "{reasons}" in cfg.prompt.retry and cfg.prompt.max_words > 0

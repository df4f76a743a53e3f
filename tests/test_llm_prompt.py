"""The explanation prompt: claims in, chat messages out, templates from the real composed config."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf

from noodlenext.core.config import CONFIG_DIR
from noodlenext.explain.evidence import Evidence
from noodlenext.explain.facts import heatmap_facts
from noodlenext.llm.base import images_of, text_of
from noodlenext.llm.prompt import PromptSettings, evidence_fields, evidence_messages, group_messages

NAMES = ["spaghetti", "ramen", "udon"]


@pytest.fixture
def prompt(compose_cfg: Callable[..., DictConfig]) -> DictConfig:
    return compose_cfg("train").prompt


def test_prompt_settings_come_from_the_yaml_alone(prompt: DictConfig) -> None:
    """One source: the settings are the composed config's, and the shipped default is the same file."""
    settings = PromptSettings.of(prompt)
    assert settings == PromptSettings.default()
    assert settings.max_words == prompt.max_words and settings.retry == prompt.retry
    assert "{reasons}" in settings.retry
    assert PromptSettings.of(settings) is settings
    raw = OmegaConf.load(f"{CONFIG_DIR}/prompt/explain.yaml")
    del raw["retry"]
    with pytest.raises(ValueError, match="no retry"):
        PromptSettings.of(raw)


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


def test_a_mistake_is_asked_for_one_suggestion_and_a_group_what_it_shares(prompt: DictConfig) -> None:
    _, user = evidence_messages(evidence(), prompt, multimodal=False)
    assert "suggestion" in user["content"]
    system, _ = evidence_messages(evidence(), prompt, multimodal=False)
    assert "suggest nothing else" in system["content"]
    system, user = group_messages(evidence(), prompt)
    assert "group of photos" in system["content"] and "have in common" in user["content"]

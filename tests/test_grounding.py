"""The grounding gate: each check on hand-written texts, the template on many evidences, and the retry loop
with the real SmolLM2 (llama.cpp) writing the drafts."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import DictConfig

from noodlenext.explain.evidence import (
    Appearance,
    Counterfactual,
    Evidence,
    LabelQuality,
    MapTrust,
    Neighbour,
    RegionLook,
)
from noodlenext.explain.facts import heatmap_facts
from noodlenext.explain.templates import photo_template
from noodlenext.llm.base import generation_options
from noodlenext.llm.gguf_backend import GGUFBackend
from noodlenext.llm.grounding import (
    GroundedText,
    check_explanation,
    grounded,
    grounded_batch,
    photo_check,
    photo_fallback,
    retry_conversation,
)
from noodlenext.llm.prompt import PromptSettings, evidence_messages
from noodlenext.llm.reading import region_mentions, vocabulary
from noodlenext.llm.session import evidence_session
from noodlenext.llm.text import ends_on_sentence, sentences

NAMES = ["spaghetti", "ramen", "udon"]
PROMPT = PromptSettings.default()
WORDS = PROMPT.max_words
PROBS = {"spaghetti": 0.10, "ramen": 0.62, "udon": 0.28}


def hot_upper_right() -> np.ndarray:
    """A 30x30 map: all heat in the right column's top two cells (upper right hottest)."""
    cam = np.zeros((30, 30), np.float32)
    cam[:10, 20:] = 1.0
    cam[10:20, 20:] = 0.5
    return cam


def evidence(true_label: str | None = "udon", predicted: str = "ramen", **changes: object) -> Evidence:
    """A ramen prediction of an udon photo with every kind of evidence; `changes` replace fields."""
    probs = dict(PROBS) if predicted == "ramen" else {"spaghetti": 0.1, "ramen": 0.28, "udon": 0.62}
    other = "udon" if predicted == "ramen" else "ramen"
    hidden = {"spaghetti": 0.1, predicted: 0.3, other: 0.6}
    kept = {"spaghetti": 0.05, predicted: 0.8, other: 0.15}
    e = Evidence(
        file="test/2_udon/001.jpg",
        class_names=NAMES,
        probabilities=probs,
        predicted=predicted,
        true_label=true_label,
        contrast_class=true_label if true_label not in (None, predicted) else other,
        facts={"scorecam": heatmap_facts(hot_upper_right())},
        counterfactual=Counterfactual(probs, hidden, kept, predicted, drop=0.32, hot_area=0.2),
        appearance=Appearance(
            RegionLook(["yellow", "white"], 0.7, 0.3, "strand-like edges"),
            RegionLook(["brown"], 0.3, 0.1, "smooth surface"),
        ),
        neighbours=[Neighbour("a.jpg", "udon", 0.91), Neighbour("b.jpg", "ramen", 0.88)],
        trust={"scorecam": MapTrust("scorecam", 0.2, 0.7, 0.4, 0.5)},
        agreement=0.6,
    )
    return replace(e, **changes) if changes else e


FIRST = "The classifier took this udon photo for ramen [1]."
GOOD = f"{FIRST} Its heat is in the upper right [2]."


LEAD = "The classifier was 62% sure [1]. "  # a neutral first sentence: explanations need two


def reasons(text: str, e: Evidence | None = None, lead: str = LEAD, **kw: int) -> list[str]:
    """The gate's reasons for `text` after a neutral first sentence (lead="": `text` alone)."""
    return check_explanation(lead + text, e or evidence(), **kw).reasons


# ------------------------------------------------------------------------------------------ the checks
def test_a_grounded_text_passes() -> None:
    e = evidence()
    assert e.hot_regions() == ["upper right", "middle right"] and set(e.involved_classes()) == {
        "ramen",
        "udon",
    }
    verdict = check_explanation(GOOD, e)
    assert verdict.passed and verdict.reasons == []
    assert json.loads(json.dumps(verdict.to_dict())) == {"passed": True, "reasons": []}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("The heat is in the upper right [2].", "does not name the predicted class, ramen"),
        ("The classifier predicted ramen [1].", "does not name the true class, udon"),
        # the swap of issue 12: the photo called what the classifier said
        (
            "It is ramen, and the classifier predicted ramen, not udon.",
            "says the photo is ramen, but its true",
        ),
        (
            "The photo shows ramen; udon was the runner-up.",
            "says the photo is ramen, but its true label is udon",
        ),
        (
            "The classifier predicted udon for this ramen.",
            "says the classifier predicted udon, but it predicted",
        ),
        ("The classifier took this ramen photo for udon.", "says the classifier took ramen for udon, but it"),
        ("The classifier correctly recognised ramen, though it is udon.", "calls the prediction correct"),
    ],
)
def test_classes_must_be_named_and_not_swapped(text: str, reason: str) -> None:
    found = reasons(text)
    assert len(found) == 1 and found[0].startswith(reason), found


def test_a_belief_is_not_a_claim_about_the_photo() -> None:
    assert reasons("The classifier thinks it is ramen, but the true label is udon [1].") == []
    assert reasons("It predicted ramen, but it is udon [1].") == []
    assert reasons("The classifier may have taken a udon dish for ramen [1].") == []
    # A lay reader's phrasing: what the model was sure of is its belief, however far back "sure" is.
    assert reasons("The model was fairly sure, about 62%, that this udon photo was ramen [1].") == []


def test_the_verdict_and_truth_follow_the_evidence() -> None:
    correct = evidence(true_label="ramen")
    assert reasons("The classifier correctly recognised ramen [1].", correct) == []
    assert reasons("The classifier misclassified this ramen [1].", correct) == [
        "calls the prediction wrong, but it is correct"
    ]
    unknown = evidence(true_label=None)
    assert reasons("The classifier predicted ramen [1].", unknown) == []
    assert reasons("The classifier predicted ramen, but the photo shows udon.", unknown) == [
        "says the photo is udon, but its true label is not known"
    ]


def test_a_class_the_evidence_does_not_involve_is_blamed() -> None:
    assert (
        reasons(f"{GOOD} Spaghetti also looks alike.")[0]
        == "blames spaghetti, which the evidence does not involve"
    )
    # Neighbours' labels are involved: a spaghetti neighbour makes spaghetti fair to name, on its line.
    e = evidence(neighbours=[Neighbour("a.jpg", "spaghetti", 0.9)])
    n = next(i for i, c in enumerate(e.claims(), 1) if c.kind == "neighbours")
    assert reasons(f"{GOOD} Its nearest training photo is spaghetti [{n}].", e) == []
    reason = reasons(f"{GOOD} Hiding the hot region leaves spaghetti behind [3].", e)[0]
    assert f"cites [3] for spaghetti, which [{n}] gives" in reason


@pytest.mark.parametrize(
    ("words", "regions"),
    [
        ("the upper right", {"upper right"}),
        ("the top-right corner", {"upper right"}),
        ("the Top Left", {"upper left"}),
        ("the bottom middle", {"lower center"}),
        ("the top-middle", {"upper center"}),
        ("the centre left", {"middle left"}),
        ("the middle right", {"middle right"}),
        ("the middle of the right side", {"middle right"}),
        ("the bottom half", {"lower left", "lower center", "lower right"}),
        ("near the top", {"upper left", "upper center", "upper right"}),
        ("on the left", {"upper left", "middle left", "lower left"}),
        ("the right-hand side", {"upper right", "middle right", "lower right"}),
        ("the centre", {"center"}),
        ("in the middle", {"center"}),
    ],
)
def test_plain_region_words_map_to_regions(words: str, regions: set[str]) -> None:
    (mention,) = region_mentions(f"The heat is in {words} of the photo.")
    assert mention[1] == regions


def test_words_that_only_look_like_regions_are_not_regions() -> None:
    text = "That is right: its top class was ramen, and what is left is the top two guesses."
    assert region_mentions(text) == []
    assert region_mentions("The egg sits on top of the noodles.") == []  # a place on the dish


def test_bare_and_joined_region_words_are_regions() -> None:
    top, bottom, left, right = ({"upper left", "upper center", "upper right"},
                                {"lower left", "lower center", "lower right"},
                                {"upper left", "middle left", "lower left"},
                                {"upper right", "middle right", "lower right"})  # fmt: skip
    found = region_mentions("The peak is on top and bottom.")
    assert [(said, set(regions)) for said, regions, *_ in found] == [("top", top), ("bottom", bottom)]
    found = region_mentions("Heat at the upper left and right, or the left, and the bottom.")
    assert [(said, set(regions)) for said, regions, *_ in found] == [
        ("upper left", {"upper left"}), ("right", right), ("left", left), ("bottom", bottom)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("where", "ok"),
    [
        ("upper right", True),
        ("top-right corner", True),
        ("right side", True),  # a band holding a hot cell
        ("top", True),
        ("lower left", False),
        ("bottom", False),
        ("left side", False),
        ("centre", False),
    ],
)
def test_only_hot_regions_may_be_named(where: str, ok: bool) -> None:
    text = f"The classifier took this udon photo for ramen [1]. Its heat is at the {where}."
    found = reasons(text)
    assert found == [] if ok else found == [f"names the {where}, which the evidence does not call hot"]
    # Citing the ScoreCAM line [2] makes the sentence about ScoreCAM's map: the reason says whose.
    found = reasons(f"The classifier took this udon photo for ramen [1]. Its heat is at the {where} [2].")
    assert (
        found == [] if ok else found == [f"names the {where} for ScoreCAM, whose line does not call it hot"]
    )


def test_a_cold_region_may_be_called_cold_and_all_maps_count() -> None:
    assert reasons(f"{GOOD} There is little heat in the lower left [2].") == []
    # A second map (GradCAM) in the lower left: its line names it, so it may be named.
    cam = np.zeros((30, 30), np.float32)
    cam[20:, :10] = 1.0
    e = evidence(facts={"scorecam": heatmap_facts(hot_upper_right()), "gradcam": heatmap_facts(cam)})
    assert reasons(f"{GOOD} GradCAM points at the lower left [3].", e) == []
    # An empty map's neutral "center" peak is no finding: its claim calls no region hot.
    empty = evidence(facts={"scorecam": heatmap_facts(np.zeros((30, 30)))}, counterfactual=None)
    assert all(not c.regions for c in empty.claims())


def two_maps() -> Evidence:
    """ScoreCAM (line [2]) hot in the upper right; GradCAM (line [3]) with its largest share (52%) in the
    upper left and its peak in the upper right."""
    cam = np.zeros((30, 30), np.float32)
    cam[:10, :10] = 1.0
    cam[:10, 20:] = 0.9
    cam[3, 25] = 1.5
    e = evidence(facts={"scorecam": heatmap_facts(hot_upper_right()), "gradcam": heatmap_facts(cam)})
    assert e.lines()[1:3] == [
        "2. ScoreCAM: most heat (67%) in the upper right, 33% in the middle right; peak in the upper right; "
        "11% of the image is above half the peak.",
        "3. GradCAM: most heat (52%) in the upper left, 48% in the upper right; peak in the upper right; 22% "
        "of the image is above half the peak.",
    ]
    return e


def test_a_sentence_about_one_map_may_name_only_that_maps_regions() -> None:
    e = two_maps()
    assert reasons(f"{GOOD} GradCAM points at the upper left [3].", e) == []
    # The upper left is hot in GradCAM's map only: said of ScoreCAM (by name or by citing [2]), it is false.
    why = "names the upper left for ScoreCAM, whose line does not call it hot"
    assert why in reasons(f"{GOOD} ScoreCAM points at the upper left.", e)
    assert why in reasons(f"{GOOD} The heat points at the upper left [2].", e)
    assert reasons(f"{GOOD} Score-CAM and Grad-CAM point at the upper left and upper right.", e) == []
    assert reasons(f"{GOOD} Both maps point at the upper left.", e) == []  # about no one map


def test_a_peak_or_the_largest_share_is_put_only_where_its_line_puts_it() -> None:
    e = two_maps()

    def said(text: str) -> list[str]:
        return reasons(f"{FIRST} {text}", e, lead="")

    peak = "the evidence puts GradCAM's peak in the upper right"
    # The paragraph that once passed (a quickstart mistakes.md): GradCAM's peak is in the upper right only.
    assert f"puts the peak at the bottom, but {peak}" in said(
        "GradCAM: The largest share of heat in upper left, peak on top and bottom."
    )
    assert said("GradCAM: the largest share of heat in upper left, peak on top.") == []
    assert said("GradCAM peaks in the upper left [3].") == [f"puts the peak at the upper left, but {peak}"]
    assert said("The upper left is the peak of GradCAM.") == [f"puts the peak at the upper left, but {peak}"]
    assert said("Most of GradCAM's heat lies in the upper right.") == [
        "puts the largest share of heat at the upper right, but the evidence puts GradCAM's largest share "
        "of heat in the upper left"
    ]
    # Only the place named next to "peak" (and those joined to it) must hold the peak; "hottest" and
    # "most heat" need one place of their clause to hold it ("hottest": the peak or the largest share).
    assert said("GradCAM peaks in the upper right and its heat spreads to the upper left.") == []
    assert said("GradCAM is hottest in the upper left and the upper right.") == []
    assert said("GradCAM is strongest in the upper left.") == []  # its largest share
    assert said("GradCAM is not hottest in the lower left.") == []  # called cold
    assert said("The peak is in the upper right.") == []  # about no one map: any map's peak


def test_two_stray_regions_give_one_reason() -> None:
    text = f"{GOOD} The lower left and the centre matter too."
    assert reasons(text) == ["names the lower left and the centre, which the evidence does not call hot"]


def test_repetition_is_rejected() -> None:
    loop = f"{GOOD} The classifier took this udon photo for ramen [1]."
    assert reasons(loop)[0].startswith('repeats the sentence "The classifier took this udon photo for ramen')
    phrase = "The classifier took this udon photo for ramen: the heat in the upper right, the heat in the"
    assert 'repeats the phrase "the heat in the"' in reasons(phrase + " middle right, the heat in the right.")
    # A phrase said twice is ordinary English, not a loop.
    twice = "The classifier took this udon photo for ramen; the heat in the upper right and the heat in the"
    assert reasons(twice + " middle right count [2].") == []


def test_unfinished_long_and_empty_answers_are_rejected() -> None:
    assert reasons("The classifier took this udon photo for ramen because the") == ["stops mid-sentence"]
    long = f"{GOOD} " + " ".join(f"Fact {i} [1]." for i in range(40))
    assert reasons(long, lead="")[-1] == "is 95 words long; the limit is 90"
    assert reasons(GOOD, lead="", max_words=10) == ["is 15 words long; the limit is 10"]
    assert reasons("   ", lead="") == ["is empty"]


def test_one_sentence_or_talk_about_the_instructions_is_rejected() -> None:
    assert reasons("The classifier took this udon photo for ramen [1].", lead="") == [
        "has 1 sentence; an explanation needs at least 2"
    ]
    parrot = (
        "The classifier took a udon photo for ramen, citing the facts you use like [2]. "
        "Its heat is in the upper right [2]."
    )
    assert reasons(parrot, lead="") == [
        'talks about the instructions ("citing the facts") instead of the photo'
    ]


def test_citations_and_numbers_must_exist() -> None:
    e = evidence()
    n = len(e.lines())
    assert (
        reasons("The classifier took this udon photo for ramen [1, 2]. Its heat is in the upper right [2-3].")
        == []
    )
    assert reasons(f"The classifier took this udon photo for ramen [{n + 1}].") == [
        f"cites [{n + 1}], but the evidence has lines [1] to [{n}] only"
    ]
    assert reasons("The classifier took this udon photo for ramen with 62% confidence [1].") == []
    (reason,) = reasons("The classifier took this udon photo for ramen with 55% confidence [1].")
    assert reason.endswith('says "55%", which no evidence line cited gives')
    assert reasons("The classifier took this udon photo for ramen; the maps agree (r = 0.60).") == []
    (reason,) = reasons("The classifier took this udon photo for ramen; its deletion score is 0.98.")
    assert reason.endswith('says "0.98", which no evidence line gives')


def test_each_failed_check_gives_one_reason() -> None:
    text = (
        "The classifier predicted spaghetti in the lower left of this photo [99]. The classifier predicted "
        "spaghetti in the lower left of this"
    )
    found = reasons(text)
    assert len(found) == 5, found  # class, region, repetition, unfinished, citation
    assert all(r and "\n" not in r for r in found)


# ------------------------------------------------------------------------------------------ claims, not words
KINDS = ["prediction", "map", "hiding", "keeping", "appearance", "neighbours", "trust", "agreement"]


def test_the_evidence_lines_are_its_claims() -> None:
    e = evidence()
    assert [c.kind for c in e.claims()] == KINDS
    hiding = e.claims()[2]
    assert [(m.cls, m.direction) for m in hiding.moves] == [("ramen", "drops")] and hiding.becomes == (
        "udon",
    )
    assert {(q.value, q.of) for q in hiding.quantities} >= {(62.0, "ramen"), (30.0, "ramen"), (20.0, "area")}


@pytest.mark.parametrize(
    "text",
    [
        "The model was 62% sure this udon photo was ramen [1].",
        "The model was sixty-two percent sure it was looking at ramen [1].",
        "The classifier was about 60% sure of ramen for this udon photo [1].",
        "Covering up the highlighted area, a fifth of the picture, dropped ramen to 30% [3].",
        "Blocking out the hot part, roughly a fifth of the image, made the model switch to udon [3].",
        "Hiding the hot region lowers ramen by 32 points and the prediction becomes udon [3].",
        "Keeping only the highlighted area makes it more sure of ramen, at 80% [4].",
        "One of its two most similar training photos is udon and the other ramen [6].",
        "The highlighted part looks yellow and white, with stringy edges [5].",
    ],
)
def test_an_honest_answer_in_everyday_words_passes(text: str) -> None:
    assert reasons(f"The classifier took this udon photo for ramen [1]. {text}") == []


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("The model was 72% sure of ramen [1].", 'says "72%"'),
        ("The model was seventy percent sure of ramen [1].", 'says "seventy percent"'),
        ("Covering the hot region, half the picture, drops ramen [3].", '"half"'),
        ("Hiding the hot region raises ramen to 30% [3].", "says it drops ramen"),
        ("Hiding the hot region leaves the prediction at ramen [3].", "says the prediction stays ramen, but"),
        ("Keeping only the hot region switches the prediction to udon [4].", "prediction becomes udon, but"),
        ("Keeping only the hot region gives udon 80% [4].", 'says "80%" for udon'),
        ("Both of its two nearest training photos are udon [6].", '"Both'),
        ("Most of its nearest training photos are ramen [6].", '"Most"'),
        ("Hiding the hot region drops ramen to 30% [6].", 'cites [6] for "30%" for ramen, which [3] gives'),
    ],
)
def test_a_wrong_number_direction_class_or_line_is_caught(text: str, reason: str) -> None:
    found = reasons(f"The classifier took this udon photo for ramen [1]. {text}")
    assert any(reason in r for r in found), found


def test_each_part_of_a_sentence_is_held_to_the_line_it_cites() -> None:
    both = "Hiding the hot region drops ramen to 30% [3], while keeping only it gives ramen 80% [4]."
    assert reasons(both, lead=f"{FIRST} ") == []
    swapped = "Hiding the hot region drops ramen to 80% [3], while keeping only it gives ramen 30% [4]."
    assert len(reasons(swapped, lead=f"{FIRST} ")) == 2


@pytest.mark.parametrize(
    "cause",
    [
        "probably because of the chopsticks crossing the hot region",
        "misled by the green garnish",
        "because of the meatballs",
        "as the shiny broth catches the light",
        "confused by the wooden table in the background",
    ],
)
def test_an_invented_visual_cause_is_caught(cause: str) -> None:
    (reason,) = reasons(f"{GOOD} It took it for ramen, {cause} [2].")
    assert "describes the photo with" in reason and "which no evidence line measures" in reason


def test_what_the_photo_shows_may_be_said_where_a_claim_carries_it() -> None:
    assert reasons(f"{GOOD} The hot region is yellow and white and looks stringy [5].") == []
    assert reasons(f"{GOOD} The hot region is pale [5].") == []  # pale: white, cream or beige
    assert "'green'" in reasons(f"{GOOD} The hot region is green [5].")[0]


def test_the_vocabulary_ships_as_data_with_every_category() -> None:
    words, licensed = vocabulary()
    categories = set(words.values())
    assert {"foods", "toppings", "utensils", "tableware", "colours", "textures", "lighting", "background",
            "table"} <= categories  # fmt: skip
    assert words["chopsticks"] == "utensils" and "stringy" in licensed
    assert not {"really", "covering", "highlighted", "finds", "careful", "step", "dish"} & set(words)


def advised(**changes: object) -> Evidence:
    """A mistake whose nearest training photos are mostly the predicted ramen: add udon photos."""
    near = [
        Neighbour("a.jpg", "ramen", 0.91),
        Neighbour("b.jpg", "ramen", 0.9),
        Neighbour("c.jpg", "udon", 0.8),
    ]
    return evidence(neighbours=near, **changes)


def test_a_suggestion_passes_only_with_its_source_claim() -> None:
    e = advised()
    (advice,) = [c for c in e.claims() if c.kind == "advice"]
    assert advice.advice == "add_photos" and advice.fields["true"] == "udon"
    n = len(e.claims())
    assert reasons(f"{GOOD} Adding more udon training photos like this one may help [{n}].", e) == []
    assert reasons(f"{GOOD} Add more udon photos like this one.", e) == []
    assert "suggests photos of ramen" in reasons(f"{GOOD} Adding more ramen photos may help [{n}].", e)[0]
    assert "gives advice that no evidence line supports" in reasons(f"{GOOD} Try training for longer.", e)[0]
    # Without its source (the nearest photos are not mostly ramen), the same suggestion is refused.
    (reason,) = reasons(f"{GOOD} Adding more udon training photos like this one may help.")
    assert "no evidence line supports" in reason


def test_advice_on_trust_and_labels_needs_its_claim() -> None:
    distrust = f"{GOOD} Do not rely on the ScoreCAM map here."
    assert "finds informative" in reasons(distrust)[0]
    assert reasons(distrust, evidence(trust=uninformative())) == []
    check = f"{GOOD} It would be worth checking this photo's label."
    assert "no cross-validation flags it" in reasons(check)[0]
    flagged = evidence(label_quality=LabelQuality(0.12, "ramen"))
    assert reasons(check, flagged) == []
    assert any(c.advice == "check_label" for c in flagged.claims())


def test_a_contrast_must_go_the_way_its_map_goes() -> None:
    e = evidence(contrastive=heatmap_facts(hot_upper_right()))
    n = next(i for i, c in enumerate(e.claims(), 1) if c.kind == "contrastive")
    assert reasons(f"{GOOD} What favours ramen over udon is in the upper right [{n}].", e) == []
    (reason,) = reasons(f"{GOOD} What favours udon over ramen is in the upper right [{n}].", e)
    assert "weighs udon over ramen, but the evidence" in reason


# ------------------------------------------------------------------------------------------ the template
def uninformative() -> dict[str, MapTrust]:
    return {"scorecam": MapTrust("scorecam", 0.6, 0.4, 0.5, 0.5)}


EVIDENCES = {
    "wrong": evidence(),
    "correct": evidence(true_label="ramen"),
    "unknown": evidence(true_label=None),
    "udon-predicted": evidence(true_label="ramen", predicted="udon"),
    "no-extras": evidence(counterfactual=None, appearance=None, neighbours=[], trust={}, agreement=None),
    "no-maps": evidence(facts={}, counterfactual=None, appearance=None),
    "empty-map": evidence(facts={"scorecam": heatmap_facts(np.zeros((30, 30)))}, counterfactual=None),
    "uninformative": evidence(trust=uninformative()),
    "spread-map": evidence(facts={"scorecam": heatmap_facts(np.ones((30, 30)))}),
    "many-neighbours": evidence(
        neighbours=[Neighbour(f"{i}.jpg", NAMES[i % 3], 0.9 - i / 100) for i in range(7)]
    ),
    "multi-word-class": evidence(
        true_label="pad thai",
        class_names=["spaghetti", "ramen", "pad thai"],
        probabilities={"spaghetti": 0.1, "ramen": 0.62, "pad thai": 0.28},
        counterfactual=None,
        neighbours=[],
    ),
}


@pytest.mark.parametrize("name", list(EVIDENCES))
def test_the_template_always_passes(name: str) -> None:
    e = EVIDENCES[name]
    text = photo_template(e, WORDS)
    verdict = check_explanation(text, e)
    assert verdict.passed, (text, verdict.reasons)
    assert 2 <= len(sentences(text)) <= 6 and ends_on_sentence(text)
    assert e.predicted in text and (e.true_label or e.predicted) in text
    if name == "uninformative":
        assert "no better than a random" in text


def test_the_template_says_what_the_evidence_says() -> None:
    text = photo_template(evidence(), WORDS)
    assert text.startswith("The classifier took this udon photo for ramen, with 62% confidence [1].")
    assert "upper right and middle right [2]" in text and "yellow and white" in text
    assert "drops ramen from 62% to 30%, and the prediction becomes udon [3]" in text
    assert "1 of its 2 nearest training photos are udon, 1 ramen" in text
    short = photo_template(evidence(), max_words=40)
    assert check_explanation(short, evidence(), max_words=40).passed and len(sentences(short)) == 3
    assert "Adding more udon training photos like this one may help" in photo_template(advised(), WORDS)


# ------------------------------------------------------------------------------------------ the retry loop
def scripted(*answers: str) -> tuple[Callable[[str | None], str], list[str | None]]:
    """A generate function answering `answers` in turn; it records the feedback it was given."""
    given: list[str | None] = []

    def generate(feedback: str | None) -> str:
        given.append(feedback)
        return answers[len(given) - 1]

    return generate, given


def ground(generate: Callable[[str | None], str], e: Evidence) -> GroundedText:
    """`grounded` as the chat runs it: the photo's gate and template, the prompt's retry message."""
    return grounded(generate, photo_check(e, WORDS), photo_fallback(e, WORDS), PROMPT.retry)


def test_a_passing_draft_is_the_models() -> None:
    generate, given = scripted(GOOD)
    result = ground(generate, evidence())
    assert (result.text, result.source, result.drafts, given) == (GOOD, "llm", [], [None])
    assert GOOD.count(".") == 2  # GOOD is two sentences: it passes alone


def test_a_rejected_draft_is_retried_with_its_reasons() -> None:
    generate, given = scripted("The heat is in the lower left.", GOOD)
    result = ground(generate, evidence())
    assert result.source == "llm_retry" and result.text == GOOD
    assert result.drafts == ["The heat is in the lower left."]
    assert given[0] is None and given[1] is not None
    assert given[1].startswith(
        "Your answer was rejected: does not name the predicted class, ramen; names the"
    )
    assert [v.passed for v in result.verdicts] == [False, True]


def test_two_rejections_give_the_template_marked_as_such() -> None:
    generate, _ = scripted("Spaghetti.", "Spaghetti again.")
    e = evidence()
    result = ground(generate, e)
    assert result.source == "template" and result.text == photo_template(e, WORDS)
    assert result.drafts == ["Spaghetti.", "Spaghetti again."] and len(result.verdicts) == 2
    data = json.loads(json.dumps(result.to_dict()))
    assert data["source"] == "template" and data["verdicts"][0]["passed"] is False


# ------------------------------------------------------------------------------------------ with SmolLM2
@pytest.fixture(scope="module")
def smollm2() -> Iterator[GGUFBackend]:
    backend = GGUFBackend(n_ctx=2048)
    yield backend
    backend.close()


@pytest.fixture
def prompt(compose_cfg: Callable[..., DictConfig]) -> DictConfig:
    return compose_cfg("train", ["llm=smollm2"]).prompt


@pytest.fixture
def llm(compose_cfg: Callable[..., DictConfig]) -> DictConfig:
    cfg = compose_cfg("train", ["llm=smollm2", "llm.max_new_tokens=110"])
    assert cfg.llm.repetition_penalty > 1 and cfg.llm.no_repeat_ngram_size > 0
    return cfg.llm


def _passes_or_is_the_template(result: GroundedText, e: Evidence) -> None:
    if result.source == "template":
        assert result.text == photo_template(e, WORDS) and len(result.drafts) == 2
    else:
        assert check_explanation(result.text, e).passed and result.verdicts[-1].passed
    assert not any(v.passed for v in result.verdicts[:-1])


@pytest.mark.slow  # SmolLM2 answers through llama.cpp
def test_grounded_smollm2_answers_pass_the_gate_or_give_the_template(
    smollm2: GGUFBackend, prompt: DictConfig, llm: DictConfig
) -> None:
    e = evidence()
    messages = evidence_messages(e, prompt, multimodal=False)
    options = generation_options(llm)
    drafts: list[str] = []

    def generate(feedback: str | None) -> str:
        conversation = messages if feedback is None else retry_conversation(messages, drafts[-1], feedback)
        (answer,) = smollm2.generate([conversation], **options)
        drafts.append(answer.strip())
        return answer

    result = ground(generate, e)
    _passes_or_is_the_template(result, e)
    assert result.drafts == drafts[: len(result.drafts)]


@pytest.mark.slow  # SmolLM2 answers through llama.cpp
def test_a_session_records_only_the_grounded_answer(
    smollm2: GGUFBackend, prompt: DictConfig, llm: DictConfig
) -> None:
    e = evidence(true_label=None)
    session, first = evidence_session(smollm2, e, prompt, llm)
    assert session.repetition_penalty == llm.repetition_penalty and "1. The classifier predicted" in first
    result = session.ask_grounded(first, e, prompt)
    _passes_or_is_the_template(result, e)
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant"]
    assert session.messages[-1]["content"] == result.text
    assert session.metadata["grounding"] == [result.to_dict()] and session.metadata["evidence"]["file"]


@pytest.mark.slow  # SmolLM2 answers through llama.cpp
def test_grounded_batch_checks_every_answer(
    smollm2: GGUFBackend, prompt: DictConfig, llm: DictConfig
) -> None:
    evidences = [evidence(), evidence(true_label="ramen")]
    conversations = [evidence_messages(e, prompt, multimodal=False) for e in evidences]
    results = grounded_batch(
        smollm2, conversations, [photo_check(e, WORDS) for e in evidences],
        [photo_fallback(e, WORDS) for e in evidences], PROMPT.retry, **generation_options(llm),
    )  # fmt: skip
    assert len(results) == 2
    for result, e in zip(results, evidences, strict=True):
        _passes_or_is_the_template(result, e)


def test_an_answer_made_of_words_from_nowhere_is_not_an_explanation() -> None:
    """SmolLM2's answers that the gate once let through (bench/offline_llm.py, issue 22): the right classes,
    and sentences that state nothing any line states. Such a sentence can only carry a cause nobody
    measured, so it is rejected; a sentence saying what the model predicted, in any words, is a statement."""
    for invented in (
        "The scoreCAM algorithm is designed to evaluate the performance of a gradient model.",
        "The classifier also took a ramen photo that had been tested by the team to see if it could be "
        "compared with another image.",
        "It's very interesting to see how the classifier takes something that has no meaning [3].",
    ):
        (reason,) = reasons(f"{GOOD} {invented}")
        assert "says nothing that an evidence line says" in reason, invented
    (reason,) = reasons(
        f"{GOOD} This is a test of the classifier's ability to make predictions based on data that was not "
        "available at the time [2]."
    )
    assert 'gives a reason ("based on data that was not available at the time")' in reason
    for statement in (
        "The model was about sixty percent sure this was ramen, but it is udon [1].",
        "The program was fairly sure this was ramen [1].",
        "The facts point to no specific fix.",
    ):
        assert reasons(f"{GOOD} {statement}") == [], statement
    assert "'steam'" in reasons(f"{GOOD} The steam misled it.")[0]
    layer = "Its final layer weighs the top more heavily, which is why the upper right is hot [2]."
    (reason,) = reasons(f"{GOOD} {layer}")
    assert "speaks of how the model works with 'layer'" in reason
    assert reasons(f"{GOOD} Its heat looks yellow and white, with strand-like edges [5].") == []


def test_a_reason_must_state_what_a_line_states() -> None:
    e = advised()
    n = len(e.claims())
    for honest in (
        f"Adding more udon photos may help, since 2 of its 3 nearest training photos are ramen [{n}].",
        "The map can be trusted, because it beats a random map [6].",
    ):
        assert reasons(f"{GOOD} {honest}", e) == [], honest
    for invented in (
        "It chose ramen because the training set has few udon photos taken from above [1].",
        "This happened due to the network having seen little udon during training [2].",
    ):
        (reason,) = reasons(f"{GOOD} {invented}", e)
        assert "gives a reason" in reason and "that no evidence line states" in reason, invented


def test_what_is_said_of_a_map_against_a_random_one_must_be_what_the_trust_check_found() -> None:
    informative, poor = evidence(), evidence(trust=uninformative())
    n = next(i for i, c in enumerate(informative.claims(), 1) if c.kind == "trust")
    for said in ("The ScoreCAM map beats a random map", "Its map does better than chance"):
        assert reasons(f"{GOOD} {said} [{n}].", informative) == [], said
        assert "which the trust check does not find" in reasons(f"{GOOD} {said} [{n}].", poor)[0], said
    for said in (
        "The ScoreCAM map is no better than a random map",
        "Neither heat map does better than random here",
        "The highlight map fails to beat a random one",
        "One of the maps is no better than a random guess",
    ):
        assert reasons(f"{GOOD} {said} [{n}].", poor) == [], said
        assert "which the trust check does not find" in reasons(f"{GOOD} {said} [{n}].", informative)[0], said
    two = evidence(
        facts={"scorecam": heatmap_facts(hot_upper_right()), "gradcam": heatmap_facts(hot_upper_right())},
        trust={**uninformative(), "gradcam": MapTrust("gradcam", 0.2, 0.7, 0.4, 0.5)},
    )
    m = next(i for i, c in enumerate(two.claims(), 1) if c.kind == "trust")
    assert reasons(f"{GOOD} One map does no better than random [{m}].", two) == []
    assert reasons(f"{GOOD} GradCAM beats a random map, but ScoreCAM does not [{m}].", two) == []
    (reason,) = reasons(f"{GOOD} Both maps beat a random map [{m}].", two)
    assert "says each of" in reason and "beats a random map, which the trust check does not find" in reason
    (reason,) = reasons(f"{GOOD} Neither map beats a random map [{m}].", two)
    assert "does no better than a random map" in reason
    # A random map is only the trust check's yardstick: SmolLM2's answer that passed the gate once.
    salad = "The scorecam maps are based on a random map that has been modified to include heat [2]."
    assert (
        "speaks of a random map without saying whether a map beats it" in reasons(f"{GOOD} {salad}", poor)[0]
    )
    assert reasons(f"{GOOD} These highlights are no more reliable than random ones here [{n}].", poor) == []
    no_check = evidence(trust={})
    assert "which no evidence line gives" in reasons(f"{GOOD} The map beats a random map.", no_check)[0]


def test_a_caution_anywhere_in_a_sentence_is_advice_and_no_fix_needs_no_source() -> None:
    poor = evidence(trust=uninformative())
    for caution in ("Given that, do not rely on the ScoreCAM map.", "So it is best not to trust the map.",
                    "A careful step is to stop relying on this map."):  # fmt: skip
        assert reasons(f"{GOOD} {caution}", poor) == [], caution
        assert "finds informative" in reasons(f"{GOOD} {caution}")[0], caution
    assert reasons(f"{GOOD} The facts do not point to any specific fix here.") == []
    e = advised()
    (reason,) = reasons(f"{GOOD} The facts suggest no specific fix.", e)
    assert f"says no fix is suggested, but [{len(e.claims())}] suggests one" in reason


def test_the_reader_is_told_whose_words_these_are() -> None:
    e = evidence()
    passed = ground(scripted(GOOD)[0], e).for_reader()
    assert passed == f"{GOOD}\n\n(checked against the evidence: passed)"
    retried = ground(scripted("Spaghetti.", GOOD)[0], e).for_reader()
    assert retried == f"{GOOD}\n\n(checked against the evidence: passed on the second try)"
    fallback = ground(scripted("Spaghetti.", "Spaghetti again.")[0], e).for_reader()
    assert fallback.startswith(
        f"{photo_template(e, WORDS)}\n\n(from the evidence template; the model's answer"
    )
    assert "does not name the predicted class, ramen" in fallback  # why the model's answer is not shown


def test_the_docs_vocabulary_table_names_every_category_and_only_its_words() -> None:
    """docs/grounding.md shows the vocabulary by category; a category added to the YAML, or a word the docs
    give as an example that the YAML dropped, would make the docs lie about what the gate rejects."""
    docs = (Path(__file__).parents[1] / "docs" / "grounding.md").read_text()
    section = docs.split("### The vocabulary", 1)[1].split("Left out on purpose", 1)
    lines = section[0].splitlines()
    rows = [line.split("|")[1:3] for line in lines if line.startswith("| ") and "---" not in line]
    table = {name.strip(): [w.strip() for w in words.split(",")] for name, words in rows[1:]}
    data = yaml.safe_load((Path(__file__).parents[1] / "noodlenext" / "llm" / "vocabulary.yaml").read_text())[
        "categories"
    ]
    assert set(table) == set(data)
    for name, words in table.items():
        assert set(words) <= {str(w) for w in data[name]}, name
    paragraph = section[1].split(":", 1)[1].split("\n\n", 1)[0]  # the list ends with its paragraph
    left_out = [w.strip(' ".\n') for w in paragraph.split(",")]
    everything = {str(w) for ws in data.values() for w in ws}
    assert len(left_out) > 10 and not everything & set(left_out)
    words, _ = vocabulary()
    assert set(words) >= everything - {w for w in everything if " " in w}


def test_the_training_given_as_a_cause_needs_a_line_that_measures_it() -> None:
    """ "Its training set had ...": only the nearest training photos measure anything about the training
    data; a suggestion to add photos to it is advice."""
    e = advised()
    n = len(e.claims())
    neighbours = next(i for i, c in enumerate(e.claims(), 1) if c.kind == "neighbours")
    for honest in (
        f"Adding more udon photos to the training set may help [{n}].",
        f"2 of its 3 nearest photos in the training set are ramen [{neighbours}].",
    ):
        assert reasons(f"{GOOD} {honest}", e) == [], honest
    for invented in (
        "The mistake comes from its training set, where ramen photos were often shot from above.",
        "It saw mostly ramen during training [2].",
    ):
        (reason,) = reasons(f"{GOOD} {invented}", e)
        assert "gives the training" in reason, invented

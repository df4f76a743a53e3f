"""The tests the chat runs on demand (noodlenext.explain.probes), proven on a model whose behaviour is known:
QuadrantModel says ramen from the top-left quadrant's energy and udon from the bottom-right's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from toy_models import NAMES, QUADRANTS, SIZE, QuadrantModel, images

from noodlenext.data.datamodule import NoodleImages
from noodlenext.data.transforms import eval_transform
from noodlenext.explain.evidence import Evidence
from noodlenext.explain.gather import gather_evidence
from noodlenext.explain.heatmaps import explain_batch
from noodlenext.explain.neighbours import FeatureIndex
from noodlenext.explain.probes import PROBES, PhotoProbe
from noodlenext.explain.templates import finding_answer
from noodlenext.llm.grounding import check_explanation

UPPER_LEFT_QUADRANT = {"upper left", "upper center", "middle left", "center"}  # a 3x3 grid over 2x2


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def probe_for(tmp_path: Path | None = None, true_label: int | None = 1, top_left: float = 2.0) -> PhotoProbe:
    """A ramen prediction (top-left energy) on a photo labelled udon, with its evidence gathered."""
    model = QuadrantModel().eval()
    x = images(1, top_left=top_left)
    pred = model(x).argmax(1).tolist()
    assert pred == [0]
    photo = Image.fromarray(np.full((SIZE, SIZE, 3), (200, 170, 120), np.uint8))
    heatmaps = explain_batch(model, x, pred, "scorecam", QUADRANTS)
    index = None
    if tmp_path is not None:
        samples = [(tmp_path / f"{i}.png", i % 2) for i in range(4)]
        for i, (path, _) in enumerate(samples):
            Image.fromarray(np.full((SIZE, SIZE, 3), 40 * i, np.uint8)).save(path)
        dataset = NoodleImages(samples, eval_transform(SIZE, (0.5,) * 3, (0.25,) * 3))
        index = FeatureIndex.build(model, dataset, batch_size=2, class_names=NAMES)
    (evidence,) = gather_evidence(
        model, x, [photo], pred, [true_label], heatmaps, index=index, settings=QUADRANTS,
        files=["a.jpg"], class_names=NAMES,
    )  # fmt: skip
    return PhotoProbe(model, x, photo, evidence, heatmaps[0]["scorecam"].cam, QUADRANTS, index)


def test_why_not_finds_the_evidence_for_the_prediction_over_the_named_class() -> None:
    probe = probe_for()
    result = probe.run("why_not", other="Udon")  # any case: the class is matched by name
    f = result.finding
    assert f.arguments == {"other": "udon"} and {"ramen", "udon"} <= set(f.classes)
    assert f.regions and set(f.regions) <= UPPER_LEFT_QUADRANT and f.regions[0] == "upper left"
    # Blurring the evidence for ramen over udon hands the decision to udon (the bottom-right energy).
    assert f.data["hidden"]["udon"] > probe.evidence.probabilities["udon"]
    assert f.data["hidden"]["ramen"] < probe.evidence.probabilities["ramen"]
    hidden = max(f.data["hidden"], key=f.data["hidden"].get)
    outcome = "stays ramen" if hidden == "ramen" else f"becomes {hidden}"
    assert f.lines[-1].endswith(f"the prediction {outcome}.")
    assert result.image is not None and result.image.size == (SIZE, SIZE)


def test_why_not_the_predicted_class_and_an_unknown_class() -> None:
    probe = probe_for()
    assert "does predict ramen" in probe.run("why_not", other="ramen").finding.lines[0]
    with pytest.raises(ValueError, match="'pizza' is not one of the classes: ramen, udon, soba"):
        probe.run("why_not", other="pizza")
    with pytest.raises(ValueError, match="no probe 'guess'"):
        probe.run("guess")
    with pytest.raises(ValueError, match="takes no arguments"):
        probe.run("how_sure", other="udon")


def test_which_part_hides_each_ninth_and_finds_the_top_left() -> None:
    f = probe_for(top_left=1.2).run("which_part").finding  # ramen, but not by a mile
    drops = f.data["drops"]
    assert max(drops, key=drops.get) == "upper left" and drops["upper left"] > 0.05
    assert all(drops[r] < 0.05 for r in ("lower right", "lower center", "middle right", "upper right"))
    assert f.regions[0] == "upper left" and set(f.regions) <= UPPER_LEFT_QUADRANT
    assert "the upper left matters most" in f.lines[0]


def test_which_part_says_when_no_single_part_decides() -> None:
    f = probe_for(top_left=2.0).run("which_part").finding  # ramen at ~100%: no ninth alone moves it
    assert "no single part decides" in f.lines[0] and "(for the upper left)" in f.lines[0]


def test_change_mind_blurs_the_hottest_pixels_until_the_prediction_changes() -> None:
    f = probe_for().run("change_mind").finding
    changed = [s for s in f.data["steps"] if max(s["probabilities"], key=s["probabilities"].get) != "ramen"]
    # The map is hottest on the top-left quadrant (a quarter of the photo): blurring it flips the model.
    assert changed and changed[0]["share"] <= 0.3
    assert "changes the prediction to udon" in f.lines[0]
    assert "runner-up is udon" in f.lines[1]


def test_how_sure_reruns_the_mirrored_photo() -> None:
    """The model reads only the left half's top: mirrored, its ramen evidence is gone."""
    f = probe_for().run("how_sure").finding
    assert f.lines[0].startswith("The classifier gives ramen")
    assert "On the mirrored photo it becomes udon" in f.lines[1]
    assert f.data["mirrored"]["ramen"] < 0.5


def test_whole_photo_changes_the_whole_photo_and_says_which_change_matters() -> None:
    """The model reads the top-left quadrant's energy: mirrored, ramen's evidence moves away; no change
    of colour alone decides; the data keeps every change."""
    f = probe_for().run("whole_photo").finding
    changes = {c["change"].split(":")[0]: c for c in f.data["changes"]}
    assert list(changes)[:8] == [
        "grayscale", "quarter_resolution", "jpeg", "warmer", "cooler", "mirror",
        "border_crop", "surroundings",
    ]  # fmt: skip
    assert changes["mirror"]["becomes"] == "udon"
    mirrored = [line for line in f.lines if line.startswith("Mirrored left to right")]
    assert mirrored and "the prediction becomes udon" in mirrored[0]
    assert all(c.kind in ("whole_photo", "whole_photo_none") for c in f.claims)


def test_looks_like_and_similar(tmp_path: Path) -> None:
    probe = probe_for(tmp_path)
    look = probe.run("looks_like").finding
    assert look.lines[0].startswith("The hot region is mostly beige")
    near = probe.run("similar")
    assert near.finding.lines[0].startswith("Of the 4 training photos most alike")
    assert {n["label"] for n in near.finding.data["neighbours"]} == {"ramen", "udon"}
    assert near.image is not None and near.image.size == (4 * SIZE, SIZE)  # the photos, side by side
    assert "No training photos" in probe_for().run("similar").finding.lines[0]


def test_every_finding_joins_the_evidence_and_its_template_passes_the_gate(tmp_path: Path) -> None:
    probe = probe_for(tmp_path)
    evidence = probe.evidence
    n = len(evidence.lines())
    for name, args in [("why_not", {"other": "udon"}), *((p, {}) for p in PROBES if p != "why_not")]:
        finding = probe.run(name, **args).finding
        evidence = evidence.with_finding(finding)
        numbers = evidence.finding_lines(finding)
        assert numbers == list(range(n + 1, n + len(finding.lines) + 1))
        n += len(finding.lines)
        answer = finding_answer(evidence, finding)
        verdict = check_explanation(answer, evidence, followup=True)
        assert verdict.passed, (name, answer, verdict.reasons)
    assert probe.evidence.findings == []  # with_finding copies
    assert Evidence.from_dict(json.loads(json.dumps(evidence.to_dict()))) == evidence


def test_the_gate_holds_a_follow_up_to_what_the_test_found() -> None:
    probe = probe_for()
    finding = probe.run("why_not", other="udon").finding
    evidence = probe.evidence.with_finding(finding)
    ok = "The evidence for ramen over udon sits in the upper left."
    assert check_explanation(ok, evidence, followup=True).passed
    # A region no map or test found hot, a class nothing involves, and a number no line gives, fail.
    assert not check_explanation("The lower right decided it.", evidence, followup=True).passed
    soba = check_explanation("It looks like soba from the upper left.", evidence, followup=True)
    assert not soba.passed and any("soba" in r for r in soba.reasons)
    made_up = check_explanation("Udon got 71% in the upper left.", evidence, followup=True)
    assert not made_up.passed and any("71%" in r for r in made_up.reasons)
    # A first explanation must still name the classes; a follow-up need not.
    assert not check_explanation("The upper left mattered. That is all.", evidence).passed


def test_a_follow_up_must_cite_the_test_put_numbers_on_the_right_line_and_not_repeat_itself() -> None:
    probe = probe_for()
    finding = probe.run("how_sure").finding
    evidence = probe.evidence.with_finding(finding)
    first, mirrored = evidence.finding_lines(finding)
    p = evidence.probabilities
    right = f"The classifier gives ramen {p['ramen']:.0%} [{first}]."
    assert check_explanation(right, evidence, followup=True, finding=finding).passed
    # The probability is on line `first`, not on the mirrored photo's line: a misattribution.
    wrong_line = check_explanation(
        f"The classifier gives ramen {p['ramen']:.0%} [{mirrored}].", evidence, True
    )
    assert any(f"cites [{mirrored}] for" in r for r in wrong_line.reasons)
    # An answer that does not rest on the test just run is no answer to the question.
    unrelated = check_explanation(
        "The classifier predicted ramen [1].", evidence, followup=True, finding=finding
    )
    assert any("does not cite the test's result" in r for r in unrelated.reasons)
    again = check_explanation(right, evidence, followup=True, finding=finding, previous=[right])
    assert any("repeats an earlier answer" in r for r in again.reasons)

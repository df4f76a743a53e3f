"""Suggestions a retrain proved (noodlenext.improve -> tested_fixes.json): the claim, its words, the
template, the gate, the round trip through JSON, and the explainer reading it from the run's folder."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from conftest import save_tiny_checkpoint
from PIL import Image
from test_grounding import GOOD, evidence, reasons

from noodlenext.explain import tested
from noodlenext.explain.evidence import Evidence
from noodlenext.explain.photo import PhotoExplainer
from noodlenext.explain.templates import photo_template
from noodlenext.explain.wording import line

RELABEL = tested.TestedFix(
    name="relabel",
    kind="relabel",
    what="relabel the 8 most suspect labels to the likely class",
    verdict="helps",
    seeds=3,
    baseline_accuracy=0.8,
    accuracy=0.84,
    diff_points=3.9,
    ci_points=(1.0, 6.8),
    p=0.03,
    recall={"udon": (0.8, 0.88), "ramen": (0.9, 0.9)},
)
NOTHING = replace(RELABEL, name="erase", kind="erase", what="random erasing", verdict="no_evidence", p=0.4)


def test_a_helping_fix_becomes_a_suggestion_line_with_its_numbers() -> None:
    claim = tested.tested_claim([NOTHING, RELABEL], ["udon", "ramen"])
    assert claim is not None and claim.classes == ("udon",)
    assert line(claim) == (
        'Tested by retraining (3 seeds, noodlenext.improve): the fix "relabel the 8 most suspect labels to '
        'the likely class" raised udon recall from 80% to 88% and test accuracy by 3.9 points (p = 0.03).'
    )
    assert tested.tested_claim([NOTHING], ["udon"]) is None  # no evidence it helps: no proof to cite
    overall = tested.tested_claim([RELABEL], ["spaghetti"])  # no recall of that class: the accuracy alone
    assert "raised test accuracy by 3.9 points (p = 0.03)" in line(overall) and overall.classes == ()


def test_the_evidence_cites_it_and_the_template_says_it() -> None:
    e = evidence(tested=[RELABEL, NOTHING])
    lines = e.lines()
    assert lines[-1].endswith(
        "raised udon recall from 80% to 88% and test accuracy by 3.9 points (p = 0.03)."
    )
    assert 'A retrain has tested a fix for this: "relabel the 8 most suspect labels' in photo_template(e, 200)
    assert not any("Tested" in x for x in evidence().lines())
    back = Evidence.from_dict(json.loads(json.dumps(e.to_dict())))
    assert back.tested == [RELABEL, NOTHING] and back.lines() == lines


def test_the_gate_lets_the_proven_numbers_through_and_no_others() -> None:
    e = evidence(tested=[RELABEL])
    n = len(e.claims())
    ok = f"{GOOD} Retraining with those labels corrected raised udon recall from 80% to 88% [{n}]."
    assert reasons(ok, e) == []
    assert reasons(
        f"{GOOD} Retraining with those labels corrected raised udon recall from 80% to 95% [{n}].", e
    )
    assert reasons(ok, evidence())  # the same words without a tested fix: no line has those numbers


def test_the_explainer_reads_the_runs_tested_fixes(tmp_path: Path) -> None:
    ckpt = save_tiny_checkpoint(tmp_path / "run" / "checkpoints" / "epoch_000.ckpt")
    record = {**RELABEL.__dict__, "ci_points": list(RELABEL.ci_points), "recall": {"udon": [0.8, 0.88]}}
    (tmp_path / "run" / tested.TESTED_FILE).write_text(json.dumps({"tested": [record]}))
    assert tested.read_tested(tmp_path / "run")[0].recall == {"udon": (0.8, 0.88)}
    explainer = PhotoExplainer(ckpt, device="cpu")
    assert explainer.tested == tested.read_tested(tmp_path / "run")
    (tmp_path / "run" / tested.TESTED_FILE).write_text("{not json")
    assert tested.read_tested(tmp_path / "run") == []  # a broken file is ignored (and logged), never fatal
    photo = Image.new("RGB", (40, 32), (200, 160, 60))
    assert PhotoExplainer(ckpt, device="cpu", evidence=False).tested == []
    analysis = explainer(photo, true_label="udon")
    assert analysis.evidence.tested == explainer.tested


def test_a_class_whose_recall_fell_is_said_to_have_fallen() -> None:
    """A fix can help overall and still lower the recall of this photo's class: the line says so, never
    "raised" of a recall that fell or stayed, and the gate holds an answer to the same."""
    down = replace(RELABEL, recall={"udon": (0.96, 0.94)})
    said = line(tested.tested_claim([down], ["udon"]))
    assert said.endswith(
        "raised test accuracy by 3.9 points (p = 0.03), but lowered udon recall from 96% to 94%."
    )
    same = line(tested.tested_claim([RELABEL], ["ramen"]))  # 90% -> 90%
    assert same.endswith("(p = 0.03); ramen recall stayed at 90%.") and "raised ramen" not in same
    e = evidence(tested=[down])
    n = len(e.claims())
    honest = (
        f"{GOOD} The retrain raised accuracy by 3.9 points but lowered udon recall from 96% to 94% [{n}]."
    )
    assert reasons(honest, e) == []
    assert reasons(f"{GOOD} The retrain raised udon recall from 96% to 94% [{n}].", e)
    assert "but lowered udon recall" in photo_template(e, 200)


def test_what_an_answer_says_of_the_retrain_is_what_its_line_reports() -> None:
    """The gate on a retrain: its fix may be recommended citing its line, in the fix's own words, with the
    words its line takes; but not a drop in accuracy, another seed count, more than the line reports
    after its numbers, what the retrain did to this photo, or a retrain no line reports."""
    fix = replace(RELABEL, what="data.augment.train=null data.batch_size=16")
    e = evidence(tested=[fix])
    n = len(e.claims())
    said = "Retraining with augmentation off and batch size 16 raised udon recall from 80% to 88%"
    ok = f"{GOOD} {said} and test accuracy by 3.9 points over 3 seeds (p = 0.03) [{n}]."
    assert reasons(ok, e) == []
    assert reasons(f"{GOOD} So adopt that fix, which raised udon recall from 80% to 88% [{n}].", e) == []
    wrong = {
        "lowered test accuracy by 3.9 points": ok.replace(
            "and test accuracy by", "but lowered test accuracy by"
        ),
        "ran 5 seeds": ok.replace("3 seeds", "5 seeds"),
        "more than its line": ok.replace(f"[{n}].", f"[{n}], and it was shown to stop the mistakes."),
        "this photo": ok.replace(f"[{n}].", f"and corrected this photo [{n}]."),
        "no line": f"{GOOD} Retraining on more photos fixed it [3].",
    }
    for what, text in wrong.items():
        assert reasons(text, e), what
    assert reasons(ok, evidence())  # the same words without a tested fix
    advice = f"{GOOD} Retraining with more udon photos would help."  # advice, checked as advice
    assert not any("retrain" in r for r in reasons(advice, evidence()))


def test_the_retrain_has_words_of_its_own_beyond_the_limit() -> None:
    """The retrain's sentence closes the template whatever the paragraph's length, and an answer may
    spend as many words on it beyond the limit (its quoted fix can be long)."""
    from noodlenext.explain.templates import MAX_WORDS, tested_allowance
    from noodlenext.llm.grounding import check_explanation

    e = evidence(tested=[RELABEL])
    allowance = tested_allowance(e.claims())
    assert allowance > 20 and tested_allowance(evidence().claims()) == 0
    text = photo_template(e, MAX_WORDS)
    assert (
        text.endswith(f"(p = 0.03 over 3 seeds) [{len(e.claims())}].") and check_explanation(text, e).passed
    )

"""The grounding gate keeps its measured promise on the shipped benchmark (bench/gate.py): >= 95% of the
faithful answers pass and >= 95% of the planted errors are caught, in every kind of answer, on answers
written by people who read only the prompt and the lines, never the gate's code."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import gate  # noqa: E402  (bench/gate.py)


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    return {name: gate.run(gate.load(name)) for name in gate.SETS}


def test_the_benchmark_is_as_large_as_the_issue_asks(results: dict) -> None:
    tuning = results["tuning"]
    records = {item["id"] for r in tuning.values() for item in r["items"]}
    kinds = {rec.split("-")[1] for rec in records}
    assert len(records) >= 24 and {"mistake", "hit", "group"} <= kinds
    assert {"synthetic", "shared"} == {rec.split("-")[0] for rec in records}
    assert set(tuning) == {*gate.FAITHFUL, *gate.ERRORS} - {"invented_reason", "invented_test"}
    assert all(r["n"] >= 24 for r in tuning.values()) and results["fresh"]["invented_reason"]["n"] == 16
    everywhere = {item["id"] for result in results.values() for r in result.values() for item in r["items"]}
    assert len(everywhere) == len(records) + 22 + 18 + 16  # the held-out sets hold other photos


KINDS = [
    (name, kind)
    for name in gate.SETS
    for kind in (*gate.FAITHFUL, *gate.ERRORS)
    if any(kind in answers for _, answers in gate.load(name))
]


@pytest.mark.parametrize(("name", "kind"), KINDS)
def test_each_kind_meets_the_goal(results: dict, name: str, kind: str) -> None:
    result = results[name][kind]
    missed = [
        (item["id"], item["reasons"]) for item in result["items"] if item["passed"] != (kind in gate.FAITHFUL)
    ]
    assert gate.rate(kind, result) >= gate.GOAL, missed


@pytest.fixture(scope="module")
def cause_results() -> dict[str, dict]:
    return {name: gate.run(gate.load(name)) for name in gate.CAUSE_SETS}


@pytest.mark.parametrize("name", gate.CAUSE_SETS)
def test_what_passes_about_the_causes_is_honest(cause_results: dict, name: str) -> None:
    """Evidence that leads with hiding parts and changing the whole photo (issue 23), answered by writers
    who never read the gate: what passes is honest (precision), and most honest answers pass (recall: the
    lay answers that name objects nobody measured, "around the bowl", are the ones that do not)."""
    results = cause_results[name]
    precision, recall = gate.precision_recall(results)
    assert precision >= gate.PRECISION_GOAL, [
        (item["id"], kind) for kind, r in results.items() if kind not in gate.FAITHFUL
        for item in r["items"] if item["passed"]
    ]  # fmt: skip
    assert recall >= 0.75
    assert gate.rate("faithful_plain", results["faithful_plain"]) >= 0.9
    assert results["invented_cause"]["passed"] == results["invented_reason"]["passed"] == 0


@pytest.mark.parametrize("name", gate.TESTED_SETS)
def test_what_passes_about_a_tested_fix_is_honest(name: str) -> None:
    """Explanations citing the retrain that proved a fix (issue 24), answered by writers who never read the
    gate, the errors planted in what they say of the retrain (a wrong number or direction, another class,
    another line, an invented retrain result): what passes is honest, and most honest answers pass."""
    results = gate.run(gate.load(name))
    precision, recall = gate.precision_recall(results)
    assert precision >= gate.PRECISION_GOAL and recall >= 0.65
    assert results["wrong_number"]["passed"] == results["wrong_class"]["passed"] == 0
    assert results["invented_test"]["n"] == 12 and results["faithful_plain"]["passed"] == 12

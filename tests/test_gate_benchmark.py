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
def results() -> dict:
    return gate.run(gate.load())


def test_the_benchmark_is_as_large_as_the_issue_asks(results: dict) -> None:
    records = {item["id"] for r in results.values() for item in r["items"]}
    kinds = {rec.split("-")[1] for rec in records}
    assert len(records) >= 24 and {"mistake", "hit", "group"} <= kinds
    assert {"synthetic", "shared"} == {rec.split("-")[0] for rec in records}
    assert set(results) == {*gate.FAITHFUL, *gate.ERRORS} and all(r["n"] >= 24 for r in results.values())


@pytest.mark.parametrize("kind", [*gate.FAITHFUL, *gate.ERRORS])
def test_each_kind_meets_the_goal(results: dict, kind: str) -> None:
    missed = [
        (item["id"], item["reasons"]) for item in results[kind]["items"]
        if item["passed"] != (kind in gate.FAITHFUL)
    ]  # fmt: skip
    assert gate.rate(kind, results[kind]) >= gate.GOAL, missed

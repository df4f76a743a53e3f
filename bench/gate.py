"""The grounding gate measured by what it lets through: faithful answers it passes, planted errors it catches.

    .venv/bin/python bench/gate.py                         # every set: a table each, and the goal
    .venv/bin/python bench/gate.py --sets final --show faithful_lay   # the answers of a kind, with reasons

bench/gate_data holds three sets, each a `<set>_records.json` of evidence records from real runs
(bench/gate_records.py: quickstart runs on the synthetic noodles and on the photos of ../shared/data/noodles;
mistakes, hits and groups of mistakes), each record with its Evidence (JSON), its numbered lines as the
current wording renders them and the question as its writer saw it, and a `<set>_answers.json` of answers
written by someone who read only the prompt and the lines, never the gate's code (helpers of the session
that built the gate): three faithful ones (plain; for a lay reader; ending with one suggestion a line
supports) and five with exactly one planted error (a region no line calls hot, an invented visual cause,
a wrong number or direction, a wrong class or count, a true number cited from the wrong line).

- tuning: 33 records (17 synthetic, 16 photos; 20 mistakes, 8 hits, 5 groups), 264 answers: the gate was
  built against these;
- heldout: 22 other records, 176 answers by another writer, first measured untouched (docs/grounding.md
  has that first measure), then used to fix what it showed;
- final: 18 more records, 144 answers by a fourth writer, measured untouched once before the last fixes;
- fresh: 16 more records, 144 answers by a fifth writer, with a sixth planted error (a cause that is not
  about the photo: the training data, how the model works), measured untouched once after those fixes.

Prints, per set and kind, the share passed (faithful kinds: higher is better) or caught (error kinds), and
the CPU time per check. The goal (issue 22): >= 95% of faithful answers pass and >= 95% of planted errors
are caught, in every kind; tests/test_gate_benchmark.py keeps the shipped data above it.

It runs against whatever `noodlenext` is importable, so an earlier version's gate can be measured on the
same data (PYTHONPATH=<an older checkout>): records then load through that version's Evidence.from_dict,
with a group's summary handed over as the "group" finding that version kept it in.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "gate_data"
FAITHFUL = ("faithful_plain", "faithful_lay", "faithful_advice")
# invented_reason (a cause not about what the photo shows: the training data, how the model works) is in
# the fresh set only.
ERRORS = (
    "wrong_region",
    "invented_cause",
    "invented_reason",
    "wrong_number",
    "wrong_class",
    "misattributed",
    "invented_test",  # the tested set only: a retrain or tested fix the lines do not report
)
GOAL = 0.95


SETS = ("tuning", "heldout", "final", "fresh")
# Evidence that leads with what changing the photo did (issue 23: hiding one part at a time, whole-photo
# changes), on quickstarts trained with a planted shortcut (bench/shortcuts.py): causes (16 records, 144
# answers, the gate fixed against it after its first measure) and causes_fresh (20 records, 180 answers by
# another writer). Measured and reported; their goal is precision (what passes is honest), not the
# recall the four sets above reach: docs/grounding.md.
CAUSE_SETS = ("causes", "causes_fresh")
PRECISION_GOAL = 0.95
# Suggestions a retrain proved (issue 24: the `tested_fix` line, "Tested by retraining (2 seeds,
# noodlenext.improve): the fix ... raised test accuracy by 9.7 points (p = 0.005), but lowered udon
# recall from 96% to 94%"): tested (12 records of a quickstart run whose improve run found a fix that
# helps, bench/improve.py --cases steady; 96 answers by a writer who saw only the prompt, every answer
# citing the retrain line, the errors planted in what it says about the retrain), and tested_fresh
# (12 other photos of that run, 96 answers by another writer, measured untouched once after the fixes the
# first set led to): precision and recall, like the cause sets (docs/grounding.md).
TESTED_SETS = ("tested", "tested_fresh")


def load(name: str = "tuning", data: Path = DATA) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """(record, answers) pairs of one set: every record that has answers."""
    records = {r["id"]: r for r in json.loads((data / f"{name}_records.json").read_text())}
    answers = json.loads((data / f"{name}_answers.json").read_text())
    return [(records[a["id"]], a["answers"]) for a in answers if a["id"] in records]


def evidence_of(record: dict[str, Any]) -> Any:
    """The record's Evidence, through the importable noodlenext's loader."""
    from noodlenext.explain.evidence import Evidence

    d = dict(record["evidence"])
    if not hasattr(Evidence, "claims") and d.get("summary"):  # an earlier version: the summary was a finding
        lines = [line.split(". ", 1)[1] for line in record["lines"]]
        base = len(lines) - len(d["summary"])
        summary = [c for c in d["summary"] if c["kind"] != "advice"]
        classes = sorted({c for claim in summary for c in claim["classes"]})
        regions = sorted({r for claim in summary for r in claim["regions"]})
        d["findings"] = [
            {
                "probe": "group",
                "arguments": {},
                "lines": lines[base : base + len(summary)],
                "classes": classes,
                "regions": regions,
                "data": {},
            }
        ]
    return Evidence.from_dict(d)


def run(pairs: list[tuple[dict[str, Any], dict[str, str]]]) -> dict[str, Any]:
    """Every answer through the gate: per kind, how many were checked and passed, and the CPU seconds."""
    from noodlenext.llm.grounding import check_explanation

    present = {kind for _, answers in pairs for kind in answers}
    out: dict[str, Any] = {
        kind: {"n": 0, "passed": 0, "cpu_s": 0.0, "items": []}
        for kind in (*FAITHFUL, *ERRORS)
        if kind in present
    }
    for record, answers in pairs:
        evidence = evidence_of(record)
        for kind, text in answers.items():
            if kind not in out:
                continue
            start = time.process_time()
            verdict = check_explanation(text, evidence)
            out[kind]["cpu_s"] += time.process_time() - start
            out[kind]["n"] += 1
            out[kind]["passed"] += verdict.passed
            out[kind]["items"].append(
                {"id": record["id"], "text": text, "passed": verdict.passed, "reasons": verdict.reasons}
            )
    return out


def rate(kind: str, result: dict[str, Any]) -> float:
    """Passed (a faithful kind) or caught (an error kind), 0..1."""
    n, passed = result["n"], result["passed"]
    return (passed if kind in FAITHFUL else n - passed) / max(1, n)


def precision_recall(results: dict[str, Any]) -> tuple[float, float]:
    """Of the answers that passed, the share that was faithful (precision); of the faithful answers, the
    share that passed (recall)."""
    honest = sum(r["passed"] for k, r in results.items() if k in FAITHFUL)
    wrong = sum(r["passed"] for k, r in results.items() if k not in FAITHFUL)
    faithful = sum(r["n"] for k, r in results.items() if k in FAITHFUL)
    return honest / max(1, honest + wrong), honest / max(1, faithful)


def table(results: dict[str, Any]) -> str:
    rows = ["| kind of answer | answers | the gate | CPU per check |", "| --- | ---: | ---: | ---: |"]
    for kind, r in results.items():
        verb = "passed" if kind in FAITHFUL else "caught"
        good = r["passed"] if kind in FAITHFUL else r["n"] - r["passed"]
        ms = 1000 * r["cpu_s"] / max(1, r["n"])
        rows.append(f"| {kind} | {r['n']} | {verb} {good} of {r['n']} ({rate(kind, r):.0%}) | {ms:.1f} ms |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    every = [*SETS, *CAUSE_SETS, *TESTED_SETS]
    p.add_argument("--sets", nargs="*", default=every, choices=every)
    p.add_argument("--out", type=Path, default=None, help="write the per-answer results as JSON")
    p.add_argument("--show", default=None, help="print every answer of this kind with the gate's reasons")
    a = p.parse_args()
    everything, below = {}, []
    for name in a.sets:
        pairs = load(name, a.data)
        results = everything[name] = run(pairs)
        print(f"{name}: {len(pairs)} evidence records, {sum(r['n'] for r in results.values())} answers\n")
        print(table(results) + "\n")
        if a.show:
            for item in results[a.show]["items"]:
                mark = "PASS" if item["passed"] else "FAIL"
                print(f"[{mark}] {item['id']}: {item['text']}")
                for reason in item["reasons"]:
                    print(f"    - {reason}")
        if name in SETS:
            below += [f"{name} {k}" for k, r in results.items() if rate(k, r) < GOAL]
        else:
            precision, recall = precision_recall(results)
            print(f"{name}: precision {precision:.0%} (of what passed, honest), recall {recall:.0%}\n")
    if a.out:
        a.out.write_text(json.dumps(everything, indent=1) + "\n")
    print(f"goal (>= {GOAL:.0%} in every kind): {'met' if not below else 'not met in ' + ', '.join(below)}")
    sys.exit(0)


if __name__ == "__main__":
    main()

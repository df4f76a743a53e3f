"""Suggestions that a retrain has proven: what `noodlenext.improve` found about a run, as evidence.

`python -m noodlenext.improve run=<run>` retrains the baseline and each fix with the same seeds and writes,
beside the run's checkpoints, `tested_fixes.json`: every fix it tried, with its verdict and numbers
(`TestedFix`). Explanations of that run's model (explain, chat, the page) read it back: the suggestion
lines gain a `tested_fix` claim when a fix helped at p < 0.05, naming the class whose recall it raised
most, so "relabel the suspect labels" is said with the retrain that proves it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noodlenext.explain.claims import Claim, Move, decimal, percent

__all__ = ["TESTED_FILE", "TESTED_HEAD", "TestedFix", "read_tested", "tested_claim"]

log = logging.getLogger(__name__)

TESTED_FILE = "tested_fixes.json"  # in the run's folder, beside checkpoints/
TESTED_HEAD = r'\{\s*"tested":'  # how it starts: the only existing file of that name it may replace


@dataclass(frozen=True)
class TestedFix:
    """One fix an improve run retrained: what it did (in words, for people), its kind, the verdict
    (helps, hurts, no_evidence, honest, not_run), the mean test accuracy of the baseline and of the fix
    (0..1), the difference in points with its 95% interval, p, the number of seeds, per-class recall
    (class -> [baseline, fix], 0..1), and the improve run's folder."""

    name: str
    kind: str
    what: str
    verdict: str
    seeds: int
    baseline_accuracy: float | None = None
    accuracy: float | None = None
    diff_points: float | None = None
    ci_points: tuple[float, float] | None = None
    p: float | None = None
    recall: dict[str, tuple[float, float]] = field(default_factory=dict)
    improve_dir: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TestedFix:
        return cls(
            name=str(d["name"]),
            kind=str(d["kind"]),
            what=str(d["what"]),
            verdict=str(d["verdict"]),
            seeds=int(d["seeds"]),
            baseline_accuracy=d.get("baseline_accuracy"),
            accuracy=d.get("accuracy"),
            diff_points=d.get("diff_points"),
            ci_points=tuple(d["ci_points"]) if d.get("ci_points") else None,
            p=d.get("p"),
            recall={c: (float(v[0]), float(v[1])) for c, v in (d.get("recall") or {}).items()},
            improve_dir=str(d.get("improve_dir", "")),
        )


def read_tested(run_dir: str | Path) -> list[TestedFix]:
    """The fixes the improve runs of `run_dir` tested (the latest run's first), or [] when none did or
    the file cannot be read (said in the log)."""
    path = Path(run_dir) / TESTED_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
        return [TestedFix.from_dict(t) for t in data["tested"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("ignoring %s (%s): no tested fixes in the explanations", path, err)
        return []


def tested_claim(fixes: Sequence[TestedFix], classes: Sequence[str]) -> Claim | None:
    """The retrain that proves a suggestion for a photo of `classes` (its true class first, then the
    predicted): the helping fix that raised the recall of the first of them most (else the most accurate
    helping fix), or None when no fix helped. Its recall of that class is said as it went: a fix that
    helped overall may have lowered it."""
    helping = [f for f in fixes if f.verdict == "helps" and f.diff_points is not None and f.p is not None]
    if not helping:
        return None
    target = next((c for c in classes if any(c in f.recall for f in helping)), None)

    def gain(f: TestedFix) -> tuple[float, float]:
        before, after = f.recall.get(target, (0.0, 0.0)) if target else (0.0, 0.0)
        return (after - before, f.diff_points or 0.0)

    best = max(helping, key=gain)
    before, after = best.recall.get(target, (None, None)) if target else (None, None)
    quantities = [decimal(best.diff_points, 1, "points"), decimal(best.p, 2 if best.p >= 0.01 else 3, "p")]
    if before is not None:
        quantities = [percent(before, target), percent(after, target), *quantities]
    return Claim(
        "tested_fix",
        (target,) if target and before is not None else (),
        # the fix's own words ("data.augment.train=null", "relabel the 8 most suspect labels") may be said
        looks=tuple(dict.fromkeys(w.lower() for w in re.findall(r"[A-Za-z]+", best.what))),
        quantities=tuple(quantities),
        # The fix moved the class's recall as an edit moves a probability: "raised udon" may be said
        # where it rose, "lowered udon" where it fell.
        moves=(Move(target, before, after),) if before is not None else (),
        verdict="helps",
        fields={
            "what": best.what,
            "kind": best.kind,
            "class": target if before is not None else None,
            "before": before,
            "after": after,
            "diff_points": best.diff_points,
            "p": best.p,
            "seeds": best.seeds,
        },
    )

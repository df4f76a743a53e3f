"""`python -m noodlenext.improve`: read a run, propose fixes, retrain them against the baseline, report.

Everything it writes goes into its own run folder (Hydra's `paths.output_dir`): `fixes.json` (what it
proposes and why, written before any training, so nothing is lost when a job fails), `configs/fix/*.yaml`
and `fixes/<name>/` (the fixes), `jobs/` (the multirun), `improve.md` / `improve.json` (the verdicts),
and with `improve.apply=best` `configs/experiment/improved.yaml`. Into a train run's own folder it writes
`tested_fixes.json` (what explanations of that run's model cite: `explain.tested`) and a section of its
`mistakes.md` ("Fixes tested by retraining", replaced by the next improve run, the rest kept). Started
again on the same folder (`hydra.run.dir=<that folder>`) it trains only the jobs that have not finished
and rebuilds the report.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from noodlenext.core.files import write_json_atomic
from noodlenext.core.ownership import guard_file
from noodlenext.data.rules import check_dataset
from noodlenext.runs.improve import (
    check_unchanged,
    compare,
    fix_digest,
    launch,
    split_overrides,
    write_fixes,
)
from noodlenext.runs.improve_report import (
    best,
    link_mistakes,
    log_wandb,
    write_applied,
    write_report,
    write_tested,
)
from noodlenext.runs.proposals import looked_at, propose, read_run

__all__ = ["improve"]

log = logging.getLogger(__name__)

REPORT_HEAD = r'\{\s*"run":'  # how improve.json starts
FIXES_HEAD = r'\[\s*(\{\s*"name":|\])'  # how fixes.json starts


def _seeds(icfg: DictConfig, first: int) -> list[int]:
    n = icfg.get("seeds")
    if n is None:
        import torch

        n = 3 if torch.cuda.is_available() else 2
    if int(n) < 1:
        raise ValueError(f"improve.seeds={n}: need at least 1 seed per fix")
    return [first + i for i in range(int(n))]


def improve(cfg: DictConfig) -> dict[str, Any]:
    """What the command does (see the module docstring); returns improve.json's content."""
    icfg = cfg.improve
    if icfg.get("apply") not in (None, "best"):  # before any training: a typo must not cost the retrains
        raise ValueError(f"improve.apply={icfg.apply!r}: use best or null")
    out = Path(cfg.paths.output_dir)
    for name, head in (("improve.json", REPORT_HEAD), ("fixes.json", FIXES_HEAD)):
        guard_file(out / name, "hydra.run.dir", head)
    run = read_run(cfg.run, icfg.get("crossval"))
    report = None
    if icfg.get("data_check"):
        image_size = int(OmegaConf.select(run.config, "data.image_size", default=384) or 384)
        report = check_dataset(run.root, image_size=image_size)
    extra = OmegaConf.to_container(icfg.extra) if icfg.get("extra") else {}
    fixes = propose(run, report, extra)
    only = icfg.get("only")
    if only:
        unknown = set(only) - {f.name for f in fixes}
        if unknown:
            raise ValueError(
                f"improve.only={list(only)}: {sorted(unknown)} not proposed for this run; "
                f"proposed: {[f.name for f in fixes]}"
            )
        fixes = [f for f in fixes if f.name == "baseline" or f.name in only]
    check_unchanged(out, fixes)
    write_fixes(out, fixes, split_overrides(run)[1])
    write_json_atomic(out / "fixes.json", [{**f.to_dict(), "digest": fix_digest(f)} for f in fixes])
    looked = looked_at(run, report, fixes)
    for source in looked:
        log.info(
            "improve: %s: %s%s",
            source.source,
            ", ".join(source.fixes) or "no fix",
            f" ({source.note})" * bool(source.note),
        )
    for fix in fixes:
        log.info("improve: %-14s %s (%s)", fix.name, fix.what, fix.why)
    seeds = _seeds(icfg, run.seed)
    if len(fixes) == 1:
        log.warning(
            "improve: no fix proposed for %s: nothing to retrain (improve.md says where fixes come from)",
            run.dir,
        )
    if icfg.get("train", True) and len(fixes) > 1:
        launch(run, out, fixes, seeds, [str(o) for o in icfg.get("job_overrides") or []])
    results = compare(out, fixes)
    data = write_report(run, out, results, seeds, looked)
    if any(r.verdict not in ("baseline", "not_run") for r in results):
        write_tested(run, out, results)  # explanations of the run's model cite what was proven
        link_mistakes(run, out, results)
    winner = best(results)
    if icfg.get("apply") == "best":
        if winner is None:
            log.warning("improve.apply=best: no fix helps at p < 0.05; nothing applied")
        else:
            path = write_applied(run, out, winner)
            data["applied"] = str(path)
            write_json_atomic(out / "improve.json", data)
    if icfg.get("wandb", True) and len(fixes) > 1:
        try:
            log_wandb(run, out, results)
        except Exception:  # noqa: BLE001 - the files are written; W&B must not fail a finished comparison
            log.exception("improve: logging to W&B failed (improve.md has everything)")
    return data

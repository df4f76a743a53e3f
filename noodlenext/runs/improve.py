"""Does a fix help? The baseline and each fix retrained with the same seeds on the same split, as one Hydra
multirun, and compared on the untouched test set.

`write_fixes` writes each fix as a Hydra config, `<out>/configs/fix/<name>.yaml` (the files it names
beside it, in `<out>/fixes/<name>/`), over the run's own `key=value` overrides (`split_overrides`): on
the command line those would win over any config, so a fix of a setting the run set there would train
the baseline again. `launch` trains every job that has not finished, as
`python -m noodlenext.train -m <the run's group choices> +fix=<names> seed=<seeds>` with
`hydra.searchpath=[file://<out>/configs]`, each job in `<out>/jobs/<fix>_seed<seed>/` with `resume=auto`,
so a killed improve run, started again on the same folder, continues each unfinished job from its last
checkpoint and leaves the finished ones alone. `compare` reads what finished: per fix and seed, the
fix's test predictions against the baseline's (McNemar per seed, the paired t-test over seeds, a paired
bootstrap over test images of the seed-averaged difference), the per-class recall, and the photos the
fix turned from wrong to right and back.

The verdict's p counts both kinds of noise: the test set's (the bootstrap's standard error) and the
training seed's, which on a small recipe is the larger (the quickstart's test accuracy moves by 5 points
and more from one seed to the next, whatever the fix): 2 x the pooled within-configuration variance of
the per-seed accuracies (every configuration of the improve run, each around its own mean) / the number
of seeds, in a t-test on the pooled degrees of freedom (`significance.seed_aware_test`). "helps" when
the fix is better with p < 0.05, "hurts" when worse, else "no evidence it helps". With one seed per
configuration the seed's noise cannot be measured: the bootstrap's p alone, and the report says so.
Taking copies of test photos out of training lowers an inflated score: that is the honest number, and it
says so ("honest").
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from noodlenext.callbacks.significance import (
    ALPHA,
    PREDICTIONS_FILE,
    BootstrapDiff,
    JobPredictions,
    compare_configs,
    detectable_difference,
    paired_bootstrap,
    pooled_seed_variance,
    read_predictions,
    seed_aware_test,
)
from noodlenext.callbacks.sweep_comparison import Job, read_jobs
from noodlenext.core.config import config_dir
from noodlenext.core.files import write_text_atomic
from noodlenext.runs.proposals import Fix, RunRecord, copy_setting

__all__ = [
    "FixResult",
    "check_unchanged",
    "compare",
    "finished",
    "fix_digest",
    "job_name",
    "launch",
    "quoted",
    "is_group",
    "search_path",
    "split_overrides",
    "train_command",
    "write_fixes",
]

log = logging.getLogger(__name__)

FIX_GROUP = "fix"
JOBS = "jobs"
CONFIGS = "configs"


def quoted(value: str | Path) -> str:
    """A path as a Hydra override value: single-quoted, so commas, quotes, `=` and brackets in it stay
    part of it."""
    return "'" + str(value).replace("'", "\\'") + "'"


def search_path(out: Path) -> str:
    """The override that lets Hydra find an improve run's configs (`+fix=<name>`, `experiment=improved`)."""
    return f"hydra.searchpath=[{quoted('file://' + str((out / CONFIGS).resolve()))}]"


def job_name(fix: str, seed: int) -> str:
    return f"{fix}_seed{seed}"


def finished(job_dir: Path) -> bool:
    """A job that tested: its metrics and per-image predictions are written."""
    return (job_dir / "metrics.json").is_file() and (job_dir / PREDICTIONS_FILE).is_file()


def fix_digest(fix: Fix) -> str:
    """What a fix trains with (its config and its files' contents), as a short hash."""
    blob = json.dumps({"config": fix.config, "files": fix.files}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_unchanged(out: Path, fixes: Sequence[Fix]) -> None:
    """An improve folder started again continues its jobs only for the same fixes: a fix proposed anew
    with another content (new label issues, a changed run) whose jobs already exist is refused, so a
    result never mixes two versions of one fix."""
    path = out / "fixes.json"
    if not path.is_file():
        return
    try:
        before = {f["name"]: f.get("digest") for f in json.loads(path.read_text())}
    except (OSError, ValueError, KeyError, TypeError):
        return
    changed = [
        f.name
        for f in fixes
        if f.name in before
        and before[f.name] != fix_digest(f)
        and any((out / JOBS).glob(f"{f.name}_seed*/.hydra"))
    ]
    if changed:
        raise ValueError(
            f"hydra.run.dir={out}: the fixes {changed} are not the ones its jobs were trained with (the run, "
            "its label issues or the data changed since); nothing was changed: start a new improve run "
            "(leave out hydra.run.dir) to test them"
        )


def is_group(key: str) -> bool:
    """Whether an override's key (`model`, `+augment`) chooses from a config group of conf/."""
    return (config_dir() / key.lstrip("+~")).is_dir()


def split_overrides(run: RunRecord) -> tuple[list[str], dict[str, Any]]:
    """The run's command-line overrides as (those that stay on the command line: group choices, deletions
    and sweeps, as given; the `key=value` ones as a config of the values the run composed with them, a
    key inside a list bringing its whole list)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    line: list[str] = []
    values = OmegaConf.create({})
    for text in run.overrides:
        o = parser.parse_override(text)
        if o.is_delete() or o.is_sweep_override() or o.package is not None or is_group(o.key_or_group):
            line.append(text)
        else:
            copy_setting(run.config, o.key_or_group, values)
    return line, OmegaConf.to_container(values, resolve=False)


def write_fixes(out: Path, fixes: Sequence[Fix], base: dict[str, Any] | None = None) -> None:
    """Each fix as `configs/fix/<name>.yaml` (a global package) over `base` (the run's own `key=value`
    overrides, `split_overrides`), its files in `fixes/<name>/`, named in its config by absolute path."""
    for fix in fixes:
        folder = out / "fixes" / fix.name
        config = OmegaConf.merge(OmegaConf.create(base or {}), OmegaConf.create(fix.config))
        for name, text in fix.files.items():
            folder.mkdir(parents=True, exist_ok=True)
            write_text_atomic(folder / name, text)
            for key in ("data.file_list", "data.relabel"):
                if OmegaConf.select(config, key) == name:
                    OmegaConf.update(config, key, str((folder / name).resolve()))
        head = f"# @package _global_\n# noodlenext.improve fix {fix.name}: {fix.what}\n"
        body = OmegaConf.to_yaml(config) if config else "{}\n"
        write_text_atomic(out / CONFIGS / FIX_GROUP / f"{fix.name}.yaml", head + body)


def recipe_overrides(run: RunRecord) -> list[str]:
    """What every job and the reproduce command give on the command line for the run's recipe: its group
    choices (its `key=value` overrides are in every fix's config, `split_overrides`), its data and its
    split (one split for every job: the seeds vary the training only)."""
    split_seed = OmegaConf.select(run.config, "data.split_seed", default=None)
    try:
        split_seed = int(split_seed)
    except (TypeError, ValueError):
        split_seed = run.seed
    return [*split_overrides(run)[0], f"data.root={quoted(run.root)}", f"data.split_seed={split_seed}"]


def train_command(
    run: RunRecord, out: Path, fixes: Sequence[str], seeds: Sequence[int], job_overrides: Sequence[str]
) -> list[str]:
    """The multirun that trains `fixes` x `seeds` into `<out>/jobs/`."""
    return [
        sys.executable,
        "-m",
        "noodlenext.train",
        "-m",
        *recipe_overrides(run),
        *job_overrides,
        "resume=auto",
        f"+{FIX_GROUP}={','.join(fixes)}",
        f"seed={','.join(str(s) for s in seeds)}",
        search_path(out),
        f"hydra.sweep.dir={quoted((out / JOBS).resolve())}",
        "hydra.sweep.subdir=${hydra:runtime.choices." + FIX_GROUP + "}_seed${seed}",
    ]


def launch(
    run: RunRecord, out: Path, fixes: Sequence[Fix], seeds: Sequence[int], job_overrides: Sequence[str]
) -> list[list[str]]:
    """Train the jobs not yet finished (one multirun per set of fixes missing the same seeds); returns
    the commands run. A multirun that fails is logged and the others go on: compare() reports what
    finished."""
    todo: dict[tuple[int, ...], list[str]] = {}
    for fix in fixes:
        missing = tuple(s for s in seeds if not finished(out / JOBS / job_name(fix.name, s)))
        if missing:
            todo.setdefault(missing, []).append(fix.name)
    commands = []
    for missing, names in todo.items():
        cmd = train_command(run, out, names, missing, job_overrides)
        log.info("improve: training %s x seeds %s:\n  %s", names, list(missing), shlex.join(cmd))
        commands.append(cmd)
        done = subprocess.run(cmd, check=False)
        if done.returncode:
            log.error(
                "improve: the multirun for %s exited with %d; comparing what finished", names, done.returncode
            )
    return commands


@dataclass
class FixResult:
    """One fix against the baseline, over the seeds both finished."""

    fix: Fix
    seeds: list[int] = field(default_factory=list)
    accuracy: float | None = None  # mean over seeds, 0..1
    accuracy_std: float | None = None
    baseline_accuracy: float | None = None
    diff_points: float | None = None  # fix − baseline
    ci_points: tuple[float, float] | None = None
    p_bootstrap: float | None = None
    p_t: float | None = None  # paired t-test over seeds (2 or more)
    p_mcnemar: list[float | None] = field(default_factory=list)  # per seed
    seed_diffs: list[float] = field(default_factory=list)  # points, per seed
    recall: dict[str, tuple[float, float]] = field(default_factory=dict)  # class -> (baseline, fix)
    fixed: list[str] = field(default_factory=list)  # wrong -> right in most seeds
    broken: list[str] = field(default_factory=list)  # right -> wrong in most seeds
    leaked: dict[str, Any] = field(default_factory=dict)  # remove_copies: the score without the copies
    verdict: str = "not_run"  # helps | hurts | no_evidence | honest | not_run
    p: float | None = None  # the verdict's p
    seed_sd_points: float | None = None  # the pooled seed-to-seed standard deviation of test accuracy
    df: int | None = None  # the test's degrees of freedom (None: one seed each, the bootstrap alone)
    # (seeds a side, points): the smallest gain the test would call a help 80% of the time, at these
    # seeds and at twice as many (significance.detectable_difference)
    detectable_points: list[tuple[int, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "fix"}
        out["fix"] = self.fix.to_dict()
        out["recall"] = {c: list(v) for c, v in self.recall.items()}
        return out


def _fix_of(job: Job) -> str | None:
    return next((o.partition("=")[2] for o in job.overrides if o.startswith(f"+{FIX_GROUP}=")), None)


def _seed_of(job: Job) -> int | None:
    value = next((o.partition("=")[2] for o in job.overrides if o.startswith("seed=")), None)
    return int(value) if value is not None else None


def _recall(preds: Sequence[JobPredictions], files: Sequence[str]) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for pred in preds:
        for cls in sorted({pred.labels[f] for f in files}):
            mine = [f for f in files if pred.labels[f] == cls]
            out.setdefault(cls, []).append(sum(pred.correct(f) for f in mine) / len(mine))
    return {c: statistics.fmean(v) for c, v in out.items()}


def _decide(r: FixResult, boot: BootstrapDiff, seed_variance: tuple[float, int] | None, images: int) -> None:
    if seed_variance is None:
        r.p = boot.p
    else:
        test = seed_aware_test(boot, len(r.seeds), seed_variance, images)
        r.p, r.df, r.seed_sd_points = test.p, test.df, 100 * test.seed_sd
        r.ci_points = (100 * test.low, 100 * test.high)
        n = len(r.seeds)
        r.detectable_points = [
            (k, 100 * detectable_difference(boot.se, k, seed_variance, images, alpha=ALPHA))
            for k in (n, 2 * n)
        ]
    if r.fix.kind == "remove_copies" and r.fix.evidence.get("leaked_test") and (r.diff_points or 0) <= 0:
        r.verdict = "honest"
    elif r.p < ALPHA and boot.diff > 0:
        r.verdict = "helps"
    elif r.p < ALPHA and boot.diff < 0:
        r.verdict = "hurts"
    else:
        r.verdict = "no_evidence"


def compare(out: Path, fixes: Sequence[Fix]) -> list[FixResult]:
    """Every fix against the baseline, from the jobs that finished (the baseline's result first)."""
    jobs_dir = out / JOBS
    jobs = (
        [j for j in read_jobs(jobs_dir) if j.ok and finished(jobs_dir / j.name)] if jobs_dir.is_dir() else []
    )
    by_fix: dict[str, dict[int, Job]] = {}
    for job in jobs:
        fix, seed = _fix_of(job), _seed_of(job)
        if fix is not None and seed is not None:
            by_fix.setdefault(fix, {})[seed] = job
    base = by_fix.get("baseline", {})
    seed_variance = pooled_seed_variance(
        [
            [float(j.metrics["test/acc"]) for j in jobs.values() if "test/acc" in j.metrics]
            for jobs in by_fix.values()
        ]
    )
    results = []
    for fix in fixes:
        mine = by_fix.get(fix.name, {})
        r = FixResult(fix)
        accs = [float(j.metrics["test/acc"]) for j in mine.values() if "test/acc" in j.metrics]
        if accs:
            r.accuracy = statistics.fmean(accs)
            r.accuracy_std = statistics.stdev(accs) if len(accs) > 1 else None
        seeds = sorted(set(mine) & set(base))
        if fix.name == "baseline" or not seeds:
            r.verdict = "baseline" if fix.name == "baseline" else "not_run"
            results.append(r)
            continue
        preds_fix = [read_predictions(jobs_dir / mine[s].name) for s in seeds]
        preds_base = [read_predictions(jobs_dir / base[s].name) for s in seeds]
        files = sorted(set.intersection(*(set(p.labels) for p in preds_fix + preds_base)))
        if not files:
            results.append(r)
            continue
        r.seeds = seeds
        right_fix = [[int(p.correct(f)) for f in files] for p in preds_fix]
        right_base = [[int(p.correct(f)) for f in files] for p in preds_base]
        boot = paired_bootstrap(right_fix, right_base)
        r.accuracy = statistics.fmean(sum(row) / len(files) for row in right_fix)
        r.baseline_accuracy = statistics.fmean(sum(row) / len(files) for row in right_base)
        r.diff_points, r.ci_points, r.p_bootstrap = 100 * boot.diff, (100 * boot.low, 100 * boot.high), boot.p
        r.seed_diffs = [
            100 * (sum(a) - sum(b)) / len(files) for a, b in zip(right_fix, right_base, strict=True)
        ]
        pair = compare_configs(
            fix.name, [mine[s] for s in seeds], "baseline", [base[s] for s in seeds], jobs_dir
        )
        r.p_t = pair.p if len(seeds) >= 2 else None
        r.p_mcnemar = [p.p_mcnemar for p in pair.pairs]
        rec_b, rec_f = _recall(preds_base, files), _recall(preds_fix, files)
        r.recall = {c: (rec_b[c], rec_f[c]) for c in rec_b}
        half = len(seeds) / 2
        n_fix = {f: sum(row[i] for row in right_fix) for i, f in enumerate(files)}
        n_base = {f: sum(row[i] for row in right_base) for i, f in enumerate(files)}
        r.fixed = [f for f in files if n_fix[f] > half >= n_base[f]]
        r.broken = [f for f in files if n_base[f] > half >= n_fix[f]]
        leaked = set(fix.evidence.get("leaked_test") or ())
        if leaked & set(files):
            clean = [i for i, f in enumerate(files) if f not in leaked]
            seen = [i for i, f in enumerate(files) if f in leaked]

            def acc(rows: list[list[int]], idx: list[int]) -> float | None:
                return statistics.fmean(sum(row[i] for i in idx) / len(idx) for row in rows) if idx else None

            r.leaked = {
                "test_photos": len(seen),
                "baseline_on_copies": acc(right_base, seen),
                "baseline_on_rest": acc(right_base, clean),
                "fix_on_copies": acc(right_fix, seen),
                "fix_on_rest": acc(right_fix, clean),
            }
        _decide(r, boot, seed_variance, len(files))
        results.append(r)
    return results

"""Is the difference between two configurations of a sweep real? Paired tests on the same test set.

For two trained models tested on the same images, McNemar's exact test looks only at the discordant
images: b = A right and B wrong, c = A wrong and B right. Under "A and B are equally accurate" each
discordant image is a fair coin, so p = the two-sided binomial test of b successes in b + c trials at
0.5 (scipy.stats.binomtest). It says whether these two *trained models* differ; it knows nothing of
how much a model changes from one training seed to the next.

With several seeds per configuration (jobs matched by seed, and by data.fold in a cross-validation),
the headline test is the paired t-test over the per-seed accuracy differences (scipy.stats.ttest_rel):
it asks whether the configurations differ beyond the seed-to-seed spread. McNemar is still given per
seed. A comparison always says, in words, whether p < 0.05, and when it is not: "could be noise".
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ALPHA = 0.05
PREDICTIONS_FILE = "test_predictions.csv"  # written by callbacks/test_predictions.py
REPLICATE_KEYS = ("seed", "data.fold")  # jobs that differ only by these repeat one configuration


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (b: only A right, c: only B right)."""
    from scipy.stats import binomtest

    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0  # no image tells them apart
    return float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided paired t-test p-value of a vs b (matched pairs), or None when it is undefined: fewer
    than 2 pairs, or differences without spread (all equal but not zero)."""
    from scipy.stats import ttest_rel

    if len(a) != len(b):
        raise ValueError(f"paired samples of different lengths: {len(a)} and {len(b)}")
    if len(a) < 2:
        return None
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    if max(diffs) - min(diffs) < 1e-12:
        return 1.0 if abs(diffs[0]) < 1e-12 else None
    p = float(ttest_rel(a, b).pvalue)
    return None if math.isnan(p) else p


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def verdict(name_a: str, name_b: str, diff_points: float, p: float | None, test: str) -> str:
    """`A − B = +2.0 points, p = 0.41 (McNemar): not significant at 0.05 — could be noise`."""
    head = f"{name_a} − {name_b} = {diff_points:+.1f} points"
    if p is None:
        return f"{head}; no test possible ({test})"
    if p < ALPHA:
        return f"{head}, {format_p(p)} ({test}): significant at {ALPHA}"
    return f"{head}, {format_p(p)} ({test}): not significant at {ALPHA} — could be noise"


# --- per-image predictions of a job --------------------------------------------------------------------


@dataclass
class JobPredictions:
    """A job's test_predictions.csv: file -> (label, pred), and where each image lies."""

    labels: dict[str, str]
    preds: dict[str, str]
    paths: dict[str, str]

    def correct(self, file: str) -> bool:
        return self.labels[file] == self.preds[file]


def read_predictions(job_dir: Path) -> JobPredictions | None:
    """A job's per-image test predictions, or None when it wrote none."""
    path = job_dir / PREDICTIONS_FILE
    if not path.is_file():
        return None
    labels, preds, paths = {}, {}, {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            labels[row["file"]], preds[row["file"]], paths[row["file"]] = (
                row["label"],
                row["pred"],
                row["path"],
            )
    return JobPredictions(labels, preds, paths)


# --- comparing two configurations ---------------------------------------------------------------------


@dataclass
class ReplicatePair:
    """One seed (or fold) of both configurations, on the images both tested."""

    replicate: str  # e.g. "seed=1", or "–" for unmatched single jobs
    job_a: str
    job_b: str
    acc_a: float
    acc_b: float
    images: int | None  # common test images; None: accuracies from metrics.json (no per-image files)
    only_a: list[str] = field(default_factory=list)  # A right, B wrong
    only_b: list[str] = field(default_factory=list)  # A wrong, B right
    p_mcnemar: float | None = None


@dataclass
class PairComparison:
    """Configuration A (the best by mean test accuracy) against B."""

    name_a: str
    name_b: str
    pairs: list[ReplicatePair]
    diff_points: float | None
    p: float | None
    test: str
    text: str
    notes: list[str] = field(default_factory=list)

    @property
    def significant(self) -> bool | None:
        return None if self.p is None else self.p < ALPHA

    def row(self) -> dict[str, Any]:
        return {
            "a": self.name_a,
            "b": self.name_b,
            "diff_points": self.diff_points,
            "p": self.p,
            "test": self.test,
            "significant": self.significant,
            "seeds": len(self.pairs),
            "verdict": self.text,
        }


def replicate_of(overrides: Sequence[str]) -> str:
    """The replicate part of a job's overrides (`seed=1 data.fold=0`), "" when it has none."""
    parts = [o for o in overrides if o.partition("=")[0] in REPLICATE_KEYS]
    return " ".join(sorted(parts))


def _pair(
    replicate: str, job_a: Any, job_b: Any, pred_a: JobPredictions | None, pred_b: JobPredictions | None
) -> ReplicatePair | None:
    if pred_a is not None and pred_b is not None:
        common = sorted(set(pred_a.labels) & set(pred_b.labels))
        if not common:
            return None
        ok_a = [pred_a.correct(f) for f in common]
        ok_b = [pred_b.correct(f) for f in common]
        only_a = [f for f, x, y in zip(common, ok_a, ok_b, strict=True) if x and not y]
        only_b = [f for f, x, y in zip(common, ok_a, ok_b, strict=True) if y and not x]
        return ReplicatePair(
            replicate,
            job_a.name,
            job_b.name,
            sum(ok_a) / len(common),
            sum(ok_b) / len(common),
            len(common),
            only_a,
            only_b,
            mcnemar_exact(len(only_a), len(only_b)),
        )
    acc_a, acc_b = job_a.metrics.get("test/acc"), job_b.metrics.get("test/acc")
    if acc_a is None or acc_b is None:
        return None
    return ReplicatePair(replicate, job_a.name, job_b.name, float(acc_a), float(acc_b), None)


def compare_configs(
    name_a: str, jobs_a: Sequence[Any], name_b: str, jobs_b: Sequence[Any], sweep_dir: Path
) -> PairComparison:
    """A vs B: jobs matched by seed (and fold); a single job on each side is paired whatever its seed."""
    by_a = {replicate_of(j.overrides): j for j in jobs_a}
    by_b = {replicate_of(j.overrides): j for j in jobs_b}
    matched = [(r, by_a[r], by_b[r]) for r in by_a if r in by_b]
    notes = []
    if not matched and len(jobs_a) == len(jobs_b) == 1:
        matched = [("–", jobs_a[0], jobs_b[0])]
    unmatched = len(jobs_a) + len(jobs_b) - 2 * len(matched)
    if unmatched:
        notes.append(f"{unmatched} job(s) without a same-seed partner are left out of the paired test")
    pairs = []
    for replicate, ja, jb in matched:
        pa, pb = read_predictions(sweep_dir / ja.name), read_predictions(sweep_dir / jb.name)
        missing = [j.name for j, pred in ((ja, pa), (jb, pb)) if pred is None]
        if missing:
            notes.append(f"job(s) {', '.join(missing)} wrote no {PREDICTIONS_FILE}: no per-image test")
        pair = _pair(replicate or "–", ja, jb, pa, pb)
        if pair is None:
            notes.append(f"jobs {ja.name} and {jb.name} share no test image: not compared")
            continue
        if pa is not None and pb is not None and not (len(pa.labels) == len(pb.labels) == pair.images):
            notes.append(
                f"jobs {ja.name} and {jb.name} tested different images ({len(pa.labels)} and "
                f"{len(pb.labels)}): compared on the {pair.images} both tested"
            )
        pairs.append(pair)
    if not pairs:
        text = f"{name_a} vs {name_b}: no runs to pair"
        return PairComparison(name_a, name_b, [], None, None, "no paired runs", text, notes)
    accs_a, accs_b = [p.acc_a for p in pairs], [p.acc_b for p in pairs]
    diff = 100 * (statistics.fmean(accs_a) - statistics.fmean(accs_b))
    if len(pairs) >= 2:
        keys = {o.partition("=")[0] for p in pairs for o in p.replicate.split()}
        what = "seeds" if keys <= {"seed"} else "folds" if keys == {"data.fold"} else "runs"
        p, test = paired_t_test(accs_a, accs_b), f"paired t-test over {len(pairs)} {what}"
        if p is None:
            test += f": the {what}' differences have no spread"
    elif pairs[0].p_mcnemar is not None:
        p, test = pairs[0].p_mcnemar, f"McNemar exact, {pairs[0].images} paired test images, one seed"
        notes.append(
            "one seed: McNemar compares these two trained models; add seeds (seed=1,2,3) to compare "
            "the configurations beyond seed-to-seed variation"
        )
    else:
        p, test = None, f"one seed and no {PREDICTIONS_FILE}"
    return PairComparison(name_a, name_b, pairs, diff, p, test, verdict(name_a, name_b, diff, p, test), notes)


# --- a fix against its baseline: the test images resampled ------------------------------------------


@dataclass
class BootstrapDiff:
    """The mean test accuracy difference A − B over matched seeds (0..1), its 95% bootstrap interval and
    the bootstrap's two-sided p for "no difference": test images resampled with replacement, the same
    resample for every seed (each image keeps its pairing across seeds and configurations)."""

    diff: float
    low: float
    high: float
    p: float
    resamples: int
    se: float = 0.0  # the resampled differences' standard deviation


def paired_bootstrap(
    correct_a: Any, correct_b: Any, resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> BootstrapDiff:
    """correct_a, correct_b: (seeds, images) arrays of 0/1 (right or wrong), the same images in the same
    order; rows matched by seed. The p is twice the smaller share of resampled differences on either
    side of zero (at least 1 / resamples): the percentile bootstrap's test."""
    import numpy as np

    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"need two (seeds, images) arrays of one shape, got {a.shape} and {b.shape}")
    per_image = (a - b).mean(axis=0)  # each image's difference averaged over the seeds
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, per_image.size, size=(resamples, per_image.size))
    diffs = per_image[idx].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    p = min(1.0, 2 * min(float((diffs <= 0).mean()), float((diffs >= 0).mean())))
    return BootstrapDiff(
        float(per_image.mean()), float(low), float(high), max(p, 1 / resamples), resamples, float(diffs.std())
    )


def pooled_seed_variance(accuracies: Sequence[Sequence[float]]) -> tuple[float, int] | None:
    """How much test accuracy moves from one training seed to the next on the same test set: the pooled
    within-configuration variance of the per-seed accuracies (each configuration's seeds around its own
    mean), and its degrees of freedom; None when no configuration has 2 seeds."""
    ss, df = 0.0, 0
    for accs in accuracies:
        if len(accs) >= 2:
            mean = statistics.fmean(accs)
            ss += sum((a - mean) ** 2 for a in accs)
            df += len(accs) - 1
    return (ss / df, df) if df else None


@dataclass
class SeedAwareDiff:
    """A − B over n matched seeds with both kinds of noise in its standard error: the test set's (the
    paired bootstrap over images) and the training seed's (2 x the pooled seed variance / n, as each side
    is a mean of n trainings); a t-test on the pooled degrees of freedom, and its 95% interval."""

    diff: float
    se: float
    low: float
    high: float
    p: float
    df: int
    seed_sd: float


def _seed_aware_se(
    test_se: float, n: int, seed_variance: tuple[float, int], images: int
) -> tuple[float, int]:
    """The standard error of a difference of two n-seed means (the test set's part and the seed's) and
    its Welch-Satterthwaite degrees of freedom (the test set's with images - 1, the seed's with the pooled
    df): the seed's few df weigh only as much as its share of the variance."""
    var, seed_df = seed_variance
    v_test, v_seed = test_se**2, 2 * var / n
    parts = [(v, d) for v, d in ((v_test, max(1, images - 1)), (v_seed, seed_df)) if v > 0]
    df = round((v_test + v_seed) ** 2 / sum(v**2 / d for v, d in parts)) if parts else seed_df
    return math.sqrt(v_test + v_seed), max(1, df)


def seed_aware_test(
    boot: BootstrapDiff, n: int, seed_variance: tuple[float, int], images: int
) -> SeedAwareDiff:
    """A t-test of the bootstrap's difference with both kinds of noise in its standard error
    (`_seed_aware_se`)."""
    from scipy.stats import t as student_t

    var = seed_variance[0]
    se, df = _seed_aware_se(boot.se, n, seed_variance, images)
    if se == 0:
        p = 1.0 if boot.diff == 0 else 0.0
        return SeedAwareDiff(boot.diff, 0.0, boot.diff, boot.diff, p, df, 0.0)
    p = float(2 * student_t.sf(abs(boot.diff) / se, df))
    half = float(student_t.ppf(0.975, df)) * se
    return SeedAwareDiff(boot.diff, se, boot.diff - half, boot.diff + half, p, df, math.sqrt(var))


def detectable_difference(
    test_se: float,
    n: int,
    seed_variance: tuple[float, int],
    images: int,
    alpha: float = 0.05,
    power: float = 0.8,
) -> float:
    """The smallest true difference `seed_aware_test` would call significant at `alpha` in `power` of
    repeats, with n seeds a side: (t(1 - alpha/2) + t(power)) x its standard error, on its degrees of
    freedom. The test set's part (`test_se`, as the bootstrap measured it) is kept as it is for any n:
    more seeds do not shrink it here, so the figure for more seeds errs on the large side."""
    from scipy.stats import t as student_t

    se, df = _seed_aware_se(test_se, n, seed_variance, images)
    return float(student_t.ppf(1 - alpha / 2, df) + student_t.ppf(power, df)) * se

"""What an improve run found, for people: `improve.md` and `improve.json`, the winner as an experiment
config (`improve.apply=best`), and the same table in W&B."""

from __future__ import annotations

import logging
import shlex
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from noodlenext.callbacks.significance import ALPHA, format_p
from noodlenext.core.files import write_json_atomic, write_text_atomic
from noodlenext.core.ownership import guard_file
from noodlenext.explain.tested import TESTED_FILE, TESTED_HEAD, TestedFix, read_tested
from noodlenext.runs.improve import (
    CONFIGS,
    FIX_GROUP,
    FixResult,
    is_group,
    recipe_overrides,
    search_path,
    split_overrides,
)
from noodlenext.runs.proposals import Looked, RunRecord, experiment_names

__all__ = [
    "APPLIED",
    "best",
    "detectable_text",
    "link_mistakes",
    "log_wandb",
    "reproduce_command",
    "tested_records",
    "verdict_text",
    "write_applied",
    "write_report",
    "write_tested",
]

log = logging.getLogger(__name__)

APPLIED = "improved"  # configs/experiment/improved.yaml
MAX_PHOTOS = 12  # per direction and fix in improve.md


def best(results: Sequence[FixResult]) -> FixResult | None:
    """The fix that helps most (verdict "helps"), or None."""
    helping = [r for r in results if r.verdict == "helps" and r.diff_points is not None]
    return max(helping, key=lambda r: r.diff_points) if helping else None


def detectable_text(results: Sequence[FixResult]) -> str | None:
    """What these seeds can tell apart: the smallest gain the test calls a help in 80% of repeats (the
    median over the fixes), at these seeds and at twice as many; None with one seed a side."""
    rows = [r.detectable_points for r in results if len(r.detectable_points) == 2]
    if not rows:
        return None
    (n, now), (more, then) = ((rows[0][i][0], statistics.median(row[i][1] for row in rows)) for i in (0, 1))
    return (
        f"With {n} seed{'s' * (n != 1)} a side and this run's noise, a fix has to gain about {now:.1f} "
        f"points to be called a help (in 80% of repeats); with improve.seeds={more}, about {then:.1f}. "
        "A fix that gains less may still help; these seeds cannot show it."
    )


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def verdict_text(r: FixResult) -> str:
    """The verdict in words, with its numbers."""
    if r.verdict == "baseline":
        return "the baseline"
    if r.verdict == "not_run" or r.diff_points is None:
        return "not run (no finished job beside a baseline job of the same seed)"
    p = format_p(r.p) if r.p is not None else "no p"
    seeds = f"{len(r.seeds)} seed{'s' * (len(r.seeds) != 1)}"
    if r.seed_sd_points is None:
        seeds += ", the seed's noise not measured"
    head = (
        f"{r.diff_points:+.1f} points (95% CI {r.ci_points[0]:+.1f} to {r.ci_points[1]:+.1f}), {p}, {seeds}"
    )
    if r.verdict == "helps":
        return f"helps: {head}"
    if r.verdict == "hurts":
        return f"hurts: {head}"
    if r.verdict == "honest":
        leak = r.leaked
        why = ""
        if leak.get("test_photos"):
            others = (
                f" against {_pct(leak['baseline_on_rest'])} of the others"
                if leak.get("baseline_on_rest") is not None
                else ""
            )
            after = (
                f"{_pct(leak['fix_on_copies'])} and {_pct(leak['fix_on_rest'])}"
                if leak.get("fix_on_rest") is not None
                else _pct(leak["fix_on_copies"])
            )
            why = (
                f": it had trained on copies of {leak['test_photos']} test photos and got "
                f"{_pct(leak['baseline_on_copies'])} of them right{others} (without the copies: {after})"
            )
        size = "" if r.p is not None and r.p < ALPHA else " (a drop this small could be noise)"
        return (
            f"the honest number: {head}{size}; a score measured on photos the model trained on counts "
            f"memory, not skill{why}"
        )
    return f"no evidence it helps: {head}"


def reproduce_command(run: RunRecord, out: Path, fix: str, seed: int | None = None) -> str:
    """The training command that reproduces a fix (on the run's own recipe)."""
    parts = [
        "python -m noodlenext.train",
        *recipe_overrides(run),
        search_path(out),
        f"+{FIX_GROUP}={fix}",
    ]
    if seed is not None:
        parts.append(f"seed={seed}")
    return " ".join(shlex.quote(p) if p != parts[0] else p for p in parts)


def _recall_cell(r: FixResult) -> str:
    moved = [(c, b, f) for c, (b, f) in r.recall.items() if abs(f - b) >= 0.005]
    return ", ".join(f"{c} {100 * b:.0f}→{100 * f:.0f}%" for c, b, f in moved) or "–"


def _p_cell(r: FixResult) -> str:
    parts = []
    if r.p is not None and r.df is not None:
        parts.append(f"**{format_p(r.p)}** (seeds and photos)")
    if r.p_bootstrap is not None:
        parts.append(f"photos only {format_p(r.p_bootstrap)}")
    if r.p_t is not None:
        parts.append(f"t {format_p(r.p_t)}")
    ps = [p for p in r.p_mcnemar if p is not None]
    if ps:
        parts.append("McNemar " + "/".join(f"{p:.2g}" for p in ps))
    return "; ".join(parts) or "–"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(
    run: RunRecord,
    out: Path,
    results: Sequence[FixResult],
    seeds: Sequence[int],
    looked: Sequence[Looked] = (),
) -> str:
    winner = best(results)
    seed_sd = next((r.seed_sd_points for r in results if r.seed_sd_points is not None), None)
    if len(results) <= 1:  # the baseline alone: nothing was proposed, nothing trained
        lines = [
            f"# Which fix helps? {run.dir}",
            "",
            "No fix was proposed, so nothing was trained. Where fixes come from:",
            "",
        ]
        lines += [f"- **{x.source}**: {x.note or 'no fix'}" for x in looked]
        return "\n".join(lines) + "\n"
    lines = [
        f"# Which fix helps? {run.dir}",
        "",
        f"Every fix retrained with seeds {', '.join(map(str, seeds))} on the same split as the baseline (the "
        "run's recipe), tested on the untouched test set. A fix helps when it is better at p < "
        f"{ALPHA}, counting the test set's noise (a paired bootstrap over its photos) and the training "
        "seed's (how much accuracy moves between seeds of one configuration, pooled over all of them)"
        + (
            f": here {seed_sd:.1f} points from seed to seed."
            if seed_sd is not None
            else "; with one seed each it cannot be measured, so p counts the test set's noise only."
        ),
        "",
    ]
    if looked:
        lines += ["## Where the fixes come from", ""]
        lines += [
            f"- **{x.source}**: {', '.join(x.fixes) or 'no fix'}" + (f" ({x.note})" if x.note else "")
            for x in looked
        ]
        lines.append("")
    lines += [
        "| fix | what | why | accuracy | vs baseline | p | per-class recall | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        acc = _pct(r.accuracy) + (f" ± {100 * r.accuracy_std:.1f}" if r.accuracy_std is not None else "")
        diff = (
            "–"
            if r.diff_points is None
            else f"{r.diff_points:+.1f} [{r.ci_points[0]:+.1f}, {r.ci_points[1]:+.1f}]"
        )
        lines.append(
            "| "
            + " | ".join(
                _cell(x)
                for x in (
                    r.fix.name,
                    r.fix.what,
                    r.fix.why,
                    acc,
                    diff,
                    _p_cell(r),
                    _recall_cell(r),
                    r.verdict.replace("_", " "),
                )
            )
            + " |"
        )
    lines += ["", "## Verdicts", ""]
    lines += [f"- **{r.fix.name}**: {verdict_text(r)}" for r in results if r.verdict != "baseline"]
    lines += ["", "## The winner", ""]
    if winner is None:
        lines.append("No fix is better than the baseline at p < 0.05: keep the recipe as it is.")
        if detectable := detectable_text(results):
            lines += ["", detectable]
    else:
        lines += [
            f"**{winner.fix.name}** ({winner.fix.what}): {verdict_text(winner)}.",
            "",
            "```bash",
            reproduce_command(run, out, winner.fix.name),
            "```",
            "",
            f"`improve.apply=best` writes it as `configs/experiment/{APPLIED}.yaml` here.",
        ]
    lines += ["", "## Photos each fix changed", ""]
    for r in results:
        if r.verdict in ("baseline", "not_run"):
            continue
        lines.append(
            f"- **{r.fix.name}**: wrong → right in most seeds: {len(r.fixed)}"
            + (
                f" ({', '.join(r.fixed[:MAX_PHOTOS])}{' …' if len(r.fixed) > MAX_PHOTOS else ''})"
                if r.fixed
                else ""
            )
            + f"; right → wrong: {len(r.broken)}"
            + (
                f" ({', '.join(r.broken[:MAX_PHOTOS])}{' …' if len(r.broken) > MAX_PHOTOS else ''})"
                if r.broken
                else ""
            )
        )
    return "\n".join(lines) + "\n"


def write_report(
    run: RunRecord,
    out: Path,
    results: Sequence[FixResult],
    seeds: Sequence[int],
    looked: Sequence[Looked] = (),
) -> dict[str, Any]:
    """improve.md and improve.json in `out`; returns the JSON."""
    winner = best(results)
    data = {
        "run": str(run.dir),
        "seeds": list(seeds),
        "looked_at": [{"source": x.source, "fixes": list(x.fixes), "note": x.note} for x in looked],
        "fixes": [r.to_dict() for r in results],
        "verdicts": {r.fix.name: verdict_text(r) for r in results},
        "best": winner.fix.name if winner else None,
        "reproduce": reproduce_command(run, out, winner.fix.name) if winner else None,
        "detectable": detectable_text(results),
    }
    write_json_atomic(out / "improve.json", data)
    write_text_atomic(out / "improve.md", markdown(run, out, results, seeds, looked))
    return data


def write_applied(run: RunRecord, out: Path, winner: FixResult) -> Path:
    """The run's recipe with the winning fix, as an experiment config in `<out>/configs/experiment/`:
    train with `hydra.searchpath=[file://<out>/configs] experiment=improved`."""
    defaults: list[Any] = list(experiment_names(run.overrides))
    for o in split_overrides(run)[0]:  # its key=value overrides are in the fix's config (write_fixes)
        key, _, value = o.partition("=")
        bare = key.lstrip("+~")
        if bare != "experiment" and is_group(bare):  # the experiments are the first defaults, in order
            defaults.append({f"override /{bare}": value})
    config = OmegaConf.load(out / CONFIGS / FIX_GROUP / f"{winner.fix.name}.yaml")
    OmegaConf.update(
        config, "data.root", str(run.root), force_add=True
    )  # absolute: the run's may be relative
    body = {"defaults": [*defaults, "_self_"], **OmegaConf.to_container(config)}
    path = out / CONFIGS / "experiment" / f"{APPLIED}.yaml"
    head = (
        "# @package _global_\n"
        f"# noodlenext.improve of {run.dir}: {winner.fix.what} ({verdict_text(winner)})\n"
        f"# python -m noodlenext.train {search_path(out)} experiment={APPLIED}\n"
    )
    write_text_atomic(path, head + OmegaConf.to_yaml(OmegaConf.create(body)))
    return path


def log_wandb(run: RunRecord, out: Path, results: Sequence[FixResult]) -> bool:
    """The fixes table as one W&B run (job type `improve`) in the run's project, when the run logged to
    W&B; returns whether it did."""
    wcfg = OmegaConf.select(run.config, "logger.wandb")
    if not wcfg:
        return False
    import wandb

    columns = ["fix", "what", "why", "accuracy", "diff_points", "ci_low", "ci_high", "p", "verdict", "text"]
    rows = [
        [
            r.fix.name,
            r.fix.what,
            r.fix.why,
            r.accuracy,
            r.diff_points,
            r.ci_points[0] if r.ci_points else None,
            r.ci_points[1] if r.ci_points else None,
            r.p,
            r.verdict,
            verdict_text(r),
        ]
        for r in results
    ]
    offline = bool(OmegaConf.select(wcfg, "offline", default=False))
    wb = wandb.init(
        project=str(OmegaConf.select(wcfg, "project", default="noodlenext")),
        name=f"improve_{run.dir.name}",
        job_type="improve",
        dir=str(out),
        mode="offline" if offline else None,
    )
    try:
        wb.log({"improve/fixes": wandb.Table(columns=columns, data=rows)})
        winner = best(results)
        wb.summary["improve/best"] = winner.fix.name if winner else "none"
    finally:
        wb.finish()
    return True


def tested_records(out: Path, results: Sequence[FixResult]) -> list[TestedFix]:
    """The results as what explanations of the run's model read (`explain.tested.TestedFix`)."""
    return [
        TestedFix(
            name=r.fix.name,
            kind=r.fix.kind,
            what=r.fix.what,
            verdict=r.verdict,
            seeds=len(r.seeds),
            baseline_accuracy=r.baseline_accuracy,
            accuracy=r.accuracy,
            diff_points=r.diff_points,
            ci_points=r.ci_points,
            p=r.p,
            recall=dict(r.recall),
            improve_dir=str(out.resolve()),
        )
        for r in results
        if r.verdict not in ("baseline", "not_run")
    ]


def write_tested(run: RunRecord, out: Path, results: Sequence[FixResult]) -> Path | None:
    """`tested_fixes.json` in a train run's folder: this improve run's results first, an earlier improve
    run's after them (one entry per improve folder; an unreadable file is replaced, as read_tested logs).
    A crossval sweep has no model to explain: None."""
    if run.kind != "train":
        return None
    path = guard_file(run.dir / TESTED_FILE, "run", TESTED_HEAD)
    mine = tested_records(out, results)
    earlier = [t for t in read_tested(run.dir) if t.improve_dir != str(out.resolve())]
    write_json_atomic(path, {"tested": [asdict(t) for t in mine + earlier]})
    return path


MISTAKES_MD = "mistakes.md"
MISTAKES_HEAD = r"# "  # how the run's mistakes.md starts (callbacks/mistake_report.py)
SECTION_START, SECTION_END = "<!-- noodlenext.improve -->", "<!-- /noodlenext.improve -->"


def tested_section(out: Path, results: Sequence[FixResult]) -> str:
    lines = [
        SECTION_START,
        "## Fixes tested by retraining",
        "",
        f"`python -m noodlenext.improve` retrained the fixes below with the same seeds as the baseline "
        f"(`{out.resolve()}/improve.md`):",
        "",
    ]
    lines += [f"- **{r.fix.what}**: {verdict_text(r)}" for r in results if r.verdict not in ("baseline",)]
    return "\n".join([*lines, SECTION_END]) + "\n"


def link_mistakes(run: RunRecord, out: Path, results: Sequence[FixResult]) -> Path | None:
    """Add (or replace) the run's mistakes.md section on the fixes this improve run tested, so the
    report's suggestions sit beside what retraining found; the rest of the file is kept as it is."""
    path = run.dir / MISTAKES_MD
    if run.kind != "train" or not path.is_file():
        return None
    guard_file(path, "run", MISTAKES_HEAD)
    text = path.read_text()
    if SECTION_START in text and SECTION_END in text:
        head, _, rest = text.partition(SECTION_START)
        _, _, tail = rest.partition(SECTION_END)
        text = head.rstrip("\n") + "\n\n" + tail.lstrip("\n")
    text = text.rstrip("\n") + "\n\n" + tested_section(out, results)
    write_text_atomic(path, text)
    return path

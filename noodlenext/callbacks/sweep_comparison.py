"""Multirun comparisons: at the end of a sweep, a Hydra callback tabulates every job of the sweep
directory (markdown, CSV, a per-class accuracy bar chart, W&B); failed jobs (error.json) are listed too.

Jobs that differ only by `seed=` (or `data.fold=`, a cross-validation) are aggregated to mean ± std;
every other swept override (model=, learning rates...) makes its own row. Then every configuration is
tested against the best one on the same test images (significance.py): McNemar's exact test per seed
on the jobs' test_predictions.csv, and with several seeds a paired t-test over the seeds; each verdict
says plainly whether the difference is significant at 0.05 or could be noise. The images one model
gets right and the other wrong are shown as thumbnails (comparison.md, W&B).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from noodlenext.callbacks.significance import REPLICATE_KEYS, PairComparison, compare_configs, format_p
from noodlenext.core.files import write_text_atomic

log = logging.getLogger(__name__)

ERROR_FILE = "error.json"
THUMBS_DIR = "disagreements"  # thumbnails of the images two configurations disagree on
THUMB_SIZE = 96
MAX_THUMBS = 8  # per direction and comparison
MAX_THUMB_COMPARISONS = 3  # thumbnails for the best's closest rivals only (an Optuna sweep has many)
_THUMB_NAME = re.compile(r"^\d+_[ab]_\d+\.png$")  # <comparison>_<side>_<index>.png: ours to replace
# metrics.json key -> comparison column (per-class accuracies are added per class).
NUMBERS = {
    "test/acc": "test_acc",
    "test/f1": "macro_f1",
    "val/acc_best": "val_acc_best",  # what hparams_search=optuna maximises
    "best_epoch": "best_epoch",
    "train/time_s": "train_time_s",
    "train/images_per_s": "images_per_s",
}


@dataclass
class Job:
    """One job directory of a sweep: its swept overrides and its metrics.json, or why it has none."""

    name: str
    overrides: list[str]
    model: str
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def read_job(job_dir: Path) -> Job:
    overrides = [str(o) for o in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]
    try:  # a job that failed before testing has no metrics.json to name its model
        model = str(OmegaConf.load(job_dir / ".hydra" / "config.yaml").model.name)
    except Exception:
        model = "?"
    job = Job(job_dir.name, overrides, model)
    if (job_dir / "metrics.json").is_file():
        job.metrics = json.loads((job_dir / "metrics.json").read_text())
        job.model = job.metrics.get("model", model)
    elif (job_dir / ERROR_FILE).is_file():
        job.error = json.loads((job_dir / ERROR_FILE).read_text())["error"]
    else:
        job.error = "no metrics.json: the job crashed, was killed, or did not test"
    return job


def read_jobs(sweep_dir: Path) -> list[Job]:
    """Every job directory (one holding .hydra/overrides.yaml), in job-number order."""
    dirs = [d for d in sweep_dir.iterdir() if (d / ".hydra" / "overrides.yaml").is_file()]
    dirs.sort(key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name))
    return [read_job(d) for d in dirs]


def _job_numbers(job: Job, classes: Sequence[str]) -> dict[str, float | None]:
    m = job.metrics
    numbers = {column: m.get(key) for key, column in NUMBERS.items()}
    numbers.update({f"acc_{c}": m.get("test/acc_per_class", {}).get(c) for c in classes})
    return numbers


def _swept(jobs: Sequence[Job]) -> list[str]:
    """Override keys whose values differ between jobs: what the sweep compares."""
    values: dict[str, list[str]] = {}
    for job in jobs:
        for o in job.overrides:
            key, _, value = o.partition("=")
            values.setdefault(key, []).append(value)
    return [k for k, v in values.items() if len(set(v)) > 1 or len(v) < len(jobs)]  # or missing in some


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def job_configs(jobs: Sequence[Job]) -> list[str]:
    """Each job's configuration: its swept overrides but the replicate ones (seed, data.fold)."""
    swept = [k for k in _swept(jobs) if k not in REPLICATE_KEYS]
    return [" ".join(o for o in job.overrides if o.partition("=")[0] in swept) for job in jobs]


def comparison_rows(jobs: Sequence[Job]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(one row per configuration, seeds aggregated to mean/std; one row per job; class names)."""
    classes = list(dict.fromkeys(c for j in jobs for c in j.metrics.get("test/acc_per_class", {})))
    runs, groups = [], {}
    for job, config in zip(jobs, job_configs(jobs), strict=True):
        seed = next((o.partition("=")[2] for o in job.overrides if o.startswith("seed=")), "")
        fold = next((o.partition("=")[2] for o in job.overrides if o.startswith("data.fold=")), "")
        runs.append(
            {
                "job": job.name,
                "model": job.model,
                "config": config,
                "seed": seed,
                "fold": fold,
                "status": "ok" if job.ok else "failed",
                "params": job.metrics.get("params"),
                "pretrained": job.metrics.get("pretrained"),
                **_job_numbers(job, classes),
                "error": job.error or "",
            }
        )
        groups.setdefault(config, []).append(job)
    summary = []
    for config, members in groups.items():
        ok = [j for j in members if j.ok]
        row: dict[str, Any] = {
            "model": (ok or members)[0].model,
            "config": config,
            "runs": len(members),
            "ok": len(ok),
            "params": ok[0].metrics.get("params") if ok else None,
            "pretrained": ok[0].metrics.get("pretrained") if ok else None,
        }
        for column in [*NUMBERS.values(), *(f"acc_{c}" for c in classes)]:
            values = [v for j in ok if (v := _job_numbers(j, classes)[column]) is not None]
            row[column], row[f"{column}_std"] = _mean_std(values)
        row["status"] = "ok" if len(ok) == len(members) else "failed" if not ok else "partly failed"
        row["error"] = "; ".join(f"job {j.name}: {j.error}" for j in members if not j.ok)
        summary.append(row)
    return summary, runs, classes


def _fmt(value: Any, std: float | None = None, pct: bool = False, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    scale, suffix = (100, "%") if pct else (1, "")
    text = f"{scale * value:,.{2 if pct else digits}f}"
    if std is not None:  # None: a single run
        text += f" ± {scale * std:,.{2 if pct else digits}f}"
    return text + suffix


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(
    summary: Sequence[dict[str, Any]],
    runs: Sequence[dict[str, Any]],
    classes: list[str],
    comparisons: Sequence[PairComparison] = (),
    disagreements: Sequence[dict[str, Any]] = (),
) -> str:
    """The comparison as markdown: the per-configuration table (mean ± std over seeds), whether the
    differences are real (significance_markdown), then every job."""
    head = ["model", "config", "runs ok", "params", "pretrained", "test acc"]
    head += [f"acc {c}" for c in classes] + ["macro F1", "val acc (best)", "best epoch", "train time (s)"]
    head += ["images/s", "status"]
    lines = ["| " + " | ".join(head + ["error"]) + " |", "|" + "---|" * (len(head) + 1)]
    for r in summary:
        cells = [
            r["model"],
            r["config"] or "–",
            f"{r['ok']}/{r['runs']}",
            _fmt(r["params"], digits=0),
            _fmt(r["pretrained"]),
            _fmt(r["test_acc"], r["test_acc_std"], pct=True),
            *(_fmt(r[f"acc_{c}"], r[f"acc_{c}_std"], pct=True) for c in classes),
            _fmt(r["macro_f1"], r["macro_f1_std"], digits=3),
            _fmt(r["val_acc_best"], r["val_acc_best_std"], pct=True),
            _fmt(r["best_epoch"], r["best_epoch_std"]),
            _fmt(r["train_time_s"], r["train_time_s_std"]),
            _fmt(r["images_per_s"], r["images_per_s_std"]),
            r["status"],
            r["error"],
        ]
        lines.append("| " + " | ".join(_md_cell(str(c)) for c in cells) + " |")
    if comparisons:
        lines += ["", *significance_markdown(comparisons, disagreements)]
    lines += ["", "## Jobs", ""]
    folds = any(r.get("fold") for r in runs)  # a cross-validation: which fold each job held out
    head = ["job", "model", "config", "seed", *(["fold"] if folds else []), "status", "test acc"]
    head += ["macro F1", "error"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        cells = [r["job"], r["model"], r["config"] or "–", r["seed"] or "–"]
        cells += [r["fold"] or "–"] * folds + [r["status"]]
        cells += [_fmt(r["test_acc"], pct=True), _fmt(r["macro_f1"], digits=3), r["error"]]
        lines.append("| " + " | ".join(_md_cell(str(c)) for c in cells) + " |")
    return "# Sweep comparison\n\n" + "\n".join(lines) + "\n"


def config_name(row: dict[str, Any]) -> str:
    """How a verdict names a configuration: `vit_tiny` for model=vit_tiny, the short overrides else."""
    if not row["config"]:
        return str(row["model"])
    return " ".join(part.removeprefix("model=") for part in _short(row["config"]).split())


def significance(
    jobs: Sequence[Job], summary: Sequence[dict[str, Any]], sweep_dir: Path
) -> list[PairComparison]:
    """Every configuration with a test accuracy against the best one (by mean test accuracy), the
    closest rival first."""
    ok_jobs: dict[str, list[Job]] = {}
    for job, config in zip(jobs, job_configs(jobs), strict=True):
        if job.ok:
            ok_jobs.setdefault(config, []).append(job)
    rows = [r for r in summary if r["ok"] and r["test_acc"] is not None]
    if len(rows) < 2:
        return []
    rows.sort(key=lambda r: -r["test_acc"])  # stable: ties keep the sweep's order
    best = rows[0]
    return [
        compare_configs(
            config_name(best), ok_jobs[best["config"]], config_name(r), ok_jobs[r["config"]], sweep_dir
        )
        for r in rows
        if r is not best
    ]


def save_disagreements(sweep_dir: Path, comparisons: Sequence[PairComparison]) -> list[dict[str, Any]]:
    """Thumbnails (sweep_dir/disagreements/) of up to MAX_THUMBS images each way that A gets right and B
    wrong, from the first seed with per-image predictions, for the first MAX_THUMB_COMPARISONS
    comparisons; one dict per image."""
    from PIL import Image

    from noodlenext.callbacks.significance import read_predictions

    out_dir = sweep_dir / THUMBS_DIR
    for old in out_dir.glob("*_*_*.png") if out_dir.is_dir() else []:
        if _THUMB_NAME.match(old.name):
            old.unlink()  # ours (named as below): a rerun must not show the last run's images
    shown = []
    for k, comparison in enumerate(comparisons[:MAX_THUMB_COMPARISONS]):
        pair = next((p for p in comparison.pairs if p.images is not None), None)
        if pair is None:
            continue
        pred_a, pred_b = read_predictions(sweep_dir / pair.job_a), read_predictions(sweep_dir / pair.job_b)
        for side, files in (("a", pair.only_a), ("b", pair.only_b)):
            for i, file in enumerate(files[:MAX_THUMBS]):
                thumb = out_dir / f"{k}_{side}_{i}.png"
                try:
                    with Image.open(pred_a.paths[file]) as im:
                        im = im.convert("RGB")
                        im.thumbnail((THUMB_SIZE, THUMB_SIZE))
                        out_dir.mkdir(parents=True, exist_ok=True)
                        im.save(thumb)
                except OSError as e:  # moved or unreadable since the test: listed without a picture
                    log.warning("no thumbnail for %s: %s", pred_a.paths[file], e)
                    thumb = None
                shown.append(
                    {
                        "comparison": k,
                        "right": comparison.name_a if side == "a" else comparison.name_b,
                        "wrong": comparison.name_b if side == "a" else comparison.name_a,
                        "replicate": pair.replicate,
                        "file": file,
                        "path": pred_a.paths[file],
                        "label": pred_a.labels[file],
                        "pred_a": pred_a.preds[file],
                        "pred_b": pred_b.preds[file],
                        "thumbnail": thumb,
                        "total": len(files),
                    }
                )
    return shown


def significance_markdown(
    comparisons: Sequence[PairComparison], disagreements: Sequence[dict[str, Any]]
) -> list[str]:
    """`## Is the difference real?`: the verdicts, the per-seed paired counts, the disagreeing images."""
    lines = [
        "## Is the difference real?",
        "",
        "Each configuration against the best one (by mean test accuracy), on the images both tested. "
        "Per seed: McNemar's exact test on the images exactly one of them gets right; with several seeds "
        "the verdict is a paired t-test over the seeds' accuracies.",
    ]
    if len(comparisons) > 1:
        lines[-1] += (
            f" {len(comparisons)} comparisons: the p-values are not corrected for multiple comparisons "
            "(at 0.05, about one in 20 comparisons of equal configurations looks significant)."
        )
    for k, c in enumerate(comparisons):
        lines += ["", f"**{_md_cell(c.text)}**", ""]
        lines += [f"- {_md_cell(n)}" for n in c.notes]
        if c.pairs:
            lines += [
                "",
                f"| seed | jobs | acc {_md_cell(c.name_a)} | acc {_md_cell(c.name_b)} | test images | "
                f"only {_md_cell(c.name_a)} right | only {_md_cell(c.name_b)} right | McNemar p |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for p in c.pairs:
                exact = "–" if p.p_mcnemar is None else format_p(p.p_mcnemar).removeprefix("p = ")
                counts = ["–", "–"] if p.images is None else [str(len(p.only_a)), str(len(p.only_b))]
                cells = [
                    p.replicate,
                    f"{p.job_a}, {p.job_b}",
                    _fmt(p.acc_a, pct=True),
                    _fmt(p.acc_b, pct=True),
                ]
                cells += ["–" if p.images is None else str(p.images), *counts, exact]
                lines.append("| " + " | ".join(_md_cell(x) for x in cells) + " |")
        for right_side in (c.name_a, c.name_b):
            shown = [d for d in disagreements if d["comparison"] == k and d["right"] == right_side]
            if not shown:
                continue
            wrong = shown[0]["wrong"]
            lines += [
                "",
                f"{right_side} right, {wrong} wrong ({shown[0]['replicate']}; {len(shown)} of "
                f"{shown[0]['total']} shown):",
                "",
                f"| image | file | true | {_md_cell(c.name_a)} says | {_md_cell(c.name_b)} says |",
                "|---|---|---|---|---|",
            ]
            for d in shown:
                thumb = "–" if d["thumbnail"] is None else f"![]({THUMBS_DIR}/{d['thumbnail'].name})"
                cells = [thumb, d["file"], d["label"], d["pred_a"], d["pred_b"]]
                lines.append("| " + " | ".join(_md_cell(x) for x in cells) + " |")
    return lines


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _short(config: str) -> str:
    """`model.optim.head_lr=0.000735068 model=vit_tiny` -> `head_lr=0.000735 model=vit_tiny`, for legends."""
    parts = []
    for override in config.split():
        key, _, value = override.partition("=")
        try:
            value = f"{float(value):.3g}"
        except ValueError:
            pass
        parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return " ".join(parts)


def save_per_class_png(summary: Sequence[dict[str, Any]], classes: list[str], path: Path) -> None:
    """Grouped bars: per-class test accuracy of each configuration (error bars: std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary if r["ok"]]
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(classes) * max(len(rows), 1) ** 0.5 + 3), 4.5))
    for i, r in enumerate(rows):
        xs = [k + (i - (len(rows) - 1) / 2) * width for k in range(len(classes))]
        means = [100 * (r[f"acc_{c}"] or 0) for c in classes]
        stds = [100 * (r[f"acc_{c}_std"] or 0) for c in classes]
        label = r["model"] + (f" ({_short(r['config'])})" if r["config"] else "")
        ax.bar(xs, means, width, yerr=stds if any(stds) else None, capsize=3, label=label)
    ax.set(xticks=range(len(classes)), xticklabels=classes, ylabel="test accuracy (%)", ylim=(0, 105))
    ax.set_title("Per-class test accuracy")
    if rows:  # below the axes: labels of an Optuna sweep are long
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def write_comparison(sweep_dir: Path) -> dict[str, Any] | None:
    """comparison.md, comparison.csv (per configuration), runs.csv (per job), significance.csv (each
    configuration against the best), comparison.png and disagreements/*.png."""
    jobs = read_jobs(sweep_dir)
    if not jobs:
        log.warning("no job directories in %s: no comparison written", sweep_dir)
        return None
    summary, runs, classes = comparison_rows(jobs)
    comparisons = significance(jobs, summary, sweep_dir)
    disagreements = save_disagreements(sweep_dir, comparisons)
    md = markdown_table(summary, runs, classes, comparisons, disagreements)
    write_text_atomic(sweep_dir / "comparison.md", md)
    write_text_atomic(sweep_dir / "comparison.csv", csv_text(summary))
    write_text_atomic(sweep_dir / "runs.csv", csv_text(runs))
    if comparisons:
        write_text_atomic(sweep_dir / "significance.csv", csv_text([c.row() for c in comparisons]))
    save_per_class_png(summary, classes, sweep_dir / "comparison.png")
    for c in comparisons:
        log.info("%s", c.text)
    log.info("sweep comparison: %s", sweep_dir / "comparison.md")
    return {
        "summary": summary,
        "runs": runs,
        "classes": classes,
        "comparisons": comparisons,
        "disagreements": disagreements,
    }


def log_comparison_to_wandb(config: DictConfig, sweep_dir: Path, comparison: dict[str, Any]) -> None:
    """One extra W&B run, in the jobs' group, holding the tables and the chart."""
    wcfg = OmegaConf.select(config, "logger.wandb")
    if not wcfg:
        return
    import wandb

    run = wandb.init(
        project=wcfg.project,
        group=wcfg.group,
        name=f"{wcfg.name}_comparison",
        job_type="comparison",
        tags=list(wcfg.tags or []),
        dir=str(sweep_dir),
        # As WandbLogger: not forcing "online" lets WANDB_MODE decide (Lightning sets it to "dryrun").
        mode="offline" if wcfg.offline else None,
    )
    try:
        tables = {
            f"comparison/{key}": wandb.Table(
                columns=list(rows[0]), data=[[_wandb_value(v) for v in r.values()] for r in rows]
            )
            for key, rows in (("summary", comparison["summary"]), ("runs", comparison["runs"]))
        }
        if comparison.get("comparisons"):
            rows = [c.row() for c in comparison["comparisons"]]
            tables["comparison/significance"] = wandb.Table(
                columns=list(rows[0]), data=[[_wandb_value(v) for v in r.values()] for r in rows]
            )
        if comparison.get("disagreements"):
            columns = ["image", "right", "wrong", "seed", "file", "label", "pred_a", "pred_b"]
            data = [
                [
                    wandb.Image(str(d["thumbnail"])) if d["thumbnail"] else None,
                    *(d[k] for k in ("right", "wrong", "replicate", "file", "label", "pred_a", "pred_b")),
                ]
                for d in comparison["disagreements"]
            ]
            tables["comparison/disagreements"] = wandb.Table(columns=columns, data=data)
        run.log({**tables, "comparison/per_class_accuracy": wandb.Image(str(sweep_dir / "comparison.png"))})
    finally:
        run.finish()


def _wandb_value(value: Any) -> Any:
    return "" if value is None else value


class SweepComparison(Callback):
    """Hydra callback (hydra.callbacks): write the comparison when a multirun ends."""

    def __init__(self, wandb: bool = True) -> None:
        self.wandb = wandb

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        comparison = write_comparison(sweep_dir)
        if comparison and self.wandb:
            try:
                log_comparison_to_wandb(config, sweep_dir, comparison)
            except Exception:  # the files are written; a W&B hiccup must not fail a finished sweep
                log.exception("could not log the sweep comparison to W&B")

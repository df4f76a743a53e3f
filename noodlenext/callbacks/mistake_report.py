"""The mistakes report: mistakes.md (per group its heading, numbered evidence lines, the gated paragraph
with whose words it is, errors and thumbnails), its HTML for W&B, and the W&B table `test/mistakes`."""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from noodlenext.callbacks.mistake_groups import MistakeGroup, plural
from noodlenext.explain.wording import line, method_name


def _link(path: str | None, start: Path) -> str:
    if path is None:
        return ""
    try:
        return Path(os.path.relpath(path, start)).as_posix()
    except ValueError:  # another drive (Windows)
        return Path(path).as_posix()


def _error_text(error: Mapping[str, str]) -> str:
    return f"{error['step']} failed: {error['message']}"


def report_markdown(
    groups: Sequence[MistakeGroup],
    run_dir: Path,
    n_samples: int,
    n_mistakes: int,
    n_pairs: int,
    llm_name: str | None,
    method: str,
    errors: Sequence[Mapping[str, str]] = (),
) -> str:
    """mistakes.md: a summary line, then per group its heading, evidence lines, paragraph (with whose
    words it is and what the gate said), errors and thumbnails linked to the photos (paths relative to
    `run_dir`)."""
    out = ["# What the mistakes have in common", ""]
    out.append(report_head(n_samples, n_mistakes, n_pairs, len(groups), llm_name, method))
    for error in errors:
        out += ["", f"> **Error** — {_error_text(error)}"]
    if not groups and not errors:
        out += ["", "No test photo is misclassified."]
    for group in groups:
        out += ["", f"## {group.title}"]
        k, n = len(group.examined), group.count
        if group.evidence is not None:
            of = f"{k} of the {n} photos, those with the largest loss"
            if k == n:
                of = "the photo" if n == 1 else "both photos" if n == 2 else f"all {n} photos"
            out += ["", f"Evidence of {of}:", "", *group.evidence.lines()]
        if group.paragraph is not None:
            out += ["", *group.paragraph.for_reader().split("\n")]
        for error in group.errors + [p.error for p in group.photos if p.error is not None]:
            out += ["", f"> **Error** — {_error_text(error)}"]
        thumbs = []
        for photo in group.photos:
            name = Path(photo.file).name if photo.file else f"sample {photo.sample.index}"
            if photo.thumbnail:
                thumbs.append(f"[![{name}]({_link(photo.thumbnail, run_dir)})]({_link(photo.file, run_dir)})")
            elif photo.file:
                thumbs.append(f"[{name}]({_link(photo.file, run_dir)})")
        if group.mean_map:
            thumbs.insert(0, f"![mean map]({_link(group.mean_map, run_dir)})")
        if thumbs:
            out += ["", " ".join(thumbs)]
    return "\n".join(out) + "\n"


def report_head(
    n_samples: int, n_mistakes: int, n_pairs: int, shown: int, llm_name: str | None, method: str
) -> str:
    """The report's summary line."""
    which = f"the {shown} largest below" if shown < n_pairs else "each below"
    return (
        f"{n_mistakes} of {n_samples} test photos are misclassified, in {plural(n_pairs, 'confusion pair')} "
        f"(true → predicted); {which}, from the evidence of its mistakes with the largest loss "
        f"({method_name(method)} maps). Paragraphs: llm={llm_name or 'none'}, checked by the grounding gate."
    )


def report_html(groups: Sequence[MistakeGroup], head: str) -> str:
    """The report's text as a small HTML page (for wandb.Html): headings, evidence lines, paragraphs."""
    e = html.escape
    parts = [f"<h2>What the mistakes have in common</h2><p>{e(head)}</p>"]
    for group in groups:
        parts.append(f"<h3>{e(group.title)}</h3>")
        if group.evidence is not None:
            items = "".join(f"<li>{e(line(claim))}</li>" for claim in group.evidence.claims())
            parts.append(f"<ol>{items}</ol>")
        if group.paragraph is not None:
            text, _, mark = group.paragraph.for_reader().partition("\n\n")
            parts.append(f"<p>{e(text)}</p><p><i>{e(mark)}</i></p>")
        for error in group.errors + [p.error for p in group.photos if p.error is not None]:
            parts.append(f"<p><b>Error</b>: {e(_error_text(error))}</p>")
    return "\n".join(parts)


def log_wandb(
    logger: WandbLogger,
    groups: Sequence[MistakeGroup],
    key: str,
    head: str,
    errors: Sequence[Mapping[str, str]] = (),
) -> None:
    """The W&B table `<key>` (one row per group: pair, counts, mean confidence, shared hot regions,
    thumbnails, mean map, evidence, paragraph, whose words, the gate, errors) and the page `<key>_report`."""
    import wandb

    columns = [
        "pair",
        "true",
        "predicted",
        "count",
        "examined",
        "mean_confidence",
        "hot_regions",
        "examples",
        "mean_map",
        "evidence",
        "paragraph",
        "source",
        "grounding",
        "error",
    ]
    table = wandb.Table(columns=columns)
    for group in groups:
        thumbs = [Image.open(p.thumbnail) for p in group.examined if p.thumbnail]
        sheet = None
        if thumbs:
            sheet = Image.new("RGB", (sum(t.width for t in thumbs), max(t.height for t in thumbs)))
            x = 0
            for t in thumbs:
                sheet.paste(t, (x, 0))
                x += t.width
        result = group.paragraph
        gate = (
            "; ".join(
                f"draft {i + 1}: {'passed' if v.passed else 'rejected: ' + '; '.join(v.reasons)}"
                for i, v in enumerate(result.verdicts)
            )
            if result is not None
            else ""
        )
        errs = group.errors + [p.error for p in group.photos if p.error is not None]
        table.add_data(
            f"{group.true} → {group.predicted}",
            group.true,
            group.predicted,
            group.count,
            len(group.examined),
            group.evidence.confidence if group.evidence is not None else None,
            ", ".join(group.shared_regions),
            wandb.Image(sheet) if sheet is not None else None,
            wandb.Image(group.mean_map) if group.mean_map else None,
            "\n".join(group.evidence.lines()) if group.evidence is not None else "",
            result.text if result is not None else None,
            result.source if result is not None else "none",
            gate or "no model draft",
            "; ".join(_error_text(x) for x in [*errors, *errs]),
        )
    if not groups and errors:
        table.add_data(*[None] * 13, "; ".join(_error_text(x) for x in errors))
    logger.experiment.log({key: table, f"{key}_report": wandb.Html(report_html(groups, head))})

"""Data doctor: `python -m noodlenext.data.check root=<dataset> [fix=list|quarantine|undo]`.

Checks an ImageFolder tree (train/, val/, test/ of <class>/ folders, or test/unknown/) before a run
wastes hours on it. Prints a table per split and class and writes a JSON report listing every finding
with the files it names (the kinds and their severities: rules.py), then applies `fix=`:

    fix=list        write the readable images minus the offending ones; train with data.file_list=<path>
    fix=quarantine  move the offending files to <dataset's parent>/quarantine/<dataset name>/ (moves.jsonl)
    fix=undo        move quarantined files back

Fixes never delete anything (fixes.py); `fix_kinds` says which findings' files are offending, and
`files=<list>` adds the files of a list (e.g. label_issues.txt from noodlenext.data.label_issues; with
`fix_kinds=[]` only those). With
`fail_on=error|warning|info` it exits 1 when a finding is at least that severe. The settings are in
conf/check.yaml.

This module is only the command line: it composes the config, calls the library (scan.py reads the
tree, fingerprints.py hashes it, rules.py finds the problems, report.py prints them, fixes.py fixes
them), writes the report and sets the exit code. Library code imports those modules, never this one.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from noodlenext.core.config import CONFIG_DIR
from noodlenext.core.files import write_text_atomic
from noodlenext.core.ownership import guard_file
from noodlenext.data.fixes import (
    FILE_LIST_HEAD,
    default_quarantine_dir,
    quarantine,
    read_listed,
    undo_quarantine,
    write_file_list,
)
from noodlenext.data.report import print_report
from noodlenext.data.rules import REPORT_HEAD, SEVERITIES, CheckReport, check_dataset

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> CheckReport | None:
    """What `python -m noodlenext.data.check` does with a composed config (see conf/check.yaml); the
    report, or None for fix=undo (which checks nothing)."""
    if cfg.fix not in (None, "list", "quarantine", "undo"):
        raise ValueError(
            f"fix={cfg.fix!r} is not known; use fix=list, fix=quarantine or fix=undo (or leave it out)"
        )
    if cfg.fail_on not in (None, *SEVERITIES):
        raise ValueError(f"fail_on={cfg.fail_on!r} is not known; use null, error, warning or info")
    root = Path(str(cfg.root)).expanduser().resolve()
    qdir = (
        Path(cfg.quarantine_dir).expanduser().resolve()
        if cfg.get("quarantine_dir")
        else default_quarantine_dir(root)
    )
    if cfg.fix == "undo":
        undone, problems = undo_quarantine(qdir, root)
        print(f"moved {len(undone)} file(s) back from {qdir} into {root}")
        for p in problems:
            log.warning(p)
        return None
    out = Path(cfg.report) if cfg.get("report") else Path(cfg.paths.output_dir) / "data_check.json"
    guard_file(out, "report", REPORT_HEAD)  # before the work: a user's own file is never replaced
    list_target = Path(cfg.get("file_list") or Path(cfg.paths.output_dir) / "clean_files.txt")
    if cfg.fix == "list":
        guard_file(list_target, "file_list", FILE_LIST_HEAD)
    report = check_dataset(
        root,
        image_size=cfg.image_size,
        near_threshold=cfg.near_threshold,
        near_similarity=cfg.near_similarity,
        imbalance_ratio=cfg.imbalance_ratio,
        max_aspect=cfg.max_aspect,
        workers=cfg.workers,
        progress=cfg.progress,
    )
    print_report(report)
    write_text_atomic(out, json.dumps(report.to_dict(), indent=2))
    print(f"report: {out}  ({len(report.files)} files in {report.seconds:.1f}s)")
    kinds = list(cfg.fix_kinds)
    listed = read_listed(cfg.files, root) if cfg.get("files") else []
    if listed and cfg.fix not in ("list", "quarantine"):
        log.warning("files=%s only acts with fix=list or fix=quarantine", cfg.files)
    unknown = sorted(set(listed) - {f.rel for f in report.files})
    if unknown:
        log.warning(
            "%d file(s) of files=%s are not in %s, e.g. %s", len(unknown), cfg.files, root, unknown[0]
        )
    if cfg.fix == "list":
        path, left_out = write_file_list(report, list_target, kinds, listed)
        print(f"file list: {path} ({left_out} image(s) left out); train on it with data.file_list={path}")
    elif cfg.fix == "quarantine":
        moves = quarantine(report, qdir, kinds, listed)
        print(f"moved {len(moves)} file(s) to {qdir} (log: {qdir / 'moves.jsonl'}); undo with fix=undo")
    return report


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="check")
def main(cfg: DictConfig) -> None:
    """Check, print, write the report, apply fix=; exit 1 when a finding is as severe as fail_on."""
    report = run(cfg)
    worst = report.worst() if report else None
    if cfg.fail_on and worst and SEVERITIES.index(worst) <= SEVERITIES.index(cfg.fail_on):
        sys.exit(1)


if __name__ == "__main__":
    main()

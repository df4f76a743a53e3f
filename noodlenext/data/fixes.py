"""The data doctor's fixes: a clean file list, or the offending files moved aside (and back). Never a delete.

Which files are "offending" is set by the fixable kinds (FIX_KINDS, or a subset): all files of
unreadable, non_image and label_conflict findings, the train/val side of a leakage, and all but the first
file (sorted by path) of a duplicate group; each finding's `remove` names them. `write_file_list` writes
the readable images minus those, for the data module's `data.file_list=<path>`. `quarantine` moves them
into `<dataset's parent>/quarantine/<dataset name>/` (same relative paths), appending every move to
`moves.jsonl` there; `undo_quarantine` moves them back.
"""

from __future__ import annotations

import datetime
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from noodlenext.core.files import write_text_atomic
from noodlenext.data.rules import CheckReport

FIX_KINDS = ("unreadable", "non_image", "label_conflict", "leakage", "exact_duplicate", "near_duplicate")


def offending(report: CheckReport, kinds: Iterable[str] = FIX_KINDS) -> dict[str, str]:
    """rel path -> the finding kind that takes it out, over the findings of `kinds`."""
    kinds = list(kinds)
    unknown = set(kinds) - set(FIX_KINDS)
    if unknown:
        raise ValueError(f"fix_kinds={sorted(unknown)} are not fixable kinds; choose from {list(FIX_KINDS)}")
    out: dict[str, str] = {}
    for f in report.findings:
        if f.kind in kinds:
            for rel in f.remove:
                out.setdefault(rel, f.kind)
    return out


def write_file_list(
    report: CheckReport, path: str | Path, kinds: Iterable[str] = FIX_KINDS
) -> tuple[Path, int]:
    """Write the readable images minus the offending ones, one root-relative path a line; returns
    (path, number of images left out). The data module reads it with data.file_list=<path>."""
    bad = offending(report, kinds)
    keep = [f.rel for f in report.files if f.readable and f.rel not in bad]
    left_out = sum(1 for f in report.files if f.is_image) - len(keep)
    path = Path(path).expanduser().resolve()
    header = [
        f"# noodlenext data check of {report.root}",
        f"# {len(keep)} image(s) kept, {left_out} left out ({', '.join(sorted(set(kinds)))} and unreadable)",
        "# paths are relative to the dataset root; use: data.file_list=" + str(path),
    ]
    write_text_atomic(path, "\n".join(header + keep) + "\n")
    return path, left_out


def default_quarantine_dir(root: str | Path) -> Path:
    """<dataset's parent>/quarantine/<dataset name>: beside the dataset, never inside it."""
    root = Path(root).expanduser().resolve()
    return root.parent / "quarantine" / root.name


def quarantine(
    report: CheckReport, qdir: str | Path | None = None, kinds: Iterable[str] = FIX_KINDS
) -> list[dict[str, str]]:
    """Move the offending files to qdir (same relative paths), appending each move to qdir/moves.jsonl
    before the next one; never overwrites (a taken name gets a .1, .2 ... suffix). Returns the moves."""
    qdir = Path(qdir).expanduser().resolve() if qdir else default_quarantine_dir(report.root)
    bad = offending(report, kinds)
    moves = []
    qdir.mkdir(parents=True, exist_ok=True)
    with open(qdir / "moves.jsonl", "a") as logfile:
        for rel, kind in sorted(bad.items()):
            src = report.root / rel
            if not src.exists():
                continue
            dst = _free_name(qdir / rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(src, dst)
            move = {"op": "move", "from": str(src), "to": str(dst), "reason": kind, "at": _now()}
            logfile.write(json.dumps(move) + "\n")
            logfile.flush()  # logged before the next move: a crash mid-way leaves an undoable log
            moves.append(move)
    return moves


def undo_quarantine(qdir: str | Path) -> tuple[list[dict[str, str]], list[str]]:
    """Move quarantined files back, newest move first; returns (undone moves, problems). A file whose
    original place is taken again stays in quarantine and is named in the problems."""
    qdir = Path(qdir).expanduser().resolve()
    logpath = qdir / "moves.jsonl"
    if not logpath.is_file():
        raise FileNotFoundError(f"{logpath} does not exist: nothing was quarantined there")
    entries = [json.loads(line) for line in logpath.read_text().splitlines() if line.strip()]
    undone, problems = [], []
    with open(logpath, "a") as logfile:
        for move in reversed([e for e in entries if e["op"] == "move"]):
            src, dst = Path(move["to"]), Path(move["from"])
            if not src.exists():
                continue  # undone before, or moved by hand
            if dst.exists():
                problems.append(f"{dst} exists again; {src} stays in quarantine")
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(src, dst)
            entry = {"op": "undo", "from": str(src), "to": str(dst), "at": _now()}
            logfile.write(json.dumps(entry) + "\n")
            logfile.flush()
            undone.append(entry)
    return undone, problems


def _free_name(path: Path) -> Path:
    """path, or path with a .1, .2 ... before its suffix: the first name not taken."""
    n = 0
    candidate = path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
    return candidate


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

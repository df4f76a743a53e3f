"""The data doctor's fixes: a clean file list, or the offending files moved aside (and back). Never a delete.

Which files are "offending" is set by the fixable kinds (FIX_KINDS, or a subset): all files of
unreadable, non_image and label_conflict findings, the train/val side of a leakage, and all but the first
file (sorted by path) of a duplicate group; each finding's `remove` names them. `write_file_list` writes
the readable images minus those, for the data module's `data.file_list=<path>`. `quarantine` moves them
into `<dataset's parent>/quarantine/<dataset name>/` (same relative paths), logging every move to
`moves.jsonl` there; `undo_quarantine` moves them back.

moves.jsonl is append-only, one JSON record a line, each fsynced before the next step: `move` (the intent:
id, `from` relative to the dataset root, `to` relative to the quarantine folder, reason, the root it was
then) before the file moves, `moved` (done) after it; `undo` and `undone` likewise for the way back.
Relative paths: a dataset moved (with its quarantine folder, or given as root=) is undone where it is now.
A kill between the steps leaves the file at its source or in quarantine, never lost; undo puts it back
from wherever it is.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from noodlenext.core.files import atomic_write, fsync_dir, write_text_atomic
from noodlenext.core.ownership import guard_file
from noodlenext.data.rules import CheckReport

log = logging.getLogger(__name__)

LOG_NAME = "moves.jsonl"
# How the files noodlenext writes start: the only existing files at those paths it may replace or append to.
FILE_LIST_HEAD = r"# (?:noodlenext data check of |the images of .* without the \d+ likely label issue)"
MOVES_HEAD = r'(?:\{"op": "|\Z)'  # a move log (or one created and cut short before its first record)
FIX_KINDS = ("unreadable", "non_image", "label_conflict", "leakage", "exact_duplicate", "near_duplicate")


def offending(
    report: CheckReport, kinds: Iterable[str] = FIX_KINDS, listed: Iterable[str] = ()
) -> dict[str, str]:
    """rel path -> the finding kind that takes it out, over the findings of `kinds`; `listed` paths (the
    check's files=<list>, e.g. label_issues.txt) are offending too, as kind `listed`."""
    kinds = list(kinds)
    unknown = set(kinds) - set(FIX_KINDS)
    if unknown:
        raise ValueError(f"fix_kinds={sorted(unknown)} are not fixable kinds; choose from {list(FIX_KINDS)}")
    out: dict[str, str] = {}
    for f in report.findings:
        if f.kind in kinds:
            for rel in f.remove:
                out.setdefault(rel, f.kind)
    for rel in listed:
        out.setdefault(rel, "listed")
    return out


def read_listed(path: str | Path, root: str | Path) -> list[str]:
    """A list of files (one a line, relative to root or absolute under it; `#` starts a comment) as
    root-relative posix paths: the check's files=<list>."""
    path, root = Path(path).expanduser(), Path(root).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"files={path} does not exist: give a list of files, one a line")
    out = []
    for line in (raw.strip() for raw in path.read_text().splitlines()):
        if line and not line.startswith("#"):
            try:
                out.append((root / line).resolve().relative_to(root).as_posix())
            except ValueError:
                raise ValueError(f"files={path}: {line} is not inside the dataset {root}") from None
    return out


def write_file_list(
    report: CheckReport, path: str | Path, kinds: Iterable[str] = FIX_KINDS, listed: Iterable[str] = ()
) -> tuple[Path, int]:
    """Write the readable images minus the offending ones, one root-relative path a line; returns
    (path, number of images left out). The data module reads it with data.file_list=<path>."""
    bad = offending(report, kinds, listed)
    keep = [f.rel for f in report.files if f.readable and f.rel not in bad]
    left_out = sum(1 for f in report.files if f.is_image) - len(keep)
    path = guard_file(Path(path).expanduser().resolve(), "file_list", FILE_LIST_HEAD)
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
    report: CheckReport,
    qdir: str | Path | None = None,
    kinds: Iterable[str] = FIX_KINDS,
    listed: Iterable[str] = (),
) -> list[dict[str, str]]:
    """Move the offending files to qdir (same relative paths); never overwrites (a taken name gets a .1,
    .2 ... suffix). Each move is an intent record in qdir/moves.jsonl, fsynced before the file moves, and
    a done record after it, so a kill at any point loses nothing. Returns the moves (intent records)."""
    root = Path(report.root).expanduser().resolve()
    qdir = Path(qdir).expanduser().resolve() if qdir else default_quarantine_dir(root)
    bad = offending(report, kinds, listed)
    moves = []
    guard_file(qdir / LOG_NAME, "quarantine_dir", MOVES_HEAD)  # appends to a move log of ours only
    qdir.mkdir(parents=True, exist_ok=True)
    with _move_log(qdir / LOG_NAME) as append:
        for rel, kind in sorted(bad.items()):
            src = root / rel
            if not _present(src):
                continue
            dst = _free_name(qdir / rel)
            move = {
                "op": "move",
                "id": uuid.uuid4().hex[:12],
                "from": Path(rel).as_posix(),
                "to": dst.relative_to(qdir).as_posix(),
                "reason": kind,
                "root": str(root),
                "at": _now(),
            }
            append(move)  # intent: on disk before the file moves
            dst.parent.mkdir(parents=True, exist_ok=True)
            _move(src, dst)
            append({"op": "moved", "id": move["id"], "at": _now()})
            moves.append(move)
    return moves


def undo_quarantine(
    qdir: str | Path, root: str | Path | None = None
) -> tuple[list[dict[str, str]], list[str]]:
    """Move quarantined files back into `root` (default: the root the log recorded), newest move first;
    returns (undone moves, problems).

    The log's paths are relative (to the dataset root and to qdir), so a dataset moved elsewhere since
    is restored where it is now. A torn line (a write cut short) is skipped with a warning. A move whose
    done record is missing was cut short: the file is at its source or in quarantine, and is put back
    from wherever it is. A file whose original place is taken again stays in quarantine and is named in
    the problems.
    """
    qdir = Path(qdir).expanduser().resolve()
    logpath = qdir / LOG_NAME
    if not logpath.is_file():
        raise FileNotFoundError(f"{logpath} does not exist: nothing was quarantined there")
    records = read_move_log(logpath)
    moves = [r for r in records if r.get("op") == "move" and "from" in r and "to" in r]
    done = {r["id"] for r in records if r.get("op") == "moved" and "id" in r}
    back = {r["id"] for r in records if r.get("op") == "undone" and "id" in r}
    root = Path(root).expanduser().resolve() if root is not None else _recorded_root(moves, qdir)
    if root is not None and not root.is_dir():
        raise FileNotFoundError(
            f"root={root} is not a folder: pass root= the dataset's current place to move the files of "
            f"{qdir} back into"
        )
    undone, problems = [], []
    with _move_log(logpath) as append:
        for move in reversed(moves):
            if move.get("id") is not None and move["id"] in back:
                continue  # undone before
            src, home = qdir / move["to"], Path(move["from"])  # old logs hold absolute paths
            if not home.is_absolute():
                if root is None:
                    raise ValueError(f"{logpath} does not record the dataset root: pass root=<dataset>")
                home = root / home
            if not _present(src):
                continue  # never moved (a kill before the move), already back, or moved by hand
            if _present(home):
                cut_short = "id" in move and move["id"] not in done
                problems.append(
                    f"{home} exists and {src} is in quarantine too (a move cut short left both: compare "
                    "them and delete one)"
                    if cut_short
                    else f"{home} exists again; {src} stays in quarantine"
                )
                continue
            entry = {"op": "undo", "id": move.get("id"), "from": move["to"], "to": move["from"], "at": _now()}
            append(entry)
            home.parent.mkdir(parents=True, exist_ok=True)
            _move(src, home)
            append({"op": "undone", "id": move.get("id"), "at": _now()})
            undone.append(entry)
    return undone, problems


def _recorded_root(moves: list[dict], qdir: Path) -> Path | None:
    """Where to undo into when no root is given: the root the log recorded, while it is a folder; else,
    for the default layout (<parent>/quarantine/<name>, moved along with the dataset), <parent>/<name>."""
    recorded = [Path(r["root"]) for r in moves if r.get("root")]
    if recorded and recorded[-1].is_dir():
        return recorded[-1]
    beside = qdir.parent.parent / qdir.name
    if qdir.parent.name == "quarantine" and beside.is_dir():
        return beside
    return recorded[-1] if recorded else None


def read_move_log(path: Path) -> list[dict]:
    """The records of a moves.jsonl; a line that is not a whole JSON record (the last one, when a write
    was cut short) is skipped with a warning naming the file and line."""
    records = []
    for number, line in enumerate(path.read_bytes().split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # JSONDecodeError, and UnicodeDecodeError of a torn multi-byte character
            record = None
        if not isinstance(record, dict) or "op" not in record:
            log.warning("%s line %d is not a complete record (a write cut short?); skipping it", path, number)
            continue
        records.append(record)
    return records


@contextlib.contextmanager
def _move_log(path: Path) -> Iterator[Callable[[dict], None]]:
    """Append records to a moves.jsonl, each fsynced before the call returns. A torn last line is closed
    with a newline first, so the next record is a line of its own."""
    new = not path.exists()
    with open(path, "ab") as f:
        if not new and f.tell() > 0:
            with open(path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    f.write(b"\n")
        if new:
            fsync_dir(path.parent)

        def append(record: dict) -> None:
            f.write((json.dumps(record) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())

        yield append


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _move(src: Path, dst: Path) -> None:
    """Rename src to dst (a copy, made durable, then the unlink of src, across filesystems), then make
    both folders' entries durable."""
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        if src.is_symlink():
            shutil.move(src, dst)
        else:  # another filesystem: a whole copy appears at dst, or none, before src goes
            with open(src, "rb") as f, atomic_write(dst, binary=True) as out:
                shutil.copyfileobj(f, out, 1 << 20)
            shutil.copystat(src, dst)
            os.unlink(src)
    fsync_dir(dst.parent)
    fsync_dir(src.parent)


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

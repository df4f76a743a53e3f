"""noodlenext replaces only what it wrote: the checks before a write into a place a user named.

Three cases, one helper each:
  - a folder it fills (explain's `output=`, `data.cache_dir=`): `claim_folder` creates it, or takes an
    empty one, and leaves a marker file in it; a folder that holds anything but has no marker is refused;
  - a file at a path a user named (predict's `output=`, the data doctor's `report=` and `file_list=`, the
    chat's `chat.transcript=`, label_issues' `--out-dir`): `guard_file` lets it be replaced only when it
    starts the way the file noodlenext writes there starts (a CSV header, a JSON's first key, a comment
    line), so a user's own file of that name is never overwritten;
  - a folder it needs for itself for a while and removes afterwards (the page's session folders):
    `new_folder` creates one that did not exist, so removing it removes only what noodlenext put there.

Every refusal is a `NotOurs` (a FileExistsError) whose message names the option and the path, says that
nothing was changed and what to pass instead; it never suggests deleting anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["OUTPUT_MARKER", "NotOurs", "claim_folder", "guard_file", "is_empty_dir", "new_folder"]

OUTPUT_MARKER = ".noodlenext-output.json"  # in a folder noodlenext created (or took empty) for its outputs
_HEAD_BYTES = 4096


class NotOurs(FileExistsError):
    """A path noodlenext would have to overwrite, or fill, that it did not write: nothing was changed."""


def is_empty_dir(path: Path) -> bool:
    """A folder with no entries at all (hidden ones count)."""
    try:
        return path.is_dir() and next(path.iterdir(), None) is None
    except OSError:
        return False


def claim_folder(
    path: str | Path, option: str, marker: str = OUTPUT_MARKER, content: str | None = None
) -> Path:
    """The folder `path` for noodlenext's outputs: created if missing, taken if empty, reused if it carries
    `marker` (written by an earlier claim); a folder that holds anything else is refused (NotOurs).

    option: how the user named it (`output`, `data.cache_dir`), for the message. content: the marker's
    text (default: a short JSON saying who wrote the folder)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise NotOurs(f"{option}={path} is a file, not a folder; it was left as it is: name a new folder")
    if (path / marker).is_file():
        return path
    if path.is_dir() and not is_empty_dir(path):
        raise NotOurs(
            f"{option}={path} already holds files that noodlenext did not write (it has no {marker}); "
            "nothing in it was changed: name a new or empty folder"
        )
    path.mkdir(parents=True, exist_ok=True)
    if content is None:
        content = json.dumps({"written_by": "noodlenext", "option": option}) + "\n"
    (path / marker).write_text(content)
    return path


def guard_file(path: str | Path, option: str, signature: str | re.Pattern[str]) -> Path:
    """`path`, which noodlenext is about to (over)write: fine when it does not exist or when its start
    matches `signature` (a regular expression, anchored at the file's first byte: how noodlenext's own
    file of that kind starts); otherwise NotOurs."""
    path = Path(path).expanduser()
    if not path.exists() and not path.is_symlink():
        return path
    pattern = re.compile(signature) if isinstance(signature, str) else signature
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES).decode("utf-8", errors="replace")
    except OSError:
        head = None
    if path.is_file() and not path.is_symlink() and head is not None and pattern.match(head):
        return path
    raise NotOurs(
        f"{option}={path} exists and is not a file noodlenext wrote; it was left as it is: name a new file"
    )


def new_folder(path: str | Path) -> Path:
    """A folder that did not exist before: `path`, else `path-1`, `path-2` ... (created, race-free).
    Everything in it is the caller's, so removing it afterwards removes nothing of anyone else's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        candidate = path if n == 0 else path.with_name(f"{path.name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1

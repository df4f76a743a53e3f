"""Atomic file writes, the one helper every result file goes through, with no heavy imports: the Hydra
sweep callback and the data check use them, and they run before any model code is needed.

`atomic_write(path)` opens a hidden temp file beside the target, `.<name>.<host>-<pid>-<start>-<random>.tmp`
(the writer's host, process id and process start time), and when the block ends without an error:
flush, fsync, give it the mode a plain `open()` would (0666 less the umask; mkstemp makes 0600), rename
it over the target and fsync the directory, so the rename itself survives a power cut. On an error the
temp file is removed and the old file is left as it was. A write that is killed (SIGKILL, power cut)
cannot clean up: the first atomic write into a directory in a process, and `clean_stale_temps(dir)`
(train does it at start for the checkpoint folder), remove the temp files whose writer is gone: a
process of this host that no longer runs (the start time tells a reused pid, as after a container
restart), or any temp older than STALE_AFTER_S.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"
STALE_AFTER_S = 24 * 3600  # a temp file this old is a leftover whoever wrote it (another host, say)
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_OURS = re.compile(r"^\..+\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)-[a-z0-9_]+\.tmp$")
# Earlier versions' temp names: AtomicCheckpointIO's `.<name>.<random>.tmp`, write_text_atomic's
# `tmp<random>.tmp`. Without a pid they are only cleaned once older than STALE_AFTER_S.
_LEGACY = re.compile(r"^(\..+\.[a-z0-9_]{8}|tmp[a-z0-9_]{8})\.tmp$")
_cleaned: set[str] = set()  # directories this process has cleaned of stale temps
_lock = threading.Lock()


def umask() -> int:
    """The process umask, read without changing it where the OS tells it (Linux), else set and put back."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _lock:  # os.umask can only be read by setting it; the lock keeps our own threads consistent
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0666 less the umask (0644 under the usual 022)."""
    return 0o666 & ~umask()


def fsync_dir(directory: str | Path) -> None:
    """Make a rename or a new file in `directory` durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, from /proc), or None where that is unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])  # field 22, counted after the name
    except (OSError, ValueError, IndexError):
        return None


_own_start: dict[int, int] = {}  # by pid: a forked child (a loader worker) is another process


def _my_start() -> int:
    pid = os.getpid()
    if pid not in _own_start:
        _own_start[pid] = _start_time(pid) or 0
    return _own_start[pid]


def _writer_alive(pid: int, start: int) -> bool:
    """Does the process that wrote a temp file (this host's pid `pid`, started at `start`) still run?"""
    if pid == os.getpid() and start == _my_start():
        return True  # this process: another thread may be writing it
    if start:
        now = _start_time(pid)
        if now is not None or os.path.isdir("/proc/self"):
            return now == start  # gone, or the pid is another process now
    if os.name == "nt":  # os.kill would terminate it there; rely on the age instead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def process_stamp() -> dict[str, Any]:
    """Who this process is, for a marker that says "a write of mine is under way": host (hashed), pid and
    start time. `stamp_alive` tells later whether that process still runs."""
    return {"host": _HOST, "pid": os.getpid(), "start": _my_start()}


def stamp_alive(stamp: Any) -> bool:
    """Does the process of a `process_stamp()` still run? Another host's, or a stamp that cannot be read,
    counts as alive: only a writer known to be gone lets its leftovers be removed."""
    try:
        host, pid, start = str(stamp["host"]), int(stamp["pid"]), int(stamp["start"])
    except (TypeError, KeyError, ValueError):
        return True
    return host != _HOST or _writer_alive(pid, start)


def is_stale_temp(path: str | Path, now: float | None = None, legacy: bool = False) -> bool:
    """An atomic write's temp file whose writer is gone: its pid (on this host) no longer runs, or it is
    older than STALE_AFTER_S. A live writer's temp file, or any other file, is never stale.

    legacy: also earlier versions' names (`tmp<8 random>.tmp`, `.<name>.<8 random>.tmp`), which carry no
    writer and look like any mkstemp file: only for a folder that noodlenext alone writes (checkpoints)."""
    path = Path(path)
    ours, old = _OURS.match(path.name), legacy and _LEGACY.match(path.name)
    if not (ours or old):
        return False
    if ours and ours["host"] == _HOST and not _writer_alive(int(ours["pid"]), int(ours["start"])):
        return True
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except OSError:
        return False
    return age > STALE_AFTER_S


def clean_stale_temps(directory: str | Path, legacy: bool = False) -> list[Path]:
    """Remove the temp files that killed atomic writes left in `directory` (not below it); returns them.

    Only names that say they are ours (`is_stale_temp`): a user's own `*.tmp` in a folder noodlenext
    writes a report into is never touched. legacy: see is_stale_temp."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if entry.name.endswith(TEMP_SUFFIX) and entry.is_file(follow_symlinks=False):
            path = Path(entry.path)
            if is_stale_temp(path, legacy=legacy):
                with contextlib.suppress(FileNotFoundError):  # another process cleaned it first
                    path.unlink()
                    removed.append(path)
    return removed


def _clean_once(directory: Path) -> None:
    key = str(directory.resolve())
    if key not in _cleaned:
        _cleaned.add(key)
        clean_stale_temps(directory)


@contextlib.contextmanager
def atomic_write(
    path: str | Path, binary: bool = False, encoding: str = "utf-8", newline: str | None = None
) -> Iterator[IO[Any]]:
    """Write `path` through a temp file beside it, renamed over it only when the block succeeds.

    Readers see the old file or the new one, never a part; an exception in the block removes the temp
    file and leaves the old file intact. Text mode writes UTF-8 unless told otherwise.
    """
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    _clean_once(directory)
    # Hidden and `.tmp`: a leftover never looks like a result (nor a checkpoint); the pid tells a leftover.
    prefix = f".{path.name[:200]}.{_HOST}-{os.getpid()}-{_my_start()}-"
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=TEMP_SUFFIX, dir=directory)
    try:
        if binary:
            f: IO[Any] = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding=encoding, newline=newline)
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Bytes, written atomically (see atomic_write)."""
    with atomic_write(path, binary=True) as f:
        f.write(data)


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write then rename: a crash mid-write never leaves a truncated file behind."""
    with atomic_write(path, encoding=encoding) as f:
        f.write(text)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Pretty JSON, written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2))

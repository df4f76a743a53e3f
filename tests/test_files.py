"""The one atomic-write helper: all or nothing, no temp file left behind, the umask's mode, and the
temp files of killed writes cleaned up (while a live writer's are left alone)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from noodlenext.core import files
from noodlenext.core.files import (
    atomic_write,
    clean_stale_temps,
    is_stale_temp,
    write_json_atomic,
    write_text_atomic,
)


@pytest.fixture
def umask() -> Iterator[None]:
    """Restores the process umask a test sets."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def temp_name(target: str, pid: int, start: int, host: str = files._HOST) -> str:
    """A temp file name as atomic_write makes them."""
    return f".{target}.{host}-{pid}-{start}-abc123_x.tmp"


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_failure_mid_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"test/acc": 0.25})
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_write(target) as f:
        f.write('{"test/acc": 0.')  # half a file is on disk, in the temp file
        raise RuntimeError("disk on fire")
    with pytest.raises(TypeError):  # not serialisable: fails before anything is written
        write_json_atomic(target, {"test/acc": object()})
    assert json.loads(target.read_text()) == {"test/acc": 0.25}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_the_written_file_gets_the_umask_mode_not_the_temp_files_0600(tmp_path: Path, umask) -> None:
    for mask, mode in ((0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)):
        os.umask(mask)
        target = tmp_path / f"out_{mask:o}.csv"
        target.write_text("old")
        target.chmod(0o600)  # what the file was does not matter: a new file gets what open() would give
        write_text_atomic(target, "a,b\n1,2\n")
        plain = tmp_path / f"plain_{mask:o}.csv"
        plain.write_text("a,b\n")
        assert target.stat().st_mode & 0o777 == mode == plain.stat().st_mode & 0o777, oct(mask)
        assert target.read_text() == "a,b\n1,2\n"


def test_text_is_utf8_and_binary_mode_writes_bytes(tmp_path: Path) -> None:
    write_text_atomic(tmp_path / "names.txt", "soba – そば\n")
    assert (tmp_path / "names.txt").read_bytes() == "soba – そば\n".encode()
    with atomic_write(tmp_path / "blob.bin", binary=True) as f:
        f.write(b"\x00\xff")
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\xff"


@pytest.mark.slow  # starts processes (a dead writer's pid, a live one)
def test_stale_temps_of_dead_writers_are_cleaned_and_live_ones_kept(tmp_path: Path) -> None:
    me, my_start = os.getpid(), files._my_start()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        sleeper_start = files._start_time(sleeper.pid) or 0
        names = {
            "dead": temp_name("last.ckpt", dead_pid(), 12345),
            "reused_pid": temp_name("epoch_003.ckpt", me, my_start + 1),  # our pid, another process's start
            "mine": temp_name("metrics.json", me, my_start),  # another thread of ours may be writing it
            "live": temp_name("heatmaps.json", sleeper.pid, sleeper_start),
            "other_host": temp_name("runs.csv", 999_999, 1, host="0123abcd"),
            "other_host_old": temp_name("comparison.csv", 999_999, 1, host="0123abcd"),
            "legacy_old": ".last.ckpt.k3j2_9ab.tmp",
            "legacy_new": "tmpa8d7_k2j.tmp",
            "not_ours": "notes.tmp",
        }
        for name in names.values():
            (tmp_path / name).write_text("partial")
        two_days_ago = time.time() - 2 * 24 * 3600
        for key in ("other_host_old", "legacy_old", "not_ours"):
            os.utime(tmp_path / names[key], (two_days_ago, two_days_ago))
        stale = {"dead", "reused_pid", "other_host_old"}
        assert {k for k, n in names.items() if is_stale_temp(tmp_path / n)} == stale
        # Earlier versions' names look like anyone's mkstemp file: cleaned only where asked (checkpoints).
        assert {k for k, n in names.items() if is_stale_temp(tmp_path / n, legacy=True)} == {
            *stale,
            "legacy_old",
        }
        removed = clean_stale_temps(tmp_path)
        assert sorted(p.name for p in removed) == sorted(names[k] for k in stale)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            n for k, n in names.items() if k not in stale
        )
        assert clean_stale_temps(tmp_path, legacy=True) == [tmp_path / names["legacy_old"]]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_an_atomic_write_leaves_a_users_old_tmp_files_alone(tmp_path: Path) -> None:
    """file_list=~/notes/clean.txt must not clean ~/notes of a day-old `tmpab12cd34.tmp` of the user's."""
    theirs = [tmp_path / "tmpab12cd34.tmp", tmp_path / ".draft.k3j2_9ab.tmp", tmp_path / "x.tmp"]
    two_days_ago = time.time() - 2 * 24 * 3600
    for path in theirs:
        path.write_text("mine")
        os.utime(path, (two_days_ago, two_days_ago))
    write_text_atomic(tmp_path / "clean_files.txt", "a.jpg\n")
    assert all(p.read_text() == "mine" for p in theirs)


@pytest.mark.slow  # starts processes (a dead writer's pid, a live one)
def test_the_first_atomic_write_into_a_folder_cleans_its_stale_temps(tmp_path: Path) -> None:
    leftover = tmp_path / temp_name("metrics.json", dead_pid(), 777)
    leftover.write_text('{"test/ac')
    write_json_atomic(tmp_path / "metrics.json", {"test/acc": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_threads_writing_one_file_never_break_each_other(tmp_path: Path) -> None:
    target, errors = tmp_path / "chat.json", []

    def writer(n: int) -> None:
        try:
            for i in range(20):
                write_json_atomic(target, {"writer": n, "turn": i, "text": "x" * 5000})
        except Exception as e:  # collected, asserted below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and json.loads(target.read_text())["turn"] == 19
    assert [p.name for p in tmp_path.iterdir()] == ["chat.json"]

"""resume=auto continues only a run with the same config, and never one another process is writing."""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from noodlenext.models.classifier import CHECKPOINT_KEY
from noodlenext.runs.instantiate import config_as_dict
from noodlenext.runs.resume import (
    LOCK_FILE,
    RESUME_ENV,
    ResumeError,
    config_differences,
    describe_differences,
    lock_holder,
    lock_run_dir,
    prepare_resume,
    release_run_lock,
)

BASE = ["experiment=quickstart", "logger=none"]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(RESUME_ENV, "{}")
    yield
    release_run_lock()


@pytest.fixture
def save_run(tmp_path: Path, compose_cfg: Callable[..., DictConfig]) -> Callable[..., Path]:
    """save_run(name, overrides, age): a run directory whose last.ckpt stores the config that train
    composes for `overrides` (what NoodleClassifier.on_save_checkpoint keeps), `age` seconds old."""

    def save(name: str, overrides: list[str], age: float = 0.0) -> Path:
        stored = config_as_dict(compose_cfg("train", [*BASE, *overrides]))
        path = tmp_path / name / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True)
        torch.save({"epoch": 1, "global_step": 4, CHECKPOINT_KEY: {"config": stored}}, path)
        stamp = path.stat().st_mtime - age
        os.utime(path, (stamp, stamp))
        return path

    return save


def test_config_differences_name_each_key_old_and_new_and_leave_out_the_ignored() -> None:
    old = {"model": {"optim": {"head_lr": 0.002}, "name": "a"}, "paths": {"output_dir": "x"}, "seed": 1}
    new = {"model": {"optim": {"head_lr": 0.001}, "name": "a"}, "paths": {"output_dir": "y"}, "extra": 2}
    diffs = config_differences(old, new, ["paths"])
    assert [k for k, _, _ in diffs] == ["extra", "model.optim.head_lr", "seed"]
    text = describe_differences(diffs)
    assert "model.optim.head_lr: 0.002 → 0.001" in text
    assert "extra: (absent) → 2" in text and "seed: 1 → (absent)" in text
    assert (
        config_differences(
            {"trainer": {"max_epochs": 3}}, {"trainer": {"max_epochs": 9}}, ["trainer.max_epochs"]
        )
        == []
    )
    assert (
        config_differences({"trainer": {"max_epochs": 3}}, {"trainer": {"max_epochs": 9}}, ["trainer.max"])
        != []
    )

    # A path inside each run's own directory compares relative to it; one outside does not.
    def run(name: str, data: str) -> dict:
        out = f"/outputs/quickstart/{name}"
        return {"paths": {"output_dir": out}, "trainer": {"default_root_dir": out}, "data": {"root": data}}

    assert config_differences(run("killed", "/data/a"), run("resumer", "/data/a"), ["paths"]) == []
    (diff,) = config_differences(run("killed", "/data/a"), run("resumer", "/data/b"), ["paths"])
    assert diff == ("data.root", "/data/a", "/data/b")


def test_auto_skips_a_newer_run_with_another_config_and_continues_the_matching_one(
    save_run, compose_cfg, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    matching = save_run("matching", ["trainer.max_epochs=3"], age=60)  # older; a longer schedule is fine
    other = save_run("other", ["model.optim.head_lr=0.01"])  # newest, another learning rate
    cfg = compose_cfg("train", [*BASE, "resume=auto", "trainer.max_epochs=6"])
    with caplog.at_level(logging.WARNING, logger="noodlenext.runs.resume"):
        assert prepare_resume(cfg) == str(matching)
    assert cfg.paths.output_dir == str(matching.parent.parent)
    assert f"skipping {other}: its config differs: model.optim.head_lr: 0.01 → 0.002" in caplog.text
    assert (matching.parent.parent / LOCK_FILE).is_file()  # this process now holds the run


def test_auto_starts_a_new_run_when_no_run_matches(save_run, compose_cfg, tmp_path: Path, caplog) -> None:
    other = save_run("other", ["data.batch_size=4"])
    cfg = compose_cfg("train", [*BASE, "resume=auto"])
    with caplog.at_level(logging.WARNING, logger="noodlenext.runs.resume"):
        assert prepare_resume(cfg) is None
    assert cfg.paths.output_dir == str(tmp_path / "run")  # its own, new run directory
    assert f"skipping {other}: its config differs: data.batch_size: 4 → 32" in caplog.text
    assert "starting a new run" in caplog.text


def test_auto_refuses_the_given_run_dirs_checkpoint_with_another_config(
    save_run, compose_cfg, tmp_path, caplog
) -> None:
    own = save_run("run", ["model.label_smoothing=0.3", "seed=7"])
    cfg = compose_cfg("train", [*BASE, "resume=auto", f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(ResumeError) as error:
        prepare_resume(cfg)
    message = str(error.value)
    assert "model.label_smoothing: 0.3 → 0.1" in message and "seed: 7 → 42" in message
    assert f"ckpt_path={own}" in message and "resume_ignore" in message
    # Passing the file explicitly is the way to continue it anyway.
    cfg = compose_cfg(
        "train", [*BASE, "resume=auto", f"hydra.run.dir={tmp_path / 'run'}", f"ckpt_path={own}"]
    )
    with caplog.at_level(logging.WARNING, logger="noodlenext.runs.resume"):
        assert prepare_resume(cfg) == str(own)
    assert (
        "continuing a run whose config differs: data.split_seed: 7 → 42, model.label_smoothing" in caplog.text
    )


def test_auto_continues_the_given_run_dir_when_only_ignored_keys_differ(
    save_run, compose_cfg, tmp_path
) -> None:
    own = save_run("run", ["trainer.max_epochs=2", "callbacks.heatmap_gallery=null", "llm=none", "tags=[a]"])
    cfg = compose_cfg(
        "train", [*BASE, "resume=auto", f"hydra.run.dir={tmp_path / 'run'}", "trainer.max_epochs=4"]
    )
    assert prepare_resume(cfg) == str(own)


# ------------------------------------------------------------------------------ one process per run
def test_a_run_dir_locks_once(tmp_path: Path) -> None:
    first = lock_run_dir(tmp_path)
    assert first is not None and lock_run_dir(tmp_path) is None  # a second open file description
    assert lock_holder(tmp_path) == f"pid {os.getpid()} on {os.uname().nodename}"
    first.close()
    again = lock_run_dir(tmp_path)
    assert again is not None
    again.close()


def test_auto_moves_on_from_a_run_another_process_holds(save_run, compose_cfg, tmp_path, caplog) -> None:
    older = save_run("older", [], age=60)
    busy = save_run("busy", [])  # newest and matching, but being trained
    held = lock_run_dir(busy.parent.parent)
    try:
        with caplog.at_level(logging.WARNING, logger="noodlenext.runs.resume"):
            assert prepare_resume(compose_cfg("train", [*BASE, "resume=auto"])) == str(older)
        assert f"skipping {busy}: in use by pid {os.getpid()}" in caplog.text
    finally:
        held.close()


def test_auto_refuses_a_given_run_dir_another_process_holds(save_run, compose_cfg, tmp_path) -> None:
    save_run("run", [])
    held = lock_run_dir(tmp_path / "run")
    try:
        cfg = compose_cfg("train", [*BASE, "resume=auto", f"hydra.run.dir={tmp_path / 'run'}"])
        with pytest.raises(ResumeError, match=f"in use by pid {os.getpid()} .*two processes must not"):
            prepare_resume(cfg)
    finally:
        held.close()


def test_a_fresh_run_into_a_held_run_dir_is_refused(compose_cfg, tmp_path: Path) -> None:
    held = lock_run_dir(tmp_path / "run")
    try:
        with pytest.raises(ResumeError, match="two processes must not write the same run"):
            prepare_resume(compose_cfg("train", BASE))
    finally:
        held.close()
    assert prepare_resume(compose_cfg("train", BASE)) is None  # free again


@pytest.mark.slow
def test_a_second_process_cannot_take_a_held_run_and_a_killed_holder_frees_it(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from noodlenext.runs.resume import lock_run_dir
        lock = lock_run_dir(Path({str(tmp_path)!r}))
        print("locked" if lock else "refused", flush=True)
        sys.stdin.read()
    """)
    holder = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        ready, _, _ = select.select([holder.stdout], [], [], 120)  # a line within 120 s, or a failure
        assert ready and holder.stdout.readline().strip() == "locked"
        assert lock_run_dir(tmp_path) is None  # this test's process is the second one
        assert lock_holder(tmp_path).startswith(f"pid {holder.pid} ")
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up runs: the kernel drops the lock, nothing goes stale
        holder.wait()
    lock = lock_run_dir(tmp_path)
    assert lock is not None
    lock.close()

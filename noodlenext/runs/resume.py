"""Resuming a run: `resume=auto` finds the checkpoint, the run directory and W&B run id to continue.

`resume=auto` picks `<run dir>/checkpoints/last.ckpt` when the run directory is given
(`hydra.run.dir=...`, or a sweep job's own directory), else the newest `last.ckpt` among the run
directories of the same task (`outputs/<task_name>/*/checkpoints/last.ckpt`), and then writes into that
run directory. It starts from scratch when there is none, so a preemptible job can always pass it.

It continues a run only with the config that run was started with. A checkpoint stores its run's
composed config (`noodlenext.config`); `resume=auto` compares it with the current one, leaving out the
keys of `resume_ignore` (conf/train.yaml: where files go, run bookkeeping, reporting, and a longer
schedule, e.g. a larger trainer.max_epochs), with paths inside each run's own directory (such as
trainer.default_root_dir) compared relative to it. A sibling run whose config differs is skipped (the log
names the keys, old → new) and, when none matches, a new run starts; the given run directory's own
last.ckpt with a different config is refused, naming the keys and how to go on. `ckpt_path=<file>`
continues from that file whatever its config (the differences are logged).

Every training process holds an exclusive lock on the run directory it writes (`<run dir>/.run.lock`, an
`flock`: the kernel drops it when the process ends, even on SIGKILL, so it never goes stale), so two
processes never write the same run: `resume=auto` skips a sibling run that is locked, and a given run
directory that is locked is an error. DDP worker processes (not rank 0) take no lock.

Checkpoints are read as plain data (`models.checkpoints`); `trust_checkpoint=true` is the opt-in for one
that needs more.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import logging
import os
import secrets
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from noodlenext.core.config import CONFIG_DIR
from noodlenext.models.checkpoints import load_checkpoint
from noodlenext.models.classifier import CHECKPOINT_KEY
from noodlenext.runs.checkpoint_io import is_complete_checkpoint
from noodlenext.runs.instantiate import config_as_dict

log = logging.getLogger(__name__)

# DDP worker processes re-run the command line (Lightning's subprocess launcher): rank 0 hands them
# the checkpoint it chose, so every rank continues from the same one.
RESUME_ENV = "NOODLENEXT_RESUME"
LOCK_FILE = ".run.lock"


@functools.cache
def default_resume_ignore() -> tuple[str, ...]:
    """The keys a resume may change, for a config without `resume_ignore`: conf/train.yaml's list (the
    one source users see and can change)."""
    return tuple(str(k) for k in OmegaConf.load(Path(CONFIG_DIR) / "train.yaml").resume_ignore)


_RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
_ABSENT = object()

_held: IO[str] | None = None  # the lock on the run directory this process is training into


class ResumeError(RuntimeError):
    """resume=auto cannot continue the run it was pointed at (another config, or another process)."""


# ------------------------------------------------------------------------------ the run directory lock
def lock_run_dir(run_dir: Path) -> IO[str] | None:
    """An exclusive lock on run_dir, held while the returned file is open; None when another process
    holds it. The lock file names the holder (pid and host) for the message of whoever is refused."""
    run_dir.mkdir(parents=True, exist_ok=True)
    f = (run_dir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):  # a filesystem without locks: carry on unguarded
            log.warning(
                "%s: cannot lock the run directory (%s); not guarding against a second process", run_dir, e
            )
            return f
        f.close()
        return None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    return f


def lock_holder(run_dir: Path) -> str:
    """Who holds run_dir's lock, as its lock file says."""
    try:
        return (run_dir / LOCK_FILE).read_text().strip() or "another process"
    except OSError:
        return "another process"


def release_run_lock() -> None:
    """Drop this process's run directory lock (a finished task's; the next task takes its own)."""
    global _held
    if _held is not None:
        _held.close()
        _held = None


def _lock_or_fail(run_dir: Path) -> IO[str]:
    lock = lock_run_dir(run_dir)
    if lock is None:
        raise ResumeError(
            f"{run_dir} is in use by {lock_holder(run_dir)} (lock file {run_dir / LOCK_FILE}): two "
            "processes must not write the same run. Wait for it to end, or start this run in another "
            "directory (another hydra.run.dir, or none: outputs/<task_name>/<new run>)."
        )
    return lock


def _is_rank_zero() -> bool:
    """Not a DDP worker: every rank variable a launcher may set is 0 (or unset)."""
    return all(os.environ.get(name, "0") == "0" for name in _RANK_VARS)


# ------------------------------------------------------------------------------ comparing configs
def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= _flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def _under_run_dir(value: Any, run_dir: str | None) -> Any:
    """Strings under the run directory (trainer.default_root_dir, ...) rewritten relative to it."""
    if isinstance(value, Mapping):
        return {k: _under_run_dir(v, run_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_under_run_dir(v, run_dir) for v in value]
    if run_dir and isinstance(value, str) and (value == run_dir or value.startswith(f"{run_dir}/")):
        return "${paths.output_dir}" + value[len(run_dir) :]
    return value


def config_differences(
    old: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] | None = None
) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf that differs, keys under `ignore` left out;
    a key only one side has is paired with `_ABSENT`. Paths inside each side's own run directory
    (`paths.output_dir`) compare relative to it, since a resumed run's directory has another name."""
    ignore = tuple(ignore) if ignore is not None else default_resume_ignore()

    def run_dir(config: Mapping[str, Any]) -> str | None:
        paths = config.get("paths")
        return (
            str(paths.get("output_dir")) if isinstance(paths, Mapping) and paths.get("output_dir") else None
        )

    a, b = _flatten(_under_run_dir(old, run_dir(old))), _flatten(_under_run_dir(new, run_dir(new)))

    def ignored(key: str) -> bool:
        return any(key == p or key.startswith(f"{p}.") for p in ignore)

    keys = sorted(k for k in set(a) | set(b) if not ignored(k))
    return [(k, a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in keys if a.get(k, _ABSENT) != b.get(k, _ABSENT)]


def describe_differences(diffs: list[tuple[str, Any, Any]], limit: int = 8) -> str:
    """`key: old → new, ...` (the first `limit`, then how many more)."""

    def show(value: Any) -> str:
        text = "(absent)" if value is _ABSENT else repr(value)
        return text if len(text) <= 80 else f"{text[:30]}...{text[-47:]}"  # paths differ at the end

    shown = ", ".join(f"{k}: {show(old)} → {show(new)}" for k, old, new in diffs[:limit])
    return shown + (f" (and {len(diffs) - limit} more)" if len(diffs) > limit else "")


def _stored_meta(ckpt: Path, trust: bool) -> dict[str, Any]:
    return load_checkpoint(ckpt, trust=trust, mmap=True).get(CHECKPOINT_KEY) or {}


def _mismatch(meta: Mapping[str, Any], current: Mapping[str, Any], ignore: Iterable[str]) -> str | None:
    """Why the checkpoint's run config is not the current one, or None when it is."""
    stored = meta.get("config")
    if not isinstance(stored, Mapping):
        return "it stores no config to compare with"
    diffs = config_differences(stored, current, ignore)
    return f"its config differs: {describe_differences(diffs)}" if diffs else None


# ------------------------------------------------------------------------------ choosing a checkpoint
def _candidates(run_dir: Path, siblings: bool) -> list[Path]:
    own = run_dir / "checkpoints" / "last.ckpt"
    if own.is_file() or not siblings:
        return [own] if own.is_file() else []
    found = run_dir.parent.glob("*/checkpoints/last.ckpt")
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def find_last_checkpoint(run_dir: Path, siblings: bool) -> Path | None:
    """`run_dir/checkpoints/last.ckpt`, else (siblings) the newest complete one beside run_dir."""
    for path in _candidates(run_dir, siblings):
        if is_complete_checkpoint(path):
            return path
        log.warning("resume=auto: skipping %s, it is not a complete checkpoint", path)
    return None


def _choose(
    cfg: DictConfig, here: Path, siblings: bool, trust: bool, locking: bool
) -> tuple[Path | None, IO[str] | None]:
    """resume=auto's checkpoint (and the lock on its run directory, when `locking`), or (None, None)."""
    current, ignore = config_as_dict(cfg), list(cfg.get("resume_ignore") or default_resume_ignore())
    own = here / "checkpoints" / "last.ckpt"
    if own.is_file() or not siblings:  # the given run directory: continue it, or refuse
        if find_last_checkpoint(here, siblings=False) is None:
            return None, None
        lock = _lock_or_fail(here) if locking else None
        why = _mismatch(_stored_meta(own, trust), current, ignore)
        if why is not None:
            if lock is not None:
                lock.close()
            raise ResumeError(
                f"resume=auto: refusing to continue {own}: {why}. To continue it anyway, pass "
                f"ckpt_path={own}; for a new run, leave out resume=auto and choose another hydra.run.dir. "
                "(The keys a resume may change are resume_ignore, in conf/train.yaml.)"
            )
        return own, lock
    skipped = 0
    for path in _candidates(here, siblings=True):
        if not is_complete_checkpoint(path):
            log.warning("resume=auto: skipping %s, it is not a complete checkpoint", path)
            continue
        run_dir = path.parent.parent
        lock = lock_run_dir(run_dir) if locking else None
        if locking and lock is None:
            log.warning("resume=auto: skipping %s: in use by %s", path, lock_holder(run_dir))
            skipped += 1
            continue
        why = _mismatch(_stored_meta(path, trust), current, ignore)  # untrusted: an error, not a skip
        if why is None:
            return path, lock
        if lock is not None:
            lock.close()
        log.warning("resume=auto: skipping %s: %s", path, why)
        skipped += 1
    if skipped:
        log.warning(
            "resume=auto: none of the %d last.ckpt under %s can be continued by this run; starting a new "
            "run (ckpt_path=<file> continues one anyway)",
            skipped,
            here.parent,
        )
    return None, None


# ------------------------------------------------------------------------------ the entry point
def _run_dir_was_given() -> bool:
    hydra = HydraConfig.get()
    return hydra.mode == RunMode.MULTIRUN or any(
        o.startswith("hydra.run.dir=") for o in hydra.overrides.hydra
    )


def _wandb_entries(cfg: DictConfig) -> list[DictConfig]:
    loggers = cfg.get("logger") or {}
    return [c for c in loggers.values() if c and str(c.get("_target_", "")).endswith("WandbLogger")]


def _stored_wandb_id(meta: Mapping[str, Any]) -> str | None:
    loggers = ((meta.get("config") or {}).get("logger")) or {}
    return next((c["id"] for c in loggers.values() if isinstance(c, dict) and c.get("id")), None)


def prepare_resume(cfg: DictConfig) -> str | None:
    """The checkpoint to fit from (`ckpt_path`, or what `resume=auto` finds), or None.

    Resuming keeps the W&B run id stored in the checkpoint's config; `resume=auto` also points
    `paths.output_dir` at the run directory it continues. A fresh run gets a new W&B id here, so its
    checkpoints carry it (in the composed config they store). On rank 0 the run directory is locked
    until the next call or the end of the process. Call before anything reads `paths.output_dir` or
    records the config.
    """
    global _held
    mode = cfg.get("resume")
    if mode not in (None, "auto"):
        raise ValueError(f"resume={mode}: use resume=auto, or ckpt_path=<file> for a given checkpoint")
    release_run_lock()  # a lock still held here is a finished task's (sweep jobs run one after another)
    trust, rank_zero = bool(cfg.get("trust_checkpoint", False)), _is_rank_zero()
    ckpt, run_dir, lock = cfg.get("ckpt_path"), None, None
    hydra_dir = HydraConfig.get().runtime.output_dir
    handoff = json.loads(os.environ.get(RESUME_ENV, "{}"))
    if mode == "auto" and ckpt:
        log.info("resume=auto: ckpt_path=%s is given, resuming from it", ckpt)
    elif mode == "auto" and not rank_zero and handoff.get("hydra_dir") == hydra_dir:
        ckpt, run_dir = handoff["ckpt"], handoff["run_dir"]
    elif mode == "auto":
        here = Path(cfg.paths.output_dir)
        found, lock = _choose(cfg, here, siblings=not _run_dir_was_given(), trust=trust, locking=rank_zero)
        if found is None:
            log.info("resume=auto: no last.ckpt to continue for %s, starting a new run", here)
        else:
            ckpt, run_dir = str(found), str(found.parent.parent)
            log.info("resume=auto: resuming from %s, continuing the run in %s", ckpt, run_dir)
        os.environ[RESUME_ENV] = json.dumps({"hydra_dir": hydra_dir, "ckpt": ckpt, "run_dir": run_dir})
    meta = _stored_meta(Path(ckpt), trust) if ckpt and Path(ckpt).is_file() else {}
    if cfg.get("ckpt_path") and rank_zero and isinstance(meta.get("config"), Mapping):
        ignore = list(cfg.get("resume_ignore") or default_resume_ignore())
        diffs = config_differences(meta["config"], config_as_dict(cfg), ignore)
        if diffs:
            log.warning(
                "ckpt_path=%s: continuing a run whose config differs: %s", ckpt, describe_differences(diffs)
            )
    if rank_zero:
        _held = lock or _lock_or_fail(Path(run_dir or cfg.paths.output_dir))
    wandb_id = _stored_wandb_id(meta)
    with open_dict(cfg):
        if run_dir is not None:
            cfg.paths.output_dir = run_dir
        for entry in _wandb_entries(cfg):
            entry.id = entry.get("id") or wandb_id or secrets.token_hex(4)
            if ckpt:
                log.info("W&B run id %s (%s)", entry.id, "continued" if wandb_id else "new")
    return ckpt

"""The suite's own rules (docs/testing.md), as pytest hooks imported by conftest.py: a time limit per test
(pytest-timeout; `slow` tests get longer), and an unmarked test may neither start a process nor take more
than 2 s."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

UNMARKED_LIMIT_S = float(os.environ.get("NOODLENEXT_UNMARKED_LIMIT_S", "2"))
TIMEOUT_SLOW_S = 900  # a `slow` test's limit (pyproject's `timeout` is every other test's)
_started: list[list[str]] = []  # the command of every process started in this one (subprocess.Popen)


def _counting_popen() -> Callable[[], None]:
    """Record every subprocess.Popen (asyncio's and Playwright's go through it too); returns the undo."""
    original = subprocess.Popen.__init__

    def init(self: subprocess.Popen, args: Any, *rest: Any, **kwargs: Any) -> None:
        _started.append([str(a) for a in args] if isinstance(args, (list, tuple)) else [str(args)])
        original(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = init  # type: ignore[method-assign]
    return lambda: setattr(subprocess.Popen, "__init__", original)


def pytest_configure(config: pytest.Config) -> None:
    config._noodlenext_undo_popen = _counting_popen()  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    undo = getattr(config, "_noodlenext_undo_popen", None)
    if undo is not None:
        undo()


# Imported lazily by the code under test, and costly the first time (gradio: over 2 s of CPU): imported
# before the first test, as the test modules' own imports are, so that no test is charged for them. (What
# only slow tests load, the llama.cpp bindings, W&B, Playwright, need not be here.)
WARM_IMPORTS = (
    "gradio", "openai", "noodlenext.train", "noodlenext.eval", "noodlenext.predict", "noodlenext.chat",
    "noodlenext.app", "noodlenext.sweep", "noodlenext.improve", "noodlenext.explain.__main__",
    "noodlenext.data.check", "noodlenext.data.label_issues",
)  # fmt: skip


def pytest_collection_finish(session: pytest.Session) -> None:
    import importlib
    import platform

    if any(not _marked(item) for item in session.items):
        platform.processor()  # cached from here on: the first call runs `uname -p` (openai asks for it)
        for module in WARM_IMPORTS:
            try:
                importlib.import_module(module)
            except ImportError:  # an optional extra that is not installed: its tests say so
                pass


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`slow` tests get a longer time limit (unless they name their own)."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(TIMEOUT_SLOW_S))


def _marked(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(name) for name in ("slow", "gpu"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    item._noodlenext_processes = len(_started)  # type: ignore[attr-defined]
    return (yield)


def _cpu_s() -> float:
    """CPU seconds of this process (every thread) and of the child processes it has waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """An unmarked test fails when it started a process (setup included) or took over UNMARKED_LIMIT_S.

    "Took" is the smaller of its wall time and CPU time: a machine shared with other jobs stretches the
    wall time but not the CPU time, and threads (torch uses every core) add CPU time but not wall time,
    so only a test that really has that much work to do (on every core it uses) is caught, however busy
    the machine. Fixtures are not counted: a shared one is built once for many tests.
    """
    wall, cpu = time.perf_counter(), _cpu_s()
    result = yield
    if _marked(item):
        return result
    started = _started[getattr(item, "_noodlenext_processes", len(_started)) :]
    if started:
        command = " ".join(started[0])[:120]
        pytest.fail(f"started {len(started)} process(es) ({command} ...) but is not marked slow: "
                    "mark it @pytest.mark.slow, or do the work in this process", pytrace=False)  # fmt: skip
    took = min(time.perf_counter() - wall, _cpu_s() - cpu)
    if took > UNMARKED_LIMIT_S:
        pytest.fail(f"took {took:.1f} s (wall and CPU time both over {UNMARKED_LIMIT_S:g} s) but is not "
                    "marked slow: make it faster, or mark it @pytest.mark.slow", pytrace=False)  # fmt: skip
    return result

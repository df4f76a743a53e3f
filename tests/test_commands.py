"""Every command still answers where the README says it does: `python -m noodlenext.<name>` and the
installed console scripts."""

from __future__ import annotations

import io
import runpy
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

REPO = Path(__file__).resolve().parent.parent
HYDRA_COMMANDS = ("train", "eval", "predict", "explain", "chat", "app", "data.check", "improve")
SCRIPTS = {
    f"noodlenext-{name}"
    for name in ("train", "eval", "predict", "explain", "chat", "app", "check", "sweep", "improve")
}


def test_every_console_script_points_at_a_command_main() -> None:
    found = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.name.startswith("noodlenext-")}
    assert SCRIPTS <= set(found)
    for name in SCRIPTS:
        assert callable(found[name].load()), name


def python_m(module: str, *args: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """`python -m <module> args...` in this process (runpy runs the module as __main__, as -m does):
    (exit status, what it printed)."""
    monkeypatch.setattr(sys, "argv", [module, *args])
    printed = io.StringIO()
    GlobalHydra.instance().clear()
    with redirect_stdout(printed), redirect_stderr(printed), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "found in sys.modules ... prior to execution"
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            status = 0
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
            if isinstance(exit_.code, str):
                printed.write(exit_.code)
    GlobalHydra.instance().clear()
    return status, printed.getvalue()


@pytest.mark.parametrize("name", HYDRA_COMMANDS)
def test_every_python_m_command_answers_help(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    status, out = python_m(f"noodlenext.{name}", "--help", monkeypatch=monkeypatch)
    assert status == 0 and "Powered by Hydra" in out, f"noodlenext.{name}: {out[-2000:]}"


def test_the_sweep_command_says_how_to_call_it(monkeypatch: pytest.MonkeyPatch) -> None:
    status, out = python_m("noodlenext.sweep", monkeypatch=monkeypatch)
    assert status != 0 and "usage: python -m noodlenext.sweep <sweep dir>" in out


def test_the_improve_command_names_a_run_it_cannot_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    status, out = python_m("noodlenext.improve", f"run={tmp_path / 'nope'}", monkeypatch=monkeypatch)
    assert status != 0 and f"run={tmp_path / 'nope'} is not a folder" in out
    status, out = python_m("noodlenext.improve", monkeypatch=monkeypatch)
    assert status != 0 and "run" in out and "Missing mandatory value" in out
    status, out = python_m("noodlenext.improve", "run=x", "improve.apply=bset", monkeypatch=monkeypatch)
    assert status != 0 and "improve.apply='bset': use best or null" in out

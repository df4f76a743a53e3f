"""Every command still answers where the README says it does: `python -m noodlenext.<name>` and the
installed console scripts."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HYDRA_COMMANDS = ("train", "eval", "predict", "explain", "chat", "app", "data.check")
SCRIPTS = {
    f"noodlenext-{name}" for name in ("train", "eval", "predict", "explain", "chat", "app", "check", "sweep")
}


def test_every_console_script_points_at_a_command_main() -> None:
    found = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.name.startswith("noodlenext-")}
    assert SCRIPTS <= set(found)
    for name in SCRIPTS:
        assert callable(found[name].load()), name


@pytest.mark.slow
def test_every_python_m_command_answers_help(tmp_path: Path) -> None:
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", f"noodlenext.{name}", "--help"],
            cwd=tmp_path,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for name in HYDRA_COMMANDS
    }
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "Powered by Hydra" in out, f"noodlenext.{name}: {out[-2000:]}"
    sweep = subprocess.run(
        [sys.executable, "-m", "noodlenext.sweep"], cwd=tmp_path, capture_output=True, text=True
    )
    assert sweep.returncode != 0 and "usage: python -m noodlenext.sweep <sweep dir>" in sweep.stderr

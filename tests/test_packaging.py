"""The configs ship inside the wheel, so a regular `pip install .` finds them (not only an editable one)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("conf", "noodlenext"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(out),
        str(src),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = out.glob("noodlenext-*.whl")
    return built


def test_wheel_holds_every_config(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for yaml in (REPO / "conf").rglob("*.yaml"):
        assert f"noodlenext/conf/{yaml.relative_to(REPO / 'conf').as_posix()}" in names
    assert any(n.endswith("entry_points.txt") for n in names)
    entry_points = next(
        zipfile.ZipFile(wheel).read(n) for n in names if n.endswith("entry_points.txt")
    ).decode()
    for script in ("noodlenext-train", "noodlenext-eval", "noodlenext-predict"):
        assert script in entry_points


def test_installed_package_composes_its_configs_from_anywhere(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "from hydra import compose, initialize_config_dir\n"
        "from noodlenext.core.config import CONFIG_DIR\n"
        "with initialize_config_dir(version_base='1.3', config_dir=CONFIG_DIR):\n"
        "    cfg = compose('train', overrides=['experiment=writeup'])\n"
        "print(CONFIG_DIR); print(cfg.model.name)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config_dir, model = proc.stdout.split()
    assert Path(config_dir) == site / "noodlenext" / "conf"
    assert model == "convnext_base.fb_in22k_ft_in1k_384"

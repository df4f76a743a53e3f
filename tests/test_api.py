"""The public Python API: lazy re-exports, the README's example, and one registry for heatmap methods."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import noodlenext
from noodlenext.explain import BaseCAM, HeatmapSettings, ScoreCAM, create_cam, explain_batch, list_cams
from noodlenext.explain import base as cam_base

REPO = Path(__file__).resolve().parent.parent
PUBLIC = (
    "NoodleDataModule", "NoodleClassifier", "load_classifier", "ScoreCAM", "GradCAM", "BaseCAM",
    "create_cam", "list_cams", "heatmap_facts", "PhotoExplainer", "ChatSession", "load_backend",
    "HeatmapSettings",
)  # fmt: skip


@pytest.mark.slow
def test_import_noodlenext_loads_neither_torch_nor_lightning() -> None:
    code = (
        "import sys, noodlenext; print(sorted(m for m in ('torch', 'lightning', 'timm') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.strip() == "[]"


def test_every_public_name_resolves_and_is_listed() -> None:
    assert set(PUBLIC) <= set(noodlenext.__all__)
    for name in noodlenext.__all__:
        assert getattr(noodlenext, name) is not None, name
    assert set(PUBLIC) <= set(dir(noodlenext))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = noodlenext.nope


def test_subpackages_export_lazily_too() -> None:
    from noodlenext import callbacks, data, explain, llm, models

    for package in (callbacks, data, explain, llm, models):
        assert package.__all__ and all(getattr(package, name) is not None for name in package.__all__)


def _readme_python_blocks() -> list[str]:
    section = REPO.joinpath("README.md").read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.slow
def test_readme_python_api_example_runs(tmp_path: Path) -> None:
    example, new_method = _readme_python_blocks()
    check = (
        "\nassert maps.shape == (2, 64, 64) and 0 <= maps.min() and maps.max() <= 1"
        "\nassert analysis.predicted in data.class_names"
        "\nassert set(analysis.heatmaps) == {'scorecam', 'gradcam'}"
        "\nassert 'activation' in list_cams()"
        "\nassert create_cam('activation', model)(images, [0, 1]).shape == (2, 64, 64)"
    )
    script = tmp_path / "example.py"
    script.write_text(example + new_method + check)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "['gradcam', 'scorecam']" in proc.stdout


@pytest.fixture
def corner_method() -> Iterator[type[BaseCAM]]:
    """A new heatmap method in a few lines: all the heat in the top-left quarter."""

    @cam_base.register_cam
    class TopLeft(BaseCAM):
        name = "test_top_left"

        def compute(self, images: torch.Tensor, targets: object) -> torch.Tensor:
            maps = torch.zeros(len(images), *images.shape[-2:])
            maps[:, : images.shape[-2] // 2, : images.shape[-1] // 2] = 1.0
            return maps

    yield TopLeft
    cam_base._REGISTRY.pop("test_top_left")


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))  # fmt: skip


def test_a_registered_method_is_chosen_by_name_everywhere(corner_method: type[BaseCAM]) -> None:
    model = tiny_cnn()
    assert "test_top_left" in list_cams() and {"scorecam", "gradcam"} <= set(list_cams())
    assert isinstance(create_cam("test_top_left", model, HeatmapSettings(target_layer="2")), corner_method)
    (maps,) = explain_batch(model, torch.zeros(1, 3, 16, 16), [0], ["test_top_left"], HeatmapSettings("2"))
    assert maps["test_top_left"].facts.peak_region == "upper left"


def test_create_cam_passes_the_shared_settings() -> None:
    cam = create_cam("scorecam", tiny_cnn(), HeatmapSettings(target_layer="2", top_k=3, mask_batch_size=5))
    assert isinstance(cam, ScoreCAM) and (cam.top_k, cam.batch_size) == (3, 5)
    assert cam.target_layer is cam.model[2]


def test_an_unknown_method_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'nope' is not known; use one of gradcam, scorecam"):
        create_cam("nope", tiny_cnn())


@pytest.mark.parametrize("settings", [{"top_k": 0}, {"mask_batch_size": -1}, {"top_k": 2.5}])
def test_bad_heatmap_settings_name_the_option(settings: dict) -> None:
    with pytest.raises(ValueError, match=r"explain\.(top_k|mask_batch_size)="):
        HeatmapSettings.of(settings)
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['topk'\]"):
        HeatmapSettings.of({"topk": 3})

"""Heatmap methods by name, as timm's `create_model`: `create_cam("scorecam", model, settings)`."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from noodlenext.explain.base import BaseCAM, registered_cams
from noodlenext.explain.gradcam import GradCAM
from noodlenext.explain.scorecam import ScoreCAM
from noodlenext.explain.settings import HeatmapSettings

__all__ = ["GradCAM", "ScoreCAM", "create_cam", "list_cams", "parse_methods"]


def list_cams() -> list[str]:
    """The names of every registered heatmap method, sorted."""
    return sorted(registered_cams())


def create_cam(name: str, model: nn.Module, settings: HeatmapSettings | None = None) -> BaseCAM:
    """The method called `name` for `model`, built with the shared heatmap settings."""
    cams = registered_cams()
    if name not in cams:
        raise ValueError(f"heatmap method {name!r} is not known; use one of {', '.join(sorted(cams))}")
    return cams[name].from_settings(model, settings or HeatmapSettings())


def parse_methods(method: str | Sequence[str]) -> tuple[str, ...]:
    """`both` | `all` | a method name | a list of them -> a tuple of registered method names.

    `both` is ScoreCAM and GradCAM (the gallery's default); `all` is every registered method.
    """
    if method == "both":
        methods: tuple[str, ...] = (ScoreCAM.name, GradCAM.name)
    elif method == "all":
        methods = tuple(list_cams())
    else:
        methods = (method,) if isinstance(method, str) else tuple(method)
    unknown = [m for m in methods if m not in registered_cams()]
    if unknown or not methods:
        raise ValueError(f"method={method!r}: use {', '.join(list_cams())}, both or all")
    return methods

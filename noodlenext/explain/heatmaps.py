"""Heatmaps for a batch of images: each method's map with its facts (one entry point for every caller)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from noodlenext.explain.facts import HeatmapFacts, heatmap_facts
from noodlenext.explain.registry import create_cam, parse_methods
from noodlenext.explain.settings import HeatmapSettings


@dataclass
class Heatmap:
    """One method's map for one image: (H, W) in [0, 1] at the model's input size, and its facts."""

    method: str
    cam: np.ndarray
    facts: HeatmapFacts

    @classmethod
    def of(cls, method: str, cam: torch.Tensor) -> Heatmap:
        """One method's map (H, W), as a CAM returns it, with its facts."""
        return cls(method, cam.numpy(), heatmap_facts(cam))


def explain_batch(
    model: nn.Module,
    images: torch.Tensor,
    targets: Sequence[int],
    methods: str | Sequence[str] = "both",
    settings: HeatmapSettings | None = None,
) -> list[dict[str, Heatmap]]:
    """Per image, {method: Heatmap} for its target class; model is a timm model or a NoodleClassifier."""
    maps: dict[str, torch.Tensor] = {}
    for method in parse_methods(methods):
        with create_cam(method, model, settings) as cam:
            maps[method] = cam(images, list(targets))
    return [{m: Heatmap.of(m, maps[m][i]) for m in maps} for i in range(len(images))]

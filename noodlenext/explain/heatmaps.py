"""Heatmaps for a batch of images: ScoreCAM and/or GradCAM maps with their facts (one entry point)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from noodlenext.explain.facts import HeatmapFacts, heatmap_facts
from noodlenext.explain.gradcam import gradcam
from noodlenext.explain.layers import reshape_transform, target_layer
from noodlenext.explain.scorecam import ScoreCAM

METHODS = ("scorecam", "gradcam")


@dataclass
class Heatmap:
    """One method's map for one image: (H, W) in [0, 1] at the model's input size, and its facts."""

    method: str
    cam: np.ndarray
    facts: HeatmapFacts


def parse_methods(method: str | Sequence[str]) -> tuple[str, ...]:
    """`both` | `scorecam` | `gradcam` | a list of them -> a tuple of method names."""
    methods = METHODS if method == "both" else ((method,) if isinstance(method, str) else tuple(method))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"method={method!r}: use scorecam, gradcam or both")
    return methods


def explain_batch(
    model: nn.Module,
    images: torch.Tensor,
    targets: Sequence[int],
    methods: str | Sequence[str] = "both",
    layer_path: str | None = None,
    top_k: int | None = None,
    batch_size: int | None = None,
) -> list[dict[str, Heatmap]]:
    """Per image, {method: Heatmap} for the target class; model is a timm model or a NoodleClassifier."""
    net = getattr(model, "net", model)
    layer = target_layer(net, layer_path)
    reshape = reshape_transform(net)
    device = next(net.parameters()).device
    images = images.to(device)
    maps: dict[str, torch.Tensor] = {}
    for method in parse_methods(methods):
        if method == "scorecam":
            with ScoreCAM(net, layer, reshape, batch_size=batch_size, top_k=top_k) as cam:
                maps[method] = cam(images, list(targets))
        else:
            maps[method] = gradcam(net, layer, images, list(targets), reshape)
    return [
        {m: Heatmap(m, maps[m][i].numpy(), heatmap_facts(maps[m][i])) for m in maps}
        for i in range(len(images))
    ]

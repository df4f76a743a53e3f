"""Models whose behaviour is known, for the evidence and probe tests: a classifier that only looks at
two quadrants of the photo."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noodlenext.explain.settings import HeatmapSettings

SIZE = 32
NAMES = ["ramen", "udon", "soba"]
QUADRANTS = HeatmapSettings(target_layer="quadrants")
GRID = 4  # the toy model's feature grid


class Quadrants(nn.Module):
    """Pixel energy pooled on a 4x4 grid (as a CNN's last stage), in two channels: channel 0 keeps the
    top-left quadrant's cells, channel 1 the bottom-right's."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.pool = size // GRID
        masks = torch.zeros(1, 2, GRID, GRID)
        masks[0, 0, : GRID // 2, : GRID // 2] = 1
        masks[0, 1, GRID // 2 :, GRID // 2 :] = 1
        self.register_buffer("masks", masks)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d((x**2).mean(1, keepdim=True), self.pool) * self.masks


def identity_conv() -> nn.Conv2d:
    """A 1x1 conv that passes RGB through unchanged: a layer for the maps to explain, with parameters
    for the gradients to reach."""
    conv = nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3)[:, :, None, None])
        conv.bias.zero_()
    return conv


class QuadrantModel(nn.Module):
    """Logits: ramen = scale * top-left energy, udon = scale * bottom-right energy, soba = 0.

    A 1x1 conv (identity, so gradients flow to a parameter) feeds `quadrants`, the layer the maps explain.
    forward_features / forward_head follow timm, so the model can also be a feature index's.
    """

    def __init__(self, size: int = SIZE, scale: float = 2.0) -> None:
        super().__init__()
        self.conv = identity_conv()
        self.quadrants = Quadrants(size)
        self.drop = nn.Dropout(0.5)  # only there to show the model runs in eval mode
        self.scale = scale

    def forward_features(self, x: Tensor) -> Tensor:
        return self.quadrants(self.drop(self.conv(x)))

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        pooled = 4 * features.mean((2, 3))  # the mean energy of each quadrant
        if pre_logits:
            return pooled
        return torch.cat([self.scale * pooled, torch.zeros_like(pooled[:, :1])], 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def images(n: int = 3, size: int = SIZE, top_left: float = 2.0, seed: int = 0) -> Tensor:
    """Noise with `top_left` times the amplitude in the top-left quadrant: the model says ramen."""
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    x[:, :, : size // 2, : size // 2] *= top_left
    return x


def quadrant_map(n: int, corner: str, size: int = SIZE) -> Tensor:
    cam = torch.zeros(n, size, size)
    h = size // 2
    if corner == "top-left":
        cam[:, :h, :h] = 1
    else:
        cam[:, h:, h:] = 1
    return cam

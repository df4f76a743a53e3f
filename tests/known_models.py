"""Tiny timm models whose behaviour is known exactly, registered with timm so that NoodleClassifier,
its checkpoints and `load_classifier` build them like any other backbone (in this process only)."""

from __future__ import annotations

from typing import Any

import torch
from timm.models import register_model
from torch import Tensor, nn

LEFT_HALF = "noodle_probe_left_half"
MEAN_COLOUR = "noodle_probe_mean_colour"


class LeftHalfProbe(nn.Module):
    """Two classes; logits (s*a, -s*a) with a the mean of the image's left half (all channels): it
    never looks at the right half, so a horizontal flip shows it the mirrored right half instead."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        if num_classes != 2:
            raise ValueError("the left-half probe has two classes")
        self.scale = nn.Parameter(torch.ones(()))

    def get_classifier(self) -> nn.Module:  # timm's head accessor (the optimizer's head group)
        return nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        a = x[..., : x.shape[-1] // 2].mean(dim=(1, 2, 3))
        return torch.stack([a, -a], dim=1) * self.scale


class MeanColourProbe(nn.Module):
    """logits = scale * (the image's mean colour @ weight): a linear model of the mean RGB whose logits
    are multiplied by `scale` (set it to 20 for a deliberately over-confident model)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.head = nn.Linear(3, num_classes, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(num_classes, 3))
        self.register_buffer("scale", torch.ones(()))

    def get_classifier(self) -> nn.Module:  # timm's head accessor (the optimizer's head group)
        return self.head

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.head(x.mean(dim=(2, 3)))


@register_model
def noodle_probe_left_half(pretrained: bool = False, num_classes: int = 2, **kwargs: Any) -> nn.Module:
    return LeftHalfProbe(num_classes)


@register_model
def noodle_probe_mean_colour(pretrained: bool = False, num_classes: int = 3, **kwargs: Any) -> nn.Module:
    return MeanColourProbe(num_classes)

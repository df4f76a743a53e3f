"""Test-time augmentation: classify a few views of each image and average their probabilities.

`none`: the image alone. `flip`: the image and its horizontal mirror. `flip_crops`: those and five crops
(the four corners and the centre) each CROP_SCALE of the side, resized back to the input size, 7 views.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

TTA_MODES = ("none", "flip", "flip_crops")
CROP_SCALE = 0.9


def check_tta(tta: str | None) -> str:
    """`none`, `flip` or `flip_crops` (None is none), or a clear error naming the option."""
    value = "none" if tta is None else str(tta).lower()
    if value not in TTA_MODES:
        raise ValueError(
            f"tta={tta!r}: use none, flip (the image and its mirror) or flip_crops (plus five "
            f"{CROP_SCALE:.0%} crops), whose probabilities are averaged"
        )
    return value


def five_crops(x: Tensor, scale: float = CROP_SCALE) -> list[Tensor]:
    """Top-left, top-right, bottom-left, bottom-right and centre crops of `scale` of each side of a
    (B, C, H, W) batch, each resized back to H x W (bilinear, antialiased)."""
    h, w = x.shape[-2:]
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = (h - ch) // 2, (w - cw) // 2
    corners = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), (top, left)]
    return [
        F.interpolate(x[..., i : i + ch, j : j + cw], size=(h, w), mode="bilinear", antialias=True)
        for i, j in corners
    ]


def tta_views(x: Tensor, tta: str | None = "none") -> list[Tensor]:
    """The batches a TTA mode classifies, the image itself first."""
    mode = check_tta(tta)
    if mode == "none":
        return [x]
    views = [x, x.flip(-1)]
    if mode == "flip_crops":
        views += five_crops(x)
    return views


def tta_logits(forward: Callable[[Tensor], Tensor], x: Tensor, tta: str | None = "none") -> Tensor:
    """(V, B, classes) float logits of each view (one forward pass per view, so memory stays that of
    one batch)."""
    return torch.stack([forward(v).float() for v in tta_views(x, tta)])


def mean_log_probs(view_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """log of the views' mean softmax(logits / temperature): (V, B, C) -> (B, C). Its softmax is the
    averaged probabilities, so it stands in for logits (argmax, cross-entropy, calibration error);
    with one view it is log_softmax(logits / temperature)."""
    log_probs = (view_logits.float() / temperature).log_softmax(dim=-1)
    return torch.logsumexp(log_probs, dim=0) - math.log(view_logits.shape[0])


def tta_probabilities(
    forward: Callable[[Tensor], Tensor], x: Tensor, tta: str | None = "none", temperature: float = 1.0
) -> Tensor:
    """(B, classes) probabilities: softmax(logits / temperature) averaged over the TTA views."""
    return mean_log_probs(tta_logits(forward, x, tta), temperature).exp()

"""Evidence the classifier produces itself: contrastive maps, reruns on edited photos, maps against chance.

- `contrastive_maps`: where the evidence for one class OVER another lies (Grad-CAM of the logit difference).
- `counterfactuals`: the classifier rerun with the hot region hidden (mean colour), and with only it kept.
- `trust_check`: each map's deletion/insertion AUC against a random map's on the same image.
- `map_agreement`: Pearson r of two maps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noodlenext.explain.base import eval_mode
from noodlenext.explain.evidence import HOT_THRESHOLD, Counterfactual, MapTrust
from noodlenext.explain.faithfulness import deletion_insertion, random_maps, removed
from noodlenext.explain.gradcam import GradCAM
from noodlenext.explain.layers import target_layer_path, unwrap
from noodlenext.explain.settings import HeatmapSettings

# How the evidence hides pixels (counterfactuals, probes, trust check): the mean colour. A blur keeps a
# region's colour, and at small inputs (RISE's sigma is 1.4 px at 64 px) barely changes anything: the
# quickstart's model kept 0.63 of its 0.64 mean target probability on fully blurred photos, so every map
# and the random one tied and "hiding the hot region" never mattered.
HIDE = "zero"
# The random map's grid when the model does not say its feature stride (7x7: an ImageNet CNN at 224 px).
DEFAULT_RANDOM_GRID = 7


class LogitDifference:
    """A pytorch-grad-cam target: logit[cls] - logit[versus] of one image's logits (C,)."""

    def __init__(self, cls: int, versus: int) -> None:
        self.cls, self.versus = cls, versus

    def __call__(self, logits: Tensor) -> Tensor:
        return logits[..., self.cls] - logits[..., self.versus]

    def __repr__(self) -> str:
        return f"LogitDifference({self.cls}, {self.versus})"


class ContrastiveGradCAM(GradCAM):
    """Grad-CAM of a logit difference: the pixels that make the model prefer `cls` over `versus`.

    Not registered as a heatmap method (it needs a second class per image). Call it with images
    (B, 3, H, W), normalised as the model takes them, the classes and the classes they are contrasted
    with (one each per image); returns (B, H, W) float32 on the CPU in [0, 1] (all zero where nothing
    favours `cls`). pytorch-grad-cam's ReLU keeps only the evidence FOR cls over versus.
    """

    name = "contrastive_gradcam"

    def __call__(  # type: ignore[override]
        self,
        images: Tensor,
        targets: Sequence[int] | Tensor,
        versus: Sequence[int] | Tensor | None = None,
    ) -> Tensor:
        classes = [int(c) for c in torch.as_tensor(targets).reshape(-1).tolist()]
        if versus is None:
            raise ValueError("a contrastive map needs `versus`: the class each image is contrasted with")
        others = [int(v) for v in torch.as_tensor(versus).reshape(-1).tolist()]
        if not len(classes) == len(others) == len(images):
            raise ValueError(f"{len(images)} images, {len(classes)} classes and {len(others)} versus classes")
        if any(c == v for c, v in zip(classes, others, strict=True)):
            raise ValueError(f"a class contrasted with itself has no evidence: {classes} vs {others}")
        return super().__call__(images, list(zip(classes, others, strict=True)))

    def output_targets(self, targets: Sequence) -> list[Callable[[Tensor], Tensor]] | None:  # type: ignore[override]
        return [LogitDifference(c, v) for c, v in targets]


def contrastive_maps(
    model: nn.Module,
    images: Tensor,
    classes: Sequence[int] | Tensor,
    versus: Sequence[int] | Tensor,
    settings: HeatmapSettings | None = None,
) -> Tensor:
    """Where the evidence for `classes[i]` over `versus[i]` lies in image i: (B, H, W) in [0, 1] on the CPU.

    model: a timm model (ConvNeXt, ViT) or a NoodleClassifier (its `.net`); images: (B, 3, H, W) as the
    model takes them; settings: the shared heatmap settings (their target layer; default: the
    architecture's). The model's train/eval flags and parameters' `.grad` are left as they were.
    """
    cam = ContrastiveGradCAM(model, HeatmapSettings.of(settings).target_layer)
    return cam(images, classes, versus)


def _device(model: nn.Module, fallback: torch.device) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else fallback


def _as_maps(cams: Tensor | np.ndarray, size: tuple[int, int], device: torch.device) -> Tensor:
    """(B, 1, H, W) float32 on `device`, resized bilinearly to `size` when it differs."""
    cams = torch.as_tensor(cams).to(device, torch.float32)
    cams = cams.reshape(cams.shape[0], 1, *cams.shape[-2:])
    if cams.shape[-2:] != size:
        cams = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
    return cams


def counterfactuals(
    model: nn.Module,
    images: Tensor,
    cams: Tensor | np.ndarray,
    predicted: Sequence[int] | Tensor,
    class_names: Sequence[str],
    threshold: float = HOT_THRESHOLD,
) -> list[Counterfactual]:
    """The classifier rerun on two edits of each image: the hot region hidden, and only it kept.

    images: (B, 3, H, W) as the model takes them; cams: (B, H, W) maps (resized to H x W if they differ);
    predicted: the class index each map is of; class_names: the model's classes in index order. The hot
    region is the pixels with heat >= threshold * the map's peak (and > 0, so an all-zero map has none).
    "Hidden" replaces the hot pixels by the mean colour (`HIDE`: zero in normalised space, the same
    baseline as the trust check's deletion AUC), "kept" replaces every other pixel. One forward pass over
    3B images, in eval mode without gradients; the model's train/eval flags are restored.
    """
    net = unwrap(model)
    device = _device(net, images.device)
    x = images.to(device, torch.float32)
    b, _, h, w = x.shape
    maps = _as_maps(cams, (h, w), device)
    if maps.shape[0] != b:
        raise ValueError(f"{b} images but {maps.shape[0]} maps")
    targets = [int(t) for t in torch.as_tensor(predicted).reshape(-1).tolist()]
    if len(targets) != b:
        raise ValueError(f"{b} images but {len(targets)} predicted classes")
    hot = (maps >= threshold * maps.amax(dim=(-2, -1), keepdim=True)) & (maps > 0)  # (B, 1, H, W)
    with eval_mode(net), torch.inference_mode():
        soft = removed(x, HIDE)
        edited = torch.cat([x, torch.where(hot, soft, x), torch.where(hot, x, soft)])
        probs = net(edited).float().softmax(-1).cpu().numpy().astype(np.float64)
    if probs.shape[1] != len(class_names):
        raise ValueError(f"{len(class_names)} class names for a model with {probs.shape[1]} classes")
    named = lambda p: {n: float(v) for n, v in zip(class_names, p, strict=True)}  # noqa: E731
    out = []
    for i, t in enumerate(targets):
        original, hidden, kept = probs[i], probs[b + i], probs[2 * b + i]
        out.append(
            Counterfactual(
                original=named(original),
                hidden=named(hidden),
                kept=named(kept),
                predicted=class_names[t],
                drop=float(original[t] - hidden[t]),
                hot_area=float(hot[i].float().mean()),
            )
        )
    return out


def random_grid(model: nn.Module, size: tuple[int, int], target_layer: str | None = None) -> tuple[int, int]:
    """The native resolution of the model's maps at `size` (H, W): the input over the feature stride of
    the explained layer (`target_layer`, or the default one `layers.target_layer` picks; ConvNeXt's
    stages 4-32, ViT 16), at least 2x2; DEFAULT_RANDOM_GRID square when the model reports no strides."""
    info = getattr(unwrap(model), "feature_info", None)
    try:
        strides = [(str(i["module"]), int(i["reduction"])) for i in info]  # type: ignore[union-attr]
        stride = strides[-1][1]
    except (TypeError, KeyError, IndexError, ValueError):
        return DEFAULT_RANDOM_GRID, DEFAULT_RANDOM_GRID
    try:
        path = target_layer_path(model, target_layer)
    except (ValueError, StopIteration):
        path = ""
    inside = [s for module, s in strides if path == module or path.startswith(module + ".")]
    stride = inside[-1] if inside else stride
    return max(2, math.ceil(size[0] / stride)), max(2, math.ceil(size[1] / stride))


def trust_check(
    model: nn.Module,
    images: Tensor,
    cams_by_method: dict[str, Tensor | np.ndarray],
    targets: Sequence[int] | Tensor,
    seed: int = 0,
    steps: int = 20,
    grid: tuple[int, int] | None = None,
    target_layer: str | None = None,
) -> list[dict[str, MapTrust]]:
    """Per image, {method: MapTrust}: each map's deletion/insertion AUC against a random map's.

    images: (B, 3, H, W) as the model takes them; cams_by_method: {method: (B, H, W) maps}; targets: the
    class each map is of. The random map is one seeded random smooth map per image (`random_maps`, on
    `grid` cells, default `random_grid(model, (H, W), target_layer)`: the explained layer's grid), shared
    by every method, so methods are judged against the same chance. steps: the AUCs' resolution (2 *
    steps forward passes per image and map). target_layer: the maps' layer path (None: the default).
    """
    b, _, h, w = images.shape
    # Smooth noise on the map's own grid, not per-pixel noise: a CAM deletes whole blobs, and scattered
    # random pixels barely change an image, a straw man nearly every map beats.
    chance = random_maps(b, h, w, seed, grid or random_grid(model, (h, w), target_layer))
    net = unwrap(model)
    rand = deletion_insertion(net, images, chance, targets, steps=steps, baseline=HIDE)
    scores = {
        m: deletion_insertion(net, images, cams, targets, steps=steps, baseline=HIDE)
        for m, cams in cams_by_method.items()
    }
    return [
        {
            m: MapTrust(
                method=m,
                deletion=float(r["deletion"][i]),
                insertion=float(r["insertion"][i]),
                random_deletion=float(rand["deletion"][i]),
                random_insertion=float(rand["insertion"][i]),
            )
            for m, r in scores.items()
        }
        for i in range(b)
    ]


def map_agreement(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """Pearson r of two maps of the same shape (-1..1); 0.0 when either is constant (it ranks nothing)."""
    x = np.asarray(a.detach().cpu() if isinstance(a, Tensor) else a, dtype=np.float64).ravel()
    y = np.asarray(b.detach().cpu() if isinstance(b, Tensor) else b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"maps of {np.shape(a)} and {np.shape(b)} cannot be compared")
    x, y = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else 0.0

"""All the evidence for a batch of explained photos, in one call: `gather_evidence`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from noodlenext.explain.appearance import appearance
from noodlenext.explain.base import eval_mode
from noodlenext.explain.causes import occlusion_scan, whole_photo_changes
from noodlenext.explain.counterfactuals import contrastive_maps, counterfactuals, map_agreement, trust_check
from noodlenext.explain.evidence import Counterfactual, Evidence, primary_method
from noodlenext.explain.facts import heatmap_facts
from noodlenext.explain.heatmaps import Heatmap
from noodlenext.explain.layers import unwrap
from noodlenext.explain.neighbours import FeatureIndex
from noodlenext.explain.settings import HeatmapSettings
from noodlenext.models.calibration import rescale_probabilities


def _ints(values: Sequence[int] | Tensor) -> list[int]:
    return [int(v) for v in torch.as_tensor(values).reshape(-1).tolist()]


def _on_scale(cf: Counterfactual, temperature: float) -> Counterfactual:
    """The counterfactual's probabilities (the network's plain softmax) at the model's temperature."""
    if temperature == 1.0:
        return cf

    def scale(d: dict[str, float]) -> dict[str, float]:
        return dict(
            zip(d, rescale_probabilities(torch.tensor(list(d.values())), temperature).tolist(), strict=True)
        )

    original, hidden, kept = scale(cf.original), scale(cf.hidden), scale(cf.kept)
    return replace(
        cf, original=original, hidden=hidden, kept=kept, drop=original[cf.predicted] - hidden[cf.predicted]
    )


def _rgb(photo: Image.Image | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The photo as (H, W, 3) uint8 RGB at `size` (H, W)."""
    image = photo if isinstance(photo, Image.Image) else Image.fromarray(np.asarray(photo)[..., :3])
    image = image.convert("RGB")
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(image)


def gather_evidence(
    model: nn.Module,
    images: Tensor,
    photos: Sequence[Image.Image | np.ndarray],
    predicted: Sequence[int] | Tensor,
    true_labels: Sequence[int | None] | None,
    heatmaps: Sequence[dict[str, Heatmap]],
    *,
    index: FeatureIndex | None = None,
    settings: HeatmapSettings | None = None,
    files: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    k: int = 5,
    seed: int = 0,
    contrastive_out: list[np.ndarray] | None = None,
    causes: bool = True,
) -> list[Evidence]:
    """Per image, the Evidence the classifier itself produces.

    model: a NoodleClassifier or a timm model; images: (B, 3, H, W) normalised, as the model takes them;
    photos: the same images as PIL RGB (or (H, W, 3) uint8) at the model's input size; predicted: the
    class index each heatmap is of (normally the argmax); true_labels: class index or None per image
    (None for all unknown); heatmaps: `explain_batch(...)` output, {method: Heatmap} per image.
    index: nearest training photos come from it (k of them; a query's own file is skipped); settings:
    the heatmap settings (target layer for the contrastive map); files: each image's name (default
    `image <n>`); class_names: default the model's. The contrast class is the true class when the
    prediction is wrong, else the runner-up; counterfactuals and appearance use the ScoreCAM map (or the
    first method given); every method's map gets a trust check (seeded random map); ScoreCAM/GradCAM
    agreement when both are given. contrastive_out: a list that receives each image's contrastive map
    (H, W) in [0, 1], for overlays. Probabilities (the photo's and its counterfactuals') are on the
    model's scale: calibrated by a NoodleClassifier's temperature when it applies one. causes: also
    hide one part at a time and change the whole photo (`explain.causes`: 56 forward passes per image),
    the evidence that leads the lines.
    """
    names = list(class_names if class_names is not None else getattr(model, "class_names", []) or [])
    if not names:
        raise ValueError("class_names are needed: the model has none (pass class_names=...)")
    b = len(images)
    pred = _ints(predicted)
    # None or a negative label (NoodleImages' -1) is unknown.
    truth = [
        None if t is None or int(t) < 0 else int(t)
        for t in (true_labels if true_labels is not None else [None] * b)
    ]
    files = list(files) if files is not None else [f"image {i + 1}" for i in range(b)]
    if not len(photos) == len(pred) == len(truth) == len(heatmaps) == len(files) == b:
        raise ValueError(
            f"{b} images, {len(photos)} photos, {len(pred)} predictions, {len(truth)} true labels, "
            f"{len(heatmaps)} heatmaps and {len(files)} files: one each per image"
        )
    methods = list(heatmaps[0]) if b else []
    if b and (not methods or any(list(h) != methods for h in heatmaps)):
        raise ValueError("every image needs the same heatmap methods, at least one")
    if b == 0:
        return []

    net = unwrap(model)
    with eval_mode(net), torch.inference_mode():
        param = next(net.parameters(), None)
        device = param.device if param is not None else images.device
        logits = net(images.to(device)).float()
    # On the model's own scale: a NoodleClassifier's calibrated probabilities (softmax(logits / T) with
    # calibration=temperature), as its test step, predictions.csv and the heatmap gallery report them.
    temperature = float(getattr(model, "applied_temperature", 1.0))
    probs = (logits / temperature).softmax(-1).cpu().numpy().astype(np.float64)
    if probs.shape[1] != len(names):
        raise ValueError(f"{len(names)} class names for a model with {probs.shape[1]} classes")

    # The contrast: the true class when wrong, else the runner-up (the most probable class but this one).
    contrast = []
    for i, (p, t) in enumerate(zip(pred, truth, strict=True)):
        if t is not None and t != p:
            contrast.append(t)
        else:
            others = probs[i].copy()
            others[p] = -np.inf
            contrast.append(int(others.argmax()))

    primary = primary_method(methods)  # the map the counterfactuals and the appearance are of
    cams = {m: np.stack([h[m].cam for h in heatmaps]) for m in methods}
    # The model as given, not `net`: a NoodleClassifier's input size picks the default layer.
    contrastive = contrastive_maps(model, images, pred, contrast, settings)
    if contrastive_out is not None:
        contrastive_out.extend(m.numpy() for m in contrastive)
    effects = [_on_scale(e, temperature) for e in counterfactuals(net, images, cams[primary], pred, names)]
    layer = HeatmapSettings.of(settings).target_layer
    trust = trust_check(model, images, cams, pred, seed=seed, target_layer=layer)
    neighbours = index.nearest(images, k=k, files=files) if index is not None else [[] for _ in range(b)]
    both = "scorecam" in methods and "gradcam" in methods
    causal: list = [None] * b
    changes: list[list] = [[] for _ in range(b)]
    if causes:
        h, w = images.shape[-2:]
        arrays = [_rgb(photo, (h, w)) for photo in photos]
        colours = index.class_colours() if index is not None else None
        causal = occlusion_scan(
            model,
            images,
            arrays,
            pred,
            truth,
            names,
            cams=cams[primary],
            method=primary,
            training_colours=colours,
            temperature=temperature,
        )
        changes = whole_photo_changes(model, images, pred, truth, names, temperature=temperature)

    out = []
    for i in range(b):
        out.append(
            Evidence(
                file=files[i],
                class_names=names,
                probabilities={n: float(v) for n, v in zip(names, probs[i], strict=True)},
                predicted=names[pred[i]],
                true_label=names[truth[i]] if truth[i] is not None else None,
                contrast_class=names[contrast[i]],
                facts={m: heatmaps[i][m].facts for m in methods},
                contrastive=heatmap_facts(contrastive[i]),
                counterfactual=effects[i],
                appearance=appearance(photos[i], cams[primary][i]),
                neighbours=neighbours[i],
                trust=trust[i],
                agreement=map_agreement(cams["scorecam"][i], cams["gradcam"][i]) if both else None,
                causal=causal[i],
                changes=changes[i],
            )
        )
    return out

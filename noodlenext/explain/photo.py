"""One photo in, everything a person (or an LLM) needs out: prediction, probabilities, heatmaps, facts.

The chat CLI and the web app share this, so a photo is classified and explained the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from noodlenext.core.devices import resolve_device
from noodlenext.data.transforms import eval_transform
from noodlenext.explain.heatmaps import Heatmap, explain_batch
from noodlenext.explain.overlays import overlay
from noodlenext.explain.registry import parse_methods
from noodlenext.explain.settings import HeatmapSettings
from noodlenext.models.classifier import load_classifier


@dataclass
class PhotoAnalysis:
    """The classifier's view of one photo; heatmaps are of the predicted class, at the model's input size."""

    photo: Image.Image  # resized to the model's input size, as the heatmaps
    class_names: list[str]
    probabilities: dict[str, float]
    predicted: str
    heatmaps: dict[str, Heatmap]

    @property
    def confidence(self) -> float:
        return self.probabilities[self.predicted]

    def overlay(self, method: str = "scorecam", alpha: float = 0.5) -> Image.Image:
        return overlay(self.photo, self.heatmaps[method].cam, alpha)

    def save_images(self, folder: Path, method: str = "scorecam") -> list[str]:
        """photo.png and <method>.png in folder: the images an LLM is shown."""
        folder.mkdir(parents=True, exist_ok=True)
        photo_path, overlay_path = folder / "photo.png", folder / f"{method}.png"
        self.photo.save(photo_path)
        self.overlay(method).save(overlay_path)
        return [str(photo_path), str(overlay_path)]


class PhotoExplainer:
    """A checkpoint loaded once; each call classifies one RGB photo and computes its heatmaps.

    Args:
        ckpt_path: a noodlenext checkpoint (the model, classes and transform are rebuilt from it).
        device: `auto` (a CUDA GPU when there is one), `cpu`, `cuda:1`, ...
        methods: heatmap methods to compute (`scorecam`, `gradcam`, `both`, or a list); ScoreCAM is
            needed, since its facts are what an explanation is built on.
        settings: the shared heatmap settings (target layer, top-k, mask batch size).
    """

    def __init__(
        self,
        ckpt_path: str | Path,
        device: str = "auto",
        methods: str | list[str] = "scorecam",
        settings: HeatmapSettings | None = None,
    ) -> None:
        self.model = load_classifier(ckpt_path).to(resolve_device(device))
        self.methods = parse_methods(methods)
        if "scorecam" not in self.methods:
            raise ValueError(f"methods={methods!r}: the LLM's facts need scorecam")
        self.settings = HeatmapSettings.of(settings)
        hp = self.model.hparams
        self.image_size = hp.image_size
        self.transform = eval_transform(hp.image_size, hp.mean, hp.std)

    @property
    def class_names(self) -> list[str]:
        return list(self.model.class_names)

    def __call__(self, photo: Image.Image) -> PhotoAnalysis:
        x = self.transform(photo)[None].to(self.model.device)
        with torch.no_grad():
            probs = self.model(x).float().softmax(dim=1)[0].cpu()
        pred = int(probs.argmax())
        heatmaps = explain_batch(self.model, x, [pred], self.methods, self.settings)[0]
        names = self.class_names
        return PhotoAnalysis(
            photo=photo.resize((self.image_size, self.image_size)),
            class_names=names,
            probabilities=dict(zip(names, probs.tolist(), strict=True)),
            predicted=names[pred],
            heatmaps=heatmaps,
        )

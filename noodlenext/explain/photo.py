"""One photo in, everything a person (or an LLM) needs out: prediction, probabilities, heatmaps, facts.

The chat CLI and the web app share this, so a photo is classified and explained the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from noodlenext.data.transforms import eval_transform
from noodlenext.explain.heatmaps import Heatmap, explain_batch, parse_methods
from noodlenext.explain.overlay import overlay
from noodlenext.llm.prompt import ExplainRequest
from noodlenext.model import load_classifier
from noodlenext.predict import resolve_device


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

    def request(
        self, file: str, true_label: str | None = None, images: list[str] | None = None
    ) -> ExplainRequest:
        """What the LLM is told about this photo (ScoreCAM facts)."""
        if true_label is not None and true_label not in self.class_names:
            raise ValueError(
                f"true_label={true_label!r} is not one of the checkpoint's classes {self.class_names}"
            )
        return ExplainRequest(
            file=file,
            class_names=self.class_names,
            probabilities=self.probabilities,
            predicted=self.predicted,
            facts=self.heatmaps["scorecam"].facts,
            true_label=true_label,
            images=images or [],
        )


class PhotoExplainer:
    """A checkpoint loaded once; each call classifies one RGB photo and computes its heatmaps."""

    def __init__(
        self,
        ckpt_path: str | Path,
        device: str = "auto",
        methods: str = "scorecam",
        target_layer: str | None = None,
        top_k: int | None = None,
        mask_batch_size: int | None = None,
    ) -> None:
        self.model = load_classifier(ckpt_path).to(resolve_device(device))
        self.methods = parse_methods(methods)
        if "scorecam" not in self.methods:
            raise ValueError(f"methods={methods!r}: the LLM's facts need scorecam")
        self.target_layer, self.top_k, self.mask_batch_size = target_layer, top_k, mask_batch_size
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
        heatmaps = explain_batch(
            self.model, x, [pred], self.methods, self.target_layer, self.top_k, self.mask_batch_size
        )[0]
        names = self.class_names
        return PhotoAnalysis(
            photo=photo.resize((self.image_size, self.image_size)),
            class_names=names,
            probabilities=dict(zip(names, probs.tolist(), strict=True)),
            predicted=names[pred],
            heatmaps=heatmaps,
        )

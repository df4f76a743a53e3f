"""One photo in, everything a person (or an LLM) needs out: prediction, probabilities, heatmaps, facts.

The chat CLI and the web app share this, so a photo is classified and explained the same way everywhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from noodlenext.core.devices import resolve_device
from noodlenext.data.transforms import eval_transform
from noodlenext.explain.evidence import Evidence
from noodlenext.explain.gather import gather_evidence
from noodlenext.explain.heatmaps import Heatmap, explain_batch
from noodlenext.explain.neighbours import FEATURE_INDEX_FILE, FeatureIndex
from noodlenext.explain.overlays import overlay
from noodlenext.explain.probes import PhotoProbe
from noodlenext.explain.registry import parse_methods
from noodlenext.explain.settings import HeatmapSettings
from noodlenext.models.calibration import rescale_probabilities
from noodlenext.models.classifier import load_classifier

log = logging.getLogger(__name__)


@dataclass
class PhotoAnalysis:
    """The classifier's view of one photo; heatmaps are of the predicted class, at the model's input size."""

    photo: Image.Image  # resized to the model's input size, as the heatmaps
    class_names: list[str]
    probabilities: dict[str, float]
    predicted: str
    heatmaps: dict[str, Heatmap]
    evidence: Evidence | None = None  # what the model's own tests say (noodlenext.explain.evidence)
    contrastive: np.ndarray | None = None  # (H, W) map of the predicted class over the contrast class
    inputs: torch.Tensor | None = None  # (1, 3, H, W): the photo as the model took it (for the probes)

    @property
    def confidence(self) -> float:
        return self.probabilities[self.predicted]

    def overlay(self, method: str = "scorecam", alpha: float = 0.5) -> Image.Image:
        """The photo with one map blended on: a heatmap method's, or `contrastive`."""
        cam = self.contrastive if method == "contrastive" else self.heatmaps[method].cam
        if cam is None:
            raise ValueError("no contrastive map: the analysis was made without evidence")
        return overlay(self.photo, cam, alpha)

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
        evidence: also gather the Evidence (contrastive map, counterfactuals, appearance, trust check and,
            when the checkpoint's run left `heatmaps/train_features.npz`, the nearest training photos).
        calibration: `temperature` (probabilities are softmax(logits / T), T fitted on the validation
            set and stored in the checkpoint; the evidence's too) or `none` (the raw softmax).
        trust_checkpoint: unpickle the checkpoint in full (it can run code) when it needs more than plain
            data; by default such a file is refused (`load_classifier`).
    """

    def __init__(
        self,
        ckpt_path: str | Path,
        device: str = "auto",
        methods: str | list[str] = "scorecam",
        settings: HeatmapSettings | None = None,
        evidence: bool = True,
        calibration: str = "temperature",
        trust_checkpoint: bool = False,
    ) -> None:
        model = load_classifier(ckpt_path, trust_checkpoint=trust_checkpoint)
        self.model = model.use(calibration=calibration).to(resolve_device(device))
        self.with_evidence = evidence
        self.index = _run_feature_index(Path(ckpt_path), self.model) if evidence else None
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

    def __call__(
        self, photo: Image.Image, true_label: str | None = None, file: str = "photo"
    ) -> PhotoAnalysis:
        """Classify and explain one RGB photo; `true_label` (a class name), when known, is what the
        contrastive map and the evidence compare the prediction with."""
        names = self.class_names
        if true_label is not None and true_label not in names:
            raise ValueError(f"true_label={true_label!r} is not one of the checkpoint's classes {names}")
        x = self.transform(photo)[None].to(self.model.device)
        with torch.no_grad():
            probs = self.model.probabilities(self.model(x))[0].cpu()
        pred = int(probs.argmax())
        heatmaps = explain_batch(self.model, x, [pred], self.methods, self.settings)[0]
        resized = photo.resize((self.image_size, self.image_size))
        evidence, contrastive = None, None
        if self.with_evidence:
            maps: list[np.ndarray] = []
            truth = names.index(true_label) if true_label is not None else None
            (evidence,) = gather_evidence(
                self.model, x, [resized], [pred], [truth], [heatmaps], index=self.index,
                settings=self.settings, files=[file], class_names=names, contrastive_out=maps,
            )  # fmt: skip
            contrastive = maps[0]
        probabilities = dict(zip(names, probs.tolist(), strict=True))
        if evidence is not None:
            evidence = _calibrated(evidence, probabilities, self.model.applied_temperature)
        return PhotoAnalysis(
            photo=resized,
            class_names=names,
            probabilities=probabilities,
            predicted=names[pred],
            heatmaps=heatmaps,
            evidence=evidence,
            contrastive=contrastive,
            inputs=x.cpu(),
        )

    def probe(self, analysis: PhotoAnalysis) -> PhotoProbe:
        """The tests the chat can run on demand about `analysis` (one of this explainer's)."""
        if analysis.evidence is None or analysis.inputs is None:
            raise ValueError("probes need an analysis made with evidence=True")
        method = "scorecam" if "scorecam" in analysis.heatmaps else next(iter(analysis.heatmaps))
        return PhotoProbe(
            self.model, analysis.inputs, analysis.photo, analysis.evidence, analysis.heatmaps[method].cam,
            self.settings, self.index,
        )  # fmt: skip


def _calibrated(evidence: Evidence, probabilities: dict[str, float], temperature: float) -> Evidence:
    """The evidence with the photo's calibrated probabilities and its counterfactuals' rescaled by the
    same temperature (gather_evidence reports the raw softmax), so every number a reader or an LLM is
    shown comes from one set of probabilities."""
    cf = evidence.counterfactual
    if temperature != 1.0 and cf is not None:

        def scale(d: dict[str, float]) -> dict[str, float]:
            values = rescale_probabilities(torch.tensor(list(d.values())), temperature)
            return dict(zip(d, values.tolist(), strict=True))

        original, hidden, kept = scale(cf.original), scale(cf.hidden), scale(cf.kept)
        drop = original[cf.predicted] - hidden[cf.predicted]
        cf = replace(cf, original=original, hidden=hidden, kept=kept, drop=drop)
    return replace(evidence, probabilities=dict(probabilities), counterfactual=cf)


def _run_feature_index(ckpt_path: Path, model: torch.nn.Module) -> FeatureIndex | None:
    """The training photos' features the checkpoint's run saved (HeatmapGallery), if they are there."""
    saved = ckpt_path.expanduser().resolve().parent.parent / "heatmaps" / FEATURE_INDEX_FILE
    if not saved.is_file():
        return None
    try:
        return FeatureIndex.load(saved, model)
    except (OSError, ValueError, KeyError) as err:
        log.warning("ignoring %s (%s): no nearest training photos", saved, err)
        return None

"""One photo in, everything a person (or an LLM) needs out: prediction, probabilities, heatmaps, facts.

The chat CLI and the web app share this, so a photo is classified and explained the same way everywhere.
`PhotoExplainer.steps` hands the work out as it is done, for a reader on a slow machine: the prediction
and GradCAM first (one forward and a short backward pass), then ScoreCAM with its progress (on a CPU an
exact map of a big model takes minutes), then the evidence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from noodlenext.core.devices import resolve_device
from noodlenext.core.durations import clock
from noodlenext.data.transforms import eval_transform
from noodlenext.explain.counterfactuals import map_agreement
from noodlenext.explain.evidence import Evidence, primary_method
from noodlenext.explain.gather import gather_evidence
from noodlenext.explain.heatmaps import Heatmap, explain_batch
from noodlenext.explain.neighbours import FEATURE_INDEX_FILE, FeatureIndex
from noodlenext.explain.overlays import overlay
from noodlenext.explain.probes import PhotoProbe
from noodlenext.explain.registry import parse_methods
from noodlenext.explain.scorecam import CAMProgress, ScoreCAM
from noodlenext.explain.settings import HeatmapSettings
from noodlenext.explain.tested import read_tested
from noodlenext.models.classifier import load_classifier

log = logging.getLogger(__name__)

# The evidence's forward passes, for its estimate: the trust check's deletion and insertion curves
# (2 x 21 images) for every map and a random one, then the contrastive map, counterfactuals and the rest.
TRUST_PASSES_PER_MAP, OTHER_EVIDENCE_PASSES = 42, 6


@dataclass
class Preview:
    """An approximate ScoreCAM map shown while the exact one is computed: the `top_k` of `channels`
    channels of highest activation variance. `correlation`: Pearson r between it and the exact map,
    measured once the exact map is there (None before)."""

    heatmap: Heatmap
    top_k: int
    channels: int
    correlation: float | None = None

    def describe(self) -> str:
        what = f"ScoreCAM preview from the {self.top_k} most active of {self.channels} channels"
        if self.correlation is None:
            return f"{what} (approximate: the exact map follows)"
        return f"{what}: its correlation with the exact map is r = {self.correlation:.2f}"


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
    preview: Preview | None = None  # the approximate map shown while ScoreCAM ran, when one was
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds from the photo's arrival

    @property
    def confidence(self) -> float:
        return self.probabilities[self.predicted]

    def overlay(self, method: str = "scorecam", alpha: float = 0.5) -> Image.Image:
        """The photo with one map blended on: a heatmap method's, `contrastive` or `preview`."""
        if method == "preview":
            if self.preview is None:
                raise ValueError("no preview map: ScoreCAM was quick enough to show exact at once")
            cam = self.preview.heatmap.cam
        else:
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


STAGES = ("first look", "preview", "scorecam", "evidence", "done")


@dataclass(frozen=True)
class Step:
    """One moment of `PhotoExplainer.steps`: the stage the work is in and the analysis so far.

    stage: `first look` (the prediction and GradCAM are in `analysis`), `preview` / `scorecam` (the
    approximate / exact ScoreCAM map is being computed: `progress`; when done it is in `analysis`),
    `evidence` (the model's own tests are running), `done` (the analysis is complete). The analysis is
    one object, filled in as the stages pass.
    """

    stage: str
    analysis: PhotoAnalysis
    progress: CAMProgress | None = None
    estimate_s: float | None = None  # `evidence`: about how long it takes (from the first look's pass)

    def describe(self) -> str:
        """The step in words, for a status line: what is shown, what runs, how long it should take."""
        a = self.analysis
        if self.stage == "first look":
            shown = " and GradCAM" if "gradcam" in a.heatmaps else ""
            return f"{a.predicted} ({a.confidence:.0%}){shown} in {a.timings['first look']:.1f} s"
        if self.stage in ("preview", "scorecam"):
            what = "ScoreCAM preview" if self.stage == "preview" else "exact ScoreCAM"
            p = self.progress
            if p is None or p.maps is not None:
                return f"{what} done in {a.timings.get(self.stage, 0.0):.1f} s"
            left = f", about {clock(p.left_s)} left" if p.left_s is not None else ""
            return f"{what}: {p.done:,}/{p.total:,} masked images, {clock(p.elapsed_s)} so far{left}"
        if self.stage == "evidence":
            about = f" (about {clock(self.estimate_s)})" if self.estimate_s is not None else ""
            return f"testing the maps{about}: hiding their hot regions, against a random map, ..."
        return f"done in {a.timings.get('done', 0.0):.1f} s"


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
        # The fixes noodlenext.improve retrained for the checkpoint's run (its suggestions, proven or not).
        self.tested = read_tested(Path(ckpt_path).expanduser().resolve().parent.parent) if evidence else []
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
        *_, last = self.steps(photo, true_label, file)
        return last.analysis

    def steps(self, photo: Image.Image, true_label: str | None = None, file: str = "photo") -> Iterator[Step]:
        """`__call__`'s analysis as it is made: a `Step` after the first look (prediction and GradCAM),
        after every ScoreCAM mask batch (a preview of `settings.preview_top_k` channels first, when the
        exact map would take over `settings.preview_after_s`), before the evidence and when done.

        To cancel, stop iterating (or `close()`): no forward pass runs after the current batch, and what
        the steps so far handed out stays valid.
        """
        names = self.class_names
        if true_label is not None and true_label not in names:
            raise ValueError(f"true_label={true_label!r} is not one of the checkpoint's classes {names}")
        started = time.perf_counter()
        x = self.transform(photo)[None].to(self.model.device)
        with torch.no_grad():
            probs = self.model.probabilities(self.model(x))[0].cpu()
        forward_s = time.perf_counter() - started  # one forward pass (and the transform)
        pred = int(probs.argmax())
        analysis = PhotoAnalysis(
            photo=photo.resize((self.image_size, self.image_size)),
            class_names=names,
            probabilities=dict(zip(names, probs.tolist(), strict=True)),
            predicted=names[pred],
            heatmaps={},
            inputs=x.cpu(),
        )
        for method in self.methods:  # the fast ones first: each is one forward and backward pass
            if method != ScoreCAM.name:
                analysis.heatmaps.update(explain_batch(self.model, x, [pred], method, self.settings)[0])
        analysis.timings["first look"] = time.perf_counter() - started
        yield Step("first look", analysis)

        exact = ScoreCAM.from_settings(self.model, self.settings).steps(x, [pred])
        start = next(exact)  # the activations' pass: how many channels, and a first estimate
        k = self.settings.preview_top_k
        if (
            k is not None
            and self.settings.top_k is None
            and k * 2 <= start.total
            and (start.left_s or 0.0) > self.settings.preview_after_s
        ):
            approximate = ScoreCAM(
                self.model, self.settings.target_layer, top_k=k, batch_size=self.settings.mask_batch_size
            )
            for progress in approximate.steps(x, [pred]):
                if progress.maps is not None:
                    cam = progress.maps[0]
                    analysis.preview = Preview(Heatmap.of("scorecam", cam), k, start.total)
                    analysis.timings["preview"] = time.perf_counter() - started
                yield Step("preview", analysis, progress)
        yield Step("scorecam", analysis, start)
        for progress in exact:
            if progress.maps is not None:
                cam = progress.maps[0]
                exact_map = Heatmap.of("scorecam", cam)
                # Every method in the order asked for (the evidence lists them so).
                analysis.heatmaps = {
                    m: exact_map if m == ScoreCAM.name else analysis.heatmaps[m] for m in self.methods
                }
                if analysis.preview is not None:
                    analysis.preview.correlation = map_agreement(analysis.preview.heatmap.cam, exact_map.cam)
                analysis.timings["scorecam"] = time.perf_counter() - started
            yield Step("scorecam", analysis, progress)

        if self.with_evidence:
            passes = TRUST_PASSES_PER_MAP * (len(self.methods) + 1) + OTHER_EVIDENCE_PASSES
            yield Step("evidence", analysis, estimate_s=passes * forward_s)
            maps: list[np.ndarray] = []
            truth = names.index(true_label) if true_label is not None else None
            (evidence,) = gather_evidence(
                self.model,
                x,
                [analysis.photo],
                [pred],
                [truth],
                [analysis.heatmaps],
                index=self.index,
                settings=self.settings,
                files=[file],
                class_names=names,
                contrastive_out=maps,
            )
            analysis.contrastive = maps[0]
            # gather_evidence's probabilities are one view's; the analysis's may average TTA's views.
            analysis.evidence = replace(
                evidence, probabilities=dict(analysis.probabilities), tested=list(self.tested)
            )
            analysis.timings["evidence"] = time.perf_counter() - started
        analysis.timings["done"] = time.perf_counter() - started
        yield Step("done", analysis)

    def probe(self, analysis: PhotoAnalysis) -> PhotoProbe:
        """The tests the chat can run on demand about `analysis` (one of this explainer's)."""
        if analysis.evidence is None or analysis.inputs is None:
            raise ValueError("probes need an analysis made with evidence=True")
        method = primary_method(analysis.heatmaps)
        return PhotoProbe(
            self.model,
            analysis.inputs,
            analysis.photo,
            analysis.evidence,
            analysis.heatmaps[method].cam,
            self.settings,
            self.index,
        )


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

"""The training photos nearest to a photo in the classifier's own feature space.

Features are the classifier's pooled pre-logit features (timm's `forward_head(..., pre_logits=True)`),
L2-normalised, so a dot product is the cosine similarity the head sees before its last linear layer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from noodlenext.core.files import atomic_write
from noodlenext.data.datamodule import NoodleImages
from noodlenext.explain.appearance import COLOUR_BINS, colour_histogram
from noodlenext.explain.base import eval_mode
from noodlenext.explain.causes import normalisation
from noodlenext.explain.evidence import Neighbour
from noodlenext.explain.layers import unwrap

UNLABELLED = "unlabelled"  # NoodleImages' label -1

# Where a training run leaves its index: <run dir>/heatmaps/<this> (HeatmapGallery, then PhotoExplainer).
FEATURE_INDEX_FILE = "train_features.npz"


def embed(model: nn.Module, images: Tensor) -> Tensor:
    """Pooled pre-logit features (B, D), L2-normalised, float32 on the CPU.

    model: a timm model (anything with `forward_features` and `forward_head(x, pre_logits=True)`) or a
    NoodleClassifier (its `.net`); images: (B, 3, H, W) as the model takes them. Eval mode, no
    gradients; the train/eval flags are restored.
    """
    net = unwrap(model)
    if not (hasattr(net, "forward_features") and hasattr(net, "forward_head")):
        raise TypeError(f"{type(net).__name__} has no forward_features/forward_head: use a timm model")
    param = next(net.parameters(), None)
    device = param.device if param is not None else images.device
    with eval_mode(net), torch.inference_mode():
        features = net.forward_head(net.forward_features(images.to(device)), pre_logits=True)
    features = features.float().flatten(1)
    return torch.nn.functional.normalize(features, dim=1).cpu()


def _same_path(path: str | os.PathLike[str]) -> str:
    return os.path.normcase(os.path.abspath(os.fspath(path)))


@dataclass
class FeatureIndex:
    """Feature vectors of labelled photos, and the model that made them (to embed queries the same way).

    features: (N, D) float32, L2-normalised; files and labels: one per row (label names); colours: per
    row, its colour histogram (`appearance.colour_histogram`), or None (an index saved before they were
    kept).
    """

    model: nn.Module
    features: np.ndarray
    files: list[str]
    labels: list[str]
    colours: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not len(self.features) == len(self.files) == len(self.labels):
            raise ValueError(
                f"{len(self.features)} features, {len(self.files)} files, {len(self.labels)} labels"
            )
        if self.colours is not None and self.colours.shape != (len(self.files), COLOUR_BINS**3):
            raise ValueError(
                f"colours of shape {self.colours.shape}, expected {(len(self.files), COLOUR_BINS**3)}"
            )
        self._keys = [_same_path(f) for f in self.files]

    def class_colours(self) -> dict[str, np.ndarray]:
        """Per label, the mean colour histogram of its photos; {} without colours."""
        if self.colours is None or not len(self.labels):
            return {}
        labels = np.array(self.labels)
        return {name: self.colours[labels == name].mean(0) for name in dict.fromkeys(self.labels)}

    def __len__(self) -> int:
        return len(self.files)

    @classmethod
    def build(
        cls,
        model: nn.Module,
        dataset: NoodleImages,
        batch_size: int = 64,
        device: str | torch.device | None = None,
        class_names: Sequence[str] | None = None,
        num_workers: int = 0,
    ) -> FeatureIndex:
        """Embed every sample of `dataset` (a NoodleImages with the EVAL transform; samples (path, label)).

        class_names: label names in index order; default the model's `class_names` (a NoodleClassifier).
        device: where to run (default: where the model is); the model is moved back afterwards.
        """
        names = list(class_names if class_names is not None else getattr(model, "class_names", []) or [])
        if not names:
            raise ValueError("class_names are needed: the model has none (pass class_names=...)")
        net = unwrap(model)
        param = next(net.parameters())
        home = param.device
        run_on = torch.device(device) if device is not None else home
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        chunks, colours = [], []
        mean, std = (v[:, None, None] for v in normalisation(model))
        try:
            net.to(run_on)
            for images, _ in loader:
                chunks.append(embed(net, images.to(run_on)).numpy())
                colours += [_photo_colours(im, mean, std) for im in images]
        finally:
            net.to(home)
        dim = chunks[0].shape[1] if chunks else 0
        features = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
        labels = [names[int(label)] if int(label) >= 0 else UNLABELLED for _, label in dataset.samples]
        table = np.stack(colours) if colours else np.zeros((0, COLOUR_BINS**3), np.float32)
        return cls(model, features, [str(path) for path, _ in dataset.samples], labels, table)

    def nearest(
        self, images: Tensor, k: int = 5, files: Sequence[str | os.PathLike[str] | None] | None = None
    ) -> list[list[Neighbour]]:
        """The k indexed photos most similar to each image (B, 3, H, W, as the model takes them).

        files: each query image's own path, if known: an index entry with the same path is skipped (a
        training photo is not its own neighbour). Most similar first; ties in index order.
        """
        return self.nearest_features(embed(self.model, images).numpy(), k, files)

    def nearest_features(
        self, features: np.ndarray, k: int = 5, files: Sequence[str | os.PathLike[str] | None] | None = None
    ) -> list[list[Neighbour]]:
        """As `nearest`, for query features (B, D) already L2-normalised."""
        features = np.asarray(features, dtype=np.float32)
        if files is not None and len(files) != len(features):
            raise ValueError(f"{len(features)} queries but {len(files)} files")
        sims = features @ self.features.T  # (B, N) cosine similarities
        out = []
        for i, row in enumerate(sims):
            skip = _same_path(files[i]) if files is not None and files[i] is not None else None
            found = []
            for j in np.argsort(-row, kind="stable"):
                if skip is not None and self._keys[j] == skip:
                    continue
                found.append(Neighbour(self.files[j], self.labels[j], float(np.clip(row[j], -1.0, 1.0))))
                if len(found) == k:
                    break
            out.append(found)
        return out

    def save(self, path: str | Path) -> None:
        """Features, files and labels as an .npz (the model is not saved: pass it to `load`)."""
        path = Path(path)
        path = path if path.suffix == ".npz" else path.with_name(path.name + ".npz")  # as np.savez names it
        with atomic_write(path, binary=True) as f:  # the page and the evidence read it: never half of one
            extra = {"colours": self.colours} if self.colours is not None else {}
            np.savez(
                f, features=self.features, files=np.array(self.files), labels=np.array(self.labels), **extra
            )

    @classmethod
    def load(cls, path: str | Path, model: nn.Module) -> FeatureIndex:
        """An index saved by `save`, for `model` (the one that built it)."""
        with np.load(path, allow_pickle=False) as data:
            colours = data["colours"] if "colours" in data.files else None
            if colours is not None and colours.shape != (len(data["files"]), COLOUR_BINS**3):
                colours = None  # an earlier version's colours: the index without them
            return cls(model, data["features"], data["files"].tolist(), data["labels"].tolist(), colours)


# Colour shares are counted on at most this many pixels a side (a 384 px photo's colours need no more).
COLOUR_SIDE = 64


def _photo_colours(image: Tensor, mean: Tensor, std: Tensor) -> np.ndarray:
    """The colour histogram (`appearance.colour_histogram`) of one normalised image (3, H, W), on at most
    COLOUR_SIDE pixels a side."""
    rgb = (image.float().cpu() * std + mean).clamp(0, 1)
    if max(rgb.shape[-2:]) > COLOUR_SIDE:
        rgb = torch.nn.functional.interpolate(rgb[None], size=(COLOUR_SIDE, COLOUR_SIDE), mode="area")[0]
    pixels = (rgb * 255).round().byte().permute(1, 2, 0).reshape(-1, 3).numpy()
    return colour_histogram(pixels).astype(np.float32)

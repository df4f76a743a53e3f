"""Explain many image files with one classifier: overlay PNGs per method and one record per image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.progress import track

from noodlenext.data.images import load_rgb
from noodlenext.data.transforms import eval_transform
from noodlenext.explain.heatmaps import explain_batch
from noodlenext.explain.overlays import overlay
from noodlenext.explain.registry import parse_methods
from noodlenext.explain.settings import HeatmapSettings
from noodlenext.models.classifier import NoodleClassifier


def explain_files(
    model: NoodleClassifier,
    paths: Sequence[Path],
    out_dir: Path,
    methods: str | Sequence[str] = "both",
    settings: HeatmapSettings | None = None,
    target: str | None = None,
    batch_size: int = 4,
    root: Path | None = None,
) -> list[dict[str, Any]]:
    """Write `<stem>_<method>.png` overlays into out_dir and return one record per image.

    target: the class to explain (default: each image's predicted class). root: the folder the paths
    were found under; their relative path names the overlays, so files of one name in different
    folders do not collide.
    """
    methods = parse_methods(methods)
    names = model.class_names
    if target is not None and target not in names:
        raise ValueError(f"target={target!r} is not one of the checkpoint's classes {names}")
    hp = model.hparams
    transform = eval_transform(hp.image_size, hp.mean, hp.std)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    for chunk in track(chunks, description="explaining", disable=len(chunks) < 2):
        photos = [load_rgb(p) for p in chunk]
        x = torch.stack([transform(photo) for photo in photos]).to(model.device)
        with torch.no_grad():
            probs = model(x).float().softmax(dim=1).cpu()
        preds = probs.argmax(dim=1).tolist()
        targets = [names.index(target)] * len(chunk) if target is not None else preds
        heatmaps = explain_batch(model, x, targets, methods, settings)
        for path, photo, p, pred, explained, maps in zip(
            chunk, photos, probs, preds, targets, heatmaps, strict=True
        ):
            resized = photo.resize((hp.image_size, hp.image_size))
            stem = output_stem(path, root)
            for method, heatmap in maps.items():
                overlay(resized, heatmap.cam).save(out_dir / f"{stem}_{method}.png")
            records.append(
                {
                    "file": str(path),
                    "predicted": names[pred],
                    "confidence": float(p[pred]),
                    "explained_class": names[explained],
                    "probabilities": dict(zip(names, p.tolist(), strict=True)),
                    "heatmaps": {
                        m: {**h.facts.to_dict(), "description": h.facts.describe()} for m, h in maps.items()
                    },
                }
            )
    return records


def output_stem(path: Path, root: Path | None) -> str:
    """`ramen/001.jpg` -> `ramen__001`: files of one name in different folders do not collide."""
    relative = path.relative_to(root) if root is not None and root.is_dir() else Path(path.name)
    return "__".join(relative.with_suffix("").parts)

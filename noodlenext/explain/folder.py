"""Explain many image files with one classifier: overlay PNGs per method and one record per image."""

from __future__ import annotations

import contextlib
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
    """Write overlays `<relative path>_<method>.png` under out_dir (`ramen/001.jpg` ->
    `out_dir/ramen/001.jpg_scorecam.png`) and return one record per image, naming its overlays.

    target: the class to explain (default: each image's predicted class). root: the folder the paths
    were found under; the overlays mirror their folders below it and keep their extension, so no two
    images' overlays share a name (see output_names).
    """
    methods = parse_methods(methods)
    names = model.class_names
    if target is not None and target not in names:
        raise ValueError(f"target={target!r} is not one of the checkpoint's classes {names}")
    hp = model.hparams
    transform = eval_transform(hp.image_size, hp.mean, hp.std)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_names = output_names(paths, root)
    records = []
    starts = range(0, len(paths), batch_size)
    for start in track(starts, description="explaining", disable=len(starts) < 2):
        chunk, chunk_names = paths[start : start + batch_size], out_names[start : start + batch_size]
        photos = [load_rgb(p, hp.image_size) for p in chunk]  # JPEGs in draft mode at the input size
        x = torch.stack([transform(photo) for photo in photos]).to(model.device)
        with torch.no_grad():
            probs = model.probabilities(model(x)).cpu()  # calibrated unless calibration=none
        preds = probs.argmax(dim=1).tolist()
        targets = [names.index(target)] * len(chunk) if target is not None else preds
        heatmaps = explain_batch(model, x, targets, methods, settings)
        for path, name, photo, p, pred, explained, maps in zip(
            chunk, chunk_names, photos, probs, preds, targets, heatmaps, strict=True
        ):
            resized = photo.resize((hp.image_size, hp.image_size))
            overlays = {}
            for method, heatmap in maps.items():
                overlays[method] = f"{name}_{method}.png"
                (out_dir / overlays[method]).parent.mkdir(parents=True, exist_ok=True)
                overlay(resized, heatmap.cam).save(out_dir / overlays[method])
            records.append(
                {
                    "file": str(path),
                    "overlays": overlays,  # relative to out_dir
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


def output_names(paths: Sequence[Path], root: Path | None) -> list[str]:
    """Each image's overlay name (before `_<method>.png`): its path relative to root, folders and
    extension kept (`ramen/001.jpg`), as a posix path; the file name alone without a root folder.

    Unique by construction (`a__b/c.jpg` and `a/b__c.jpg`, `x.jpg` and `x.png` stay apart), and a name
    that would still clash, ignoring case (on a case-insensitive disk `X.jpg` is `x.jpg`), gets `~2`, `~3`.
    """
    base = Path(root).expanduser() if root is not None and Path(root).expanduser().is_dir() else None
    names, taken = [], set()
    for path in map(Path, paths):
        relative = Path(path.name)
        if base is not None:
            for p, r in ((path, base), (path.resolve(), base.resolve())):  # as found, else as on disk
                with contextlib.suppress(ValueError):  # not below root: its name alone
                    relative = p.relative_to(r)
                    break
        name, n = relative.as_posix(), 1
        while name.casefold() in taken:
            n += 1
            name = f"{relative.as_posix()}~{n}"
        taken.add(name.casefold())
        names.append(name)
    return names

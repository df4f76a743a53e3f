"""Explain many image files with one classifier: overlay PNGs per method and one record per image."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from noodlenext.core.durations import clock
from noodlenext.data.images import load_rgb
from noodlenext.data.transforms import eval_transform
from noodlenext.explain.heatmaps import Heatmap, explain_batch
from noodlenext.explain.overlays import overlay
from noodlenext.explain.registry import parse_methods
from noodlenext.explain.scorecam import ScoreCAM
from noodlenext.explain.settings import HeatmapSettings
from noodlenext.models.classifier import NoodleClassifier

log = logging.getLogger(__name__)


def explain_files(
    model: NoodleClassifier,
    paths: Sequence[Path],
    out_dir: Path,
    methods: str | Sequence[str] = "both",
    settings: HeatmapSettings | None = None,
    target: str | None = None,
    batch_size: int = 4,
    root: Path | None = None,
    records: list[dict[str, Any]] | None = None,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Write overlays `<relative path>_<method>.png` under out_dir (`ramen/001.jpg` ->
    `out_dir/ramen/001.jpg_scorecam.png`) and return one record per image, naming its overlays.

    target: the class to explain (default: each image's predicted class). root: the folder the paths
    were found under; the overlays mirror their folders below it and keep their extension, so no two
    images' overlays share a name (see output_names).

    Per batch the prediction and the fast maps (GradCAM) come first, each image logged with them; then
    ScoreCAM, with a progress bar of its masked images and the time left (on a CPU an exact map of a big
    model takes minutes). records: a list filled as the work goes (and returned): an image's record goes
    in at its first look with `unfinished: ["scorecam"]`, dropped once its ScoreCAM overlay is written,
    so a caller stopped midway (Ctrl+C) still holds a record of every overlay already written.
    """
    methods, settings = parse_methods(methods), HeatmapSettings.of(settings)
    names = model.class_names
    if target is not None and target not in names:
        raise ValueError(f"target={target!r} is not one of the checkpoint's classes {names}")
    hp = model.hparams
    transform = eval_transform(hp.image_size, hp.mean, hp.std)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_names = output_names(paths, root)
    records = [] if records is None else records
    slow = [m for m in methods if m == ScoreCAM.name]
    fast = [m for m in methods if m != ScoreCAM.name]
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[left]}"),
        disable=not show_progress,
    ) as bar:
        images = bar.add_task("images", total=len(paths), left="")
        for start in range(0, len(paths), batch_size):
            chunk, chunk_names = paths[start : start + batch_size], out_names[start : start + batch_size]
            photos = [load_rgb(p, hp.image_size) for p in chunk]  # JPEGs in draft mode at the input size
            x = torch.stack([transform(photo) for photo in photos]).to(model.device)
            with torch.no_grad():
                probs = model.probabilities(model(x)).cpu()  # calibrated unless calibration=none
            preds = probs.argmax(dim=1).tolist()
            targets = [names.index(target)] * len(chunk) if target is not None else preds
            resized = [photo.resize((hp.image_size, hp.image_size)) for photo in photos]
            batch = []
            for i, maps in enumerate(
                explain_batch(model, x, targets, fast, settings) if fast else [{} for _ in chunk]
            ):
                record = {
                    "file": str(chunk[i]),
                    "overlays": _write_overlays(out_dir, chunk_names[i], resized[i], maps),  # relative
                    "predicted": names[preds[i]],
                    "confidence": float(probs[i, preds[i]]),
                    "explained_class": names[targets[i]],
                    "probabilities": dict(zip(names, probs[i].tolist(), strict=True)),
                    "heatmaps": {m: _facts(h) for m, h in maps.items()},
                    **({"unfinished": slow} if slow else {}),
                }
                shown = ", ".join(f"{m} -> {out_dir / o}" for m, o in record["overlays"].items())
                log.info(
                    "%s: %s (%.0f%%)%s",
                    chunk[i],
                    record["predicted"],
                    100 * record["confidence"],
                    f"; {shown}" if shown else "",
                )
                batch.append(record)
            records.extend(batch)
            if slow:
                masked = bar.add_task(f"ScoreCAM {start + 1}-{start + len(chunk)}", total=None, left="")
                for progress in ScoreCAM.from_settings(model, settings).steps(x, targets):
                    left = f"about {clock(progress.left_s)} left" if progress.left_s else ""
                    bar.update(masked, total=progress.total, completed=progress.done, left=left)
                    cams = progress.maps
                bar.remove_task(masked)
                for i, record in enumerate(batch):
                    heatmap = Heatmap.of(ScoreCAM.name, cams[i])
                    written = _write_overlays(out_dir, chunk_names[i], resized[i], {ScoreCAM.name: heatmap})
                    # The methods in the order asked for, as before (the first is the record's lead).
                    record["overlays"] = {m: {**record["overlays"], **written}[m] for m in methods}
                    record["heatmaps"] = {
                        m: {**record["heatmaps"], ScoreCAM.name: _facts(heatmap)}[m] for m in methods
                    }
                    del record["unfinished"]
            bar.update(images, advance=len(chunk))
    return records


def _write_overlays(out_dir: Path, name: str, photo: Image.Image, maps: dict[str, Heatmap]) -> dict[str, str]:
    """Each map blended on the photo as `<name>_<method>.png` under out_dir; {method: relative path}."""
    written = {}
    for method, heatmap in maps.items():
        written[method] = f"{name}_{method}.png"
        (out_dir / written[method]).parent.mkdir(parents=True, exist_ok=True)
        overlay(photo, heatmap.cam).save(out_dir / written[method])
    return written


def _facts(heatmap: Heatmap) -> dict[str, Any]:
    return {**heatmap.facts.to_dict(), "description": heatmap.facts.describe()}


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

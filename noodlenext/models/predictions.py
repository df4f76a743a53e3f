"""A classifier's predictions for a set of images, as a CSV of labels and probabilities."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.progress import track
from torch.utils.data import DataLoader

from noodlenext.core.devices import resolve_device
from noodlenext.core.files import atomic_write
from noodlenext.core.ownership import guard_file
from noodlenext.data.datamodule import NoodleImages
from noodlenext.models.classifier import NoodleClassifier

# How the CSV starts: the only existing file at `out` that predict may replace.
PREDICTIONS_HEAD = r"file,label,confidence[,\r\n]"


@torch.inference_mode()
def predict_to_csv(
    model: NoodleClassifier,
    dataset: NoodleImages,
    class_names: Sequence[str],
    out: str | Path,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str = "auto",
    tta: str | None = None,
) -> Path:
    """Write file, label, confidence and one probability column per class for every image.

    The probabilities are `model.predict_proba`'s: temperature-scaled unless the model was set to
    calibration=none, averaged over the test-time augmentation views of `tta` (default the model's).
    """
    guard_file(out, "output", PREDICTIONS_HEAD)  # before any work: a user's own file is never replaced
    guard_file(out, "output", PREDICTIONS_HEAD)  # before any work: a user's own file is never replaced
    target = resolve_device(device)
    model = model.to(target).eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    rows = []
    paths = iter(dataset.samples)
    for x, _ in track(loader, description="predicting", transient=True):
        probs = model.predict_proba(x.to(target), tta).cpu()
        for p in probs:
            path, _ = next(paths)
            best = int(p.argmax())
            rows.append([str(path), class_names[best], f"{p[best]:.6f}", *(f"{v:.6f}" for v in p.tolist())])
    out = Path(out)
    with atomic_write(out, newline="") as f:  # an interrupted run leaves the previous CSV, not half of one
        writer = csv.writer(f)
        writer.writerow(["file", "label", "confidence", *(f"prob_{name}" for name in class_names)])
        writer.writerows(rows)
    return out

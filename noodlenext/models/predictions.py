"""A classifier's predictions for a set of images, as a CSV of labels and probabilities."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.progress import track
from torch.utils.data import DataLoader

from noodlenext.core.devices import resolve_device
from noodlenext.data.datamodule import NoodleImages
from noodlenext.models.classifier import NoodleClassifier


@torch.inference_mode()
def predict_to_csv(
    model: NoodleClassifier,
    dataset: NoodleImages,
    class_names: Sequence[str],
    out: str | Path,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str = "auto",
) -> Path:
    """Write file, label, confidence and one probability column per class for every image."""
    target = resolve_device(device)
    model = model.to(target).eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    rows = []
    paths = iter(dataset.samples)
    for x, _ in track(loader, description="predicting", transient=True):
        probs = model(x.to(target)).float().softmax(dim=1).cpu()
        for p in probs:
            path, _ = next(paths)
            best = int(p.argmax())
            rows.append([str(path), class_names[best], f"{p[best]:.6f}", *(f"{v:.6f}" for v in p.tolist())])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "confidence", *(f"prob_{name}" for name in class_names)])
        writer.writerows(rows)
    return out

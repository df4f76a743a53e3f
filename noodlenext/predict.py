"""python -m noodlenext.predict ckpt_path=... input=<image or folder>: a CSV of labels and probabilities."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from rich.progress import track
from torch.utils.data import DataLoader

from noodlenext.config import CONFIG_DIR
from noodlenext.data.datamodule import UNLABELLED, NoodleImages
from noodlenext.data.images import IMAGE_EXTENSIONS, check_images
from noodlenext.data.transforms import eval_transform
from noodlenext.model import NoodleClassifier, load_classifier

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def find_images(input_path: str | Path) -> list[Path]:
    """An image file, or every image below a folder (sorted); a clear error when there is none."""
    path = Path(input_path).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input={input_path}: no such file or folder")
    images = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise FileNotFoundError(f"input={input_path}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return images


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


def predict(cfg: DictConfig) -> Path:
    """Classify cfg.input with the checkpoint's own model and transform; unreadable files are skipped."""
    model = load_classifier(cfg.ckpt_path)
    paths = find_images(cfg.input)
    readable = []
    for path, (problem, _) in zip(paths, check_images(paths), strict=True):
        if problem:
            log.warning("skipping %s: %s", path, problem)
        else:
            readable.append((path, UNLABELLED))
    if not readable:
        raise ValueError(f"input={cfg.input}: none of the {len(paths)} image file(s) could be read")
    hp = model.hparams
    dataset = NoodleImages(readable, eval_transform(hp.image_size, hp.mean, hp.std))
    out = Path(cfg.output) if cfg.get("output") else Path(cfg.paths.output_dir) / "predictions.csv"
    predict_to_csv(model, dataset, model.class_names, out, cfg.batch_size, cfg.num_workers, cfg.device)
    log.info("wrote %d prediction(s) to %s", len(readable), out)
    print(out)
    return out


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()

"""python -m noodlenext.explain ckpt_path=... input=<image or folder>: heatmap overlays and facts."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from rich.progress import track

from noodlenext.config import CONFIG_DIR
from noodlenext.data.images import check_images, load_rgb
from noodlenext.data.transforms import eval_transform
from noodlenext.explain.heatmaps import explain_batch, parse_methods
from noodlenext.explain.overlay import overlay
from noodlenext.files import write_json_atomic
from noodlenext.model import load_classifier
from noodlenext.predict import find_images, resolve_device

log = logging.getLogger(__name__)


def explain_images(cfg: DictConfig) -> Path:
    """Overlays `<stem>_<method>.png` and `facts.json` for every readable image of cfg.input."""
    methods = parse_methods(cfg.method)
    model = load_classifier(cfg.ckpt_path).to(resolve_device(cfg.device))
    names = model.class_names
    if cfg.get("target") is not None and cfg.target not in names:
        raise ValueError(f"target={cfg.target!r} is not one of the checkpoint's classes {names}")
    paths = find_images(cfg.input)
    readable = []
    for path, (problem, _) in zip(paths, check_images(paths), strict=True):
        if problem and len(paths) == 1:
            raise ValueError(f"input={path}: {problem}")
        if problem:
            log.warning("skipping %s: %s", path, problem)
        else:
            readable.append(path)
    hp = model.hparams
    transform = eval_transform(hp.image_size, hp.mean, hp.std)
    out = Path(cfg.output) if cfg.get("output") else Path(cfg.paths.output_dir) / "explanations"
    out.mkdir(parents=True, exist_ok=True)
    records = []
    chunks = [readable[i : i + cfg.batch_size] for i in range(0, len(readable), cfg.batch_size)]
    for chunk in track(chunks, description="explaining", disable=len(chunks) < 2):
        photos = [load_rgb(p) for p in chunk]
        x = torch.stack([transform(photo) for photo in photos]).to(model.device)
        with torch.no_grad():
            probs = model(x).float().softmax(dim=1).cpu()
        preds = probs.argmax(dim=1).tolist()
        targets = [names.index(cfg.target)] * len(chunk) if cfg.get("target") else preds
        heatmaps = explain_batch(
            model,
            x,
            targets,
            methods,
            cfg.explain.target_layer,
            cfg.explain.top_k,
            cfg.explain.mask_batch_size,
        )
        for path, photo, p, pred, target, maps in zip(
            chunk, photos, probs, preds, targets, heatmaps, strict=True
        ):
            resized = photo.resize((hp.image_size, hp.image_size))
            stem = _stem(path, Path(cfg.input).expanduser())
            for method, heatmap in maps.items():
                overlay(resized, heatmap.cam).save(out / f"{stem}_{method}.png")
            records.append(
                {
                    "file": str(path),
                    "predicted": names[pred],
                    "confidence": float(p[pred]),
                    "explained_class": names[target],
                    "probabilities": dict(zip(names, p.tolist(), strict=True)),
                    "heatmaps": {
                        m: {**h.facts.to_dict(), "description": h.facts.describe()} for m, h in maps.items()
                    },
                }
            )
    write_json_atomic(out / "facts.json", records)
    log.info("explained %d image(s) into %s", len(records), out)
    print(out)
    return out


def _stem(path: Path, root: Path) -> str:
    """`ramen/001.jpg` -> `ramen__001`: files of one name in different folders do not collide."""
    relative = path.relative_to(root) if root.is_dir() else Path(path.name)
    return "__".join(relative.with_suffix("").parts)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="explain")
def main(cfg: DictConfig) -> None:
    explain_images(cfg)


if __name__ == "__main__":
    main()

"""python -m noodlenext.predict ckpt_path=... input=<image or folder>: a CSV of labels and probabilities."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from noodlenext.core.config import CONFIG_DIR
from noodlenext.data.datamodule import UNLABELLED, NoodleImages
from noodlenext.data.images import find_readable_images
from noodlenext.data.transforms import eval_transform
from noodlenext.models.classifier import load_classifier
from noodlenext.models.predictions import predict_to_csv

log = logging.getLogger(__name__)


def predict(cfg: DictConfig) -> Path:
    """Classify cfg.input with the checkpoint's own model and transform; unreadable files are skipped."""
    model = load_classifier(cfg.ckpt_path, trust_checkpoint=cfg.get("trust_checkpoint", False))
    model = model.use(calibration=cfg.calibration, tta=cfg.tta)
    readable = find_readable_images(cfg.input)
    hp = model.hparams
    dataset = NoodleImages(
        [(p, UNLABELLED) for p in readable], eval_transform(hp.image_size, hp.mean, hp.std)
    )
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

"""python -m noodlenext.eval ckpt_path=... [tta=flip]: test a checkpoint with its own model, classes,
transform and fitted temperature."""

from __future__ import annotations

import hydra
import lightning as L
from omegaconf import DictConfig

from noodlenext.callbacks.test_report import TestReport
from noodlenext.core.config import CONFIG_DIR
from noodlenext.core.devices import resolve_precision
from noodlenext.data.datamodule import NoodleDataModule
from noodlenext.models.classifier import load_classifier
from noodlenext.runs.instantiate import instantiate_loggers
from noodlenext.runs.task import task_wrapper


@task_wrapper
def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test metrics of cfg.ckpt_path on cfg.data.root's test/ split (with cfg.tta's test-time
    augmentation); writes metrics.json and reliability.png."""
    model = load_classifier(cfg.ckpt_path, trust_checkpoint=cfg.get("trust_checkpoint", False))
    model = model.use(tta=cfg.tta)
    hp = model.hparams
    # Only where the data lives and how it is batched come from the current config.
    datamodule: NoodleDataModule = hydra.utils.instantiate(
        cfg.data, image_size=hp.image_size, mean=list(hp.mean), std=list(hp.std), classes=model.class_names
    )
    datamodule.prepare_data()
    datamodule.setup("test")
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        precision=resolve_precision(cfg.trainer.precision),
        callbacks=[TestReport(cfg.paths.output_dir)],
        logger=instantiate_loggers(cfg) or False,
    )
    (metrics,) = trainer.test(model, datamodule=datamodule)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()

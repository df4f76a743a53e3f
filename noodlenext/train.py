"""python -m noodlenext.train: fit a noodle classifier, then test its best checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig

from noodlenext.core.config import CONFIG_DIR
from noodlenext.core.devices import resolve_precision
from noodlenext.core.files import clean_stale_temps
from noodlenext.data.datamodule import NoodleDataModule
from noodlenext.models.classifier import NoodleClassifier, load_classifier
from noodlenext.models.predictions import predict_to_csv
from noodlenext.runs.checkpoint_io import AtomicCheckpointIO
from noodlenext.runs.instantiate import config_as_dict, instantiate_callbacks, instantiate_loggers
from noodlenext.runs.oom import oom_advice
from noodlenext.runs.resume import prepare_resume
from noodlenext.runs.task import keep_sweeping, task_wrapper

log = logging.getLogger(__name__)


@task_wrapper
def train(cfg: DictConfig) -> float | None:
    """Fit, then test (or predict on an unlabelled test set); returns cfg.optimized_metric."""
    L.seed_everything(cfg.seed, workers=True)
    ckpt_path = prepare_resume(cfg)  # resume=auto may point paths.output_dir at the run it continues
    datamodule: NoodleDataModule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model: NoodleClassifier = hydra.utils.instantiate(
        cfg.model,
        num_classes=datamodule.num_classes,
        class_names=datamodule.class_names,
        # The model records the data's transform settings, so data.image_size=64 resizes both.
        **datamodule.transform_config,
        class_counts=datamodule.class_counts,
        _convert_="all",
    )
    model.run_config = config_as_dict(cfg)
    model.use(calibration=cfg.get("calibration"))
    loggers = instantiate_loggers(cfg)
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        precision=resolve_precision(cfg.trainer.precision),
        callbacks=instantiate_callbacks(cfg, with_logger=bool(loggers)),
        logger=loggers or False,
        plugins=[AtomicCheckpointIO(trust_checkpoint=cfg.get("trust_checkpoint", False))],
    )
    for saver in trainer.checkpoint_callbacks:  # a save that a kill cut short left a hidden .tmp there
        if saver.dirpath:
            clean_stale_temps(saver.dirpath, legacy=True)
    for logger in loggers:
        logger.log_hyperparams({**model.run_config, "pretrained_loaded": model.pretrained_loaded})

    if cfg.train:
        with oom_advice(cfg):
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}

    best = next((c.best_model_path for c in trainer.checkpoint_callbacks if c.monitor), "")
    ckpt = best or None
    if cfg.test and datamodule.test_set is not None:
        if datamodule.test_is_labelled:
            with oom_advice(cfg):
                trainer.test(model, datamodule=datamodule, ckpt_path=ckpt)
        elif trainer.is_global_zero:
            best_model = model
            if ckpt:
                best_model = load_classifier(ckpt, trust_checkpoint=cfg.get("trust_checkpoint", False))
                best_model = best_model.use(calibration=cfg.get("calibration"))
            out = Path(cfg.paths.output_dir) / "predictions.csv"
            predict_to_csv(
                best_model, datamodule.test_set, datamodule.class_names, out, batch_size=datamodule.batch_size
            )
            log.info("test/ is unlabelled: wrote predictions to %s", out)
    elif cfg.test:
        log.warning("%s has no test/ folder: skipping the test step", datamodule.root)

    value = metrics.get(cfg.get("optimized_metric") or "")
    log.info("best checkpoint: %s", best or "(none)")
    return value


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@keep_sweeping  # in a multirun, a failed job writes error.json and the other jobs go on
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()

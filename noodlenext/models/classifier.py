"""NoodleClassifier: a timm backbone fine-tuned with the write-up's optimizer, loss and metrics."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics import CatMetric, MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from noodlenext import __version__
from noodlenext.models.backbone import create_backbone
from noodlenext.models.calibration import (
    calibration_errors,
    calibration_report,
    check_calibration,
    fit_temperature,
)
from noodlenext.models.checkpoints import UntrustedCheckpointError, load_checkpoint, plain
from noodlenext.models.optim import build_optimizer
from noodlenext.models.tta import check_tta, mean_log_probs, tta_logits, tta_probabilities

CHECKPOINT_KEY = "noodlenext"
DEFAULT_OPTIM = {
    "head_lr": 1e-4,
    "backbone_lr": 1e-5,
    "weight_decay": 0.03,
    "layer_decay": None,
    "warmup_frac": 0.15,
}


def _stage_metrics(num_classes: int, full: bool = True, calibrated: bool = False) -> nn.ModuleDict:
    """Epoch metrics; input checks are off because each one syncs the GPU every step."""
    metrics = {
        "acc": MulticlassAccuracy(num_classes, average="micro", validate_args=False),
        "loss": MeanMetric(nan_strategy="disable"),
    }
    if full:  # val and test; training logs only accuracy and loss
        metrics["f1"] = MulticlassF1Score(num_classes, average="macro", validate_args=False)
        # Per-class accuracy comes from here: synced under DDP, and a class absent from the
        # split has no accuracy rather than a misleading 0.
        metrics["confusion"] = MulticlassConfusionMatrix(num_classes, validate_args=False)
        # Every logit and target (gathered under DDP), for temperature scaling and calibration errors.
        metrics["logits"] = CatMetric(nan_strategy="disable")
        metrics["targets"] = CatMetric(nan_strategy="disable")
    if calibrated:  # test: the temperature-scaled logits too
        metrics["calibrated"] = CatMetric(nan_strategy="disable")
    return nn.ModuleDict(metrics)


class NoodleClassifier(LightningModule):
    """Image classifier over a timm backbone, with separate head and backbone learning rates.

    Args:
        name: a timm model name (`convnext_base.fb_in22k_ft_in1k_384`); num_classes, class_names: the
            classes in label order.
        image_size, mean, std: the input side in pixels and the normalisation, stored in checkpoints so
            eval and predict rebuild the same transform.
        pretrained: `auto` (weights when they can be had), `true` (fail without) or `false`; weights: a
            local weights file for the backbone. drop_path_rate, model_kwargs: passed to timm.
        label_smoothing: of the cross-entropy (0..1); class_weighted_loss with class_counts: inverse
            frequency class weights.
        compile: torch.compile the network; channels_last: on GPU.
        optim: head_lr, backbone_lr (per step, before the schedule), weight_decay, layer_decay,
            warmup_frac (share of all steps), betas.
    """

    def __init__(
        self,
        name: str,
        num_classes: int,
        class_names: Sequence[str],
        image_size: int = 384,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        pretrained: bool | str = "auto",
        weights: str | None = None,
        drop_path_rate: float = 0.0,
        model_kwargs: dict[str, Any] | None = None,
        label_smoothing: float = 0.2,
        class_weighted_loss: bool = False,
        class_counts: Sequence[int] | None = None,
        compile: bool = False,
        channels_last: bool = True,
        optim: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for num_classes={num_classes}")
        self.save_hyperparameters()
        self.class_names = list(class_names)
        self.optim = {**DEFAULT_OPTIM, **dict(optim or {})}
        self.net, self.pretrained_loaded = create_backbone(
            name, num_classes, pretrained, weights, drop_path_rate=drop_path_rate, **dict(model_kwargs or {})
        )
        weight = None
        if class_weighted_loss:
            if not class_counts:
                raise ValueError("model.class_weighted_loss=true needs the training class counts")
            counts = torch.as_tensor(class_counts, dtype=torch.float32).clamp(min=1)
            weight = counts.sum() / (len(counts) * counts)  # inverse frequency, mean weight ~1
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        self.train_metrics = _stage_metrics(num_classes, full=False)
        self.val_metrics = _stage_metrics(num_classes)
        self.test_metrics = _stage_metrics(num_classes, calibrated=True)
        self.val_acc_best = MaxMetric()
        self.test_results: dict[str, Any] | None = None
        self.run_config: dict[str, Any] | None = None  # the composed Hydra config, stored in checkpoints
        self._compiled = False
        self._channels_last = False
        # Temperature scaling: T is fitted on every validation epoch's logits and saved in checkpoints;
        # `calibration` (temperature | none) and `tta` (none | flip | flip_crops) are how a loaded
        # model turns logits into probabilities (`probabilities`, `predict_proba`, the test step).
        self.temperature: float = 1.0
        self.calibration: str = "temperature"
        self.tta: str = "none"

    # ------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def configure_model(self) -> None:
        if self.hparams.compile and not self._compiled:
            self.net.compile()  # in place: state_dict keys stay the same
            self._compiled = True

    def _use_device_layout(self) -> None:
        if self.hparams.channels_last and self.device.type == "cuda" and not self._channels_last:
            self.net.to(memory_format=torch.channels_last)
            self._channels_last = True

    def on_fit_start(self) -> None:
        self._use_device_layout()

    def on_test_start(self) -> None:
        self._use_device_layout()

    def on_predict_start(self) -> None:
        self._use_device_layout()

    # ------------------------------------------------------------------------------ steps
    def _step(
        self,
        batch: tuple[torch.Tensor, torch.Tensor],
        metrics: nn.ModuleDict,
        logits: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x) if logits is None else logits
        loss = self.criterion(logits, y)  # y: class indices, or (B, classes) mixtures from mixup/cutmix
        preds = logits.argmax(dim=1)
        labels = y.argmax(dim=1) if y.ndim == 2 else y  # a mixture counts as its larger part
        # One copy per sample: with nan_strategy="disable" torchmetrics ignores `weight`, which made the
        # epoch loss a mean of batch means (wrong for a short last batch and uneven DDP shards).
        metrics["loss"].update(loss.detach().expand(labels.numel()))
        for key in ("acc", "f1", "confusion"):
            if key in metrics:
                metrics[key].update(preds, labels)
        if "logits" in metrics:
            metrics["logits"].update(logits.detach().float())
            metrics["targets"].update(labels)
        return loss, logits

    def _epoch_results(self, metrics: nn.ModuleDict) -> dict[str, Any]:
        confusion = metrics["confusion"].compute()
        support = confusion.sum(dim=1)
        per_class = {
            name: {"accuracy": (confusion[i, i] / support[i]).item(), "count": int(support[i])}
            for i, name in enumerate(self.class_names)
            if support[i] > 0
        }
        results = {
            "acc": metrics["acc"].compute().item(),
            "f1": metrics["f1"].compute().item(),
            "loss": metrics["loss"].compute().item(),
            "per_class": per_class,
            "confusion": confusion.tolist(),
        }
        if metrics["logits"].update_called:
            logits, targets = metrics["logits"].compute(), metrics["targets"].compute().long()
            if "calibrated" in metrics:  # test: ECE/MCE/NLL before and after, the reliability bins
                calibrated = metrics["calibrated"].compute()
                results["calibration"] = calibration_report(logits, calibrated, targets, self.temperature)
            else:  # validation: the temperature these logits call for
                fitted = fit_temperature(logits, targets)
                ece = calibration_errors(logits.softmax(dim=1), targets)["ece"]
                results["calibration"] = {"temperature": fitted, "ece": ece}
        for metric in metrics.values():
            metric.reset()
        return results

    def _log_results(self, stage: str, results: dict[str, Any]) -> None:
        # Values are already synced across processes by torchmetrics.
        self.log(f"{stage}/acc", results["acc"], prog_bar=True)
        values = {f"{stage}/{k}": results[k] for k in ("f1", "loss")}
        values |= {f"{stage}/acc/{name}": r["accuracy"] for name, r in results["per_class"].items()}
        calibration = results.get("calibration", {})
        values |= {f"{stage}/{k}": v for k, v in calibration.items() if isinstance(v, float)}
        self.log_dict(values)

    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # the sanity check's val pass must not count

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, _ = self._step(batch, self.train_metrics)
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        acc, loss = self.train_metrics["acc"].compute(), self.train_metrics["loss"].compute()
        self.log_dict({"train/acc": acc, "train/loss": loss}, prog_bar=True)
        for metric in self.train_metrics.values():
            metric.reset()

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        return {"logits": self._step(batch, self.val_metrics)[1]}  # for callbacks (HeatmapGallery)

    def on_validation_epoch_end(self) -> None:
        results = self._epoch_results(self.val_metrics)
        # Before ModelCheckpoint saves (on_validation_end): each checkpoint holds its own epoch's T.
        self.temperature = results.get("calibration", {}).get("temperature", self.temperature)
        self._log_results("val", results)
        self.val_acc_best.update(torch.tensor(results["acc"], device=self.device))
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        """Metrics of the `tta` views' mean probabilities (the logits themselves without TTA); returns
        them as `logits` (log-probabilities under TTA) and the probabilities `calibration` asks for."""
        views = tta_logits(self, batch[0], self.tta)  # (V, B, classes)
        logits = views[0] if len(views) == 1 else mean_log_probs(views)
        _, logits = self._step(batch, self.test_metrics, logits)
        calibrated = mean_log_probs(views, self.temperature)
        self.test_metrics["calibrated"].update(calibrated.detach())
        probs = (calibrated if self.calibration == "temperature" else logits.float()).softmax(dim=1)
        return {"logits": logits, "probs": probs}

    def on_test_epoch_end(self) -> None:
        self.test_results = self._epoch_results(self.test_metrics)
        self._log_results("test", self.test_results)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.predict_proba(x)

    # ------------------------------------------------------------------------------ probabilities
    def use(self, calibration: str | None = None, tta: str | None = None) -> NoodleClassifier:
        """Set how logits become probabilities (`calibration=temperature|none`, `tta=none|flip|
        flip_crops`; None keeps the current one), checking the values; returns the model."""
        if calibration is not None:
            self.calibration = check_calibration(calibration)
        if tta is not None:
            self.tta = check_tta(tta)
        return self

    @property
    def applied_temperature(self) -> float:
        """The T probabilities are computed with: the fitted one, or 1 with calibration=none."""
        return self.temperature if self.calibration == "temperature" else 1.0

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """softmax(logits / T) with calibration=temperature (T fitted on the validation set and stored
        in the checkpoint), the plain softmax with calibration=none."""
        return (logits.float() / self.applied_temperature).softmax(dim=-1)

    def predict_proba(self, x: torch.Tensor, tta: str | None = None) -> torch.Tensor:
        """(B, classes) probabilities of a normalised batch: `probabilities` averaged over the test-time
        augmentation views (`tta`, default the model's)."""
        return tta_probabilities(self, x, self.tta if tta is None else tta, self.applied_temperature)

    # ------------------------------------------------------------------------------ optim
    def configure_optimizers(self) -> dict[str, Any]:
        total_steps = int(self.trainer.estimated_stepping_batches)
        optimizer, scheduler = build_optimizer(self.net, self.optim, total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain data only (no OmegaConf containers, no paths), so the file loads with weights_only=True.
        for key in ("hyper_parameters", "datamodule_hyper_parameters"):
            if key in checkpoint:
                checkpoint[key] = plain(checkpoint[key])
        checkpoint[CHECKPOINT_KEY] = {
            "version": __version__,
            "class_names": self.class_names,
            "transform": {
                "image_size": self.hparams.image_size,
                "mean": list(self.hparams.mean),
                "std": list(self.hparams.std),
            },
            "pretrained": self.pretrained_loaded,
            "config": plain(self.run_config),
            "temperature": float(self.temperature),  # a plain float: loads with weights_only=True
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get(CHECKPOINT_KEY, {})
        self.pretrained_loaded = meta.get("pretrained", self.pretrained_loaded)
        self.run_config = plain(meta.get("config", self.run_config))
        self.temperature = float(meta.get("temperature", 1.0))  # 1.0: a checkpoint made before calibration


def load_classifier(
    ckpt_path: str | Path, map_location: str | torch.device = "cpu", trust_checkpoint: bool = False
) -> NoodleClassifier:
    """Rebuild exactly the trained model from a checkpoint: architecture, classes, transform settings.

    The file is read as plain data (`models/checkpoints.py`): one that needs more is refused with
    UntrustedCheckpointError unless trust_checkpoint=True, which unpickles it in full (it can run code).
    """
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    try:
        checkpoint = load_checkpoint(path, map_location, trust=trust_checkpoint)
    except UntrustedCheckpointError as e:
        raise UntrustedCheckpointError(f"ckpt_path={e}") from None
    except Exception as e:
        raise ValueError(f"ckpt_path={ckpt_path}: not a readable PyTorch checkpoint ({e})") from e
    if CHECKPOINT_KEY not in checkpoint or "hyper_parameters" not in checkpoint:
        raise ValueError(f"ckpt_path={ckpt_path}: not a noodlenext checkpoint (made by noodlenext.train?)")
    # Never reach for the hub again: the checkpoint holds every weight.
    hparams = plain(checkpoint["hyper_parameters"]) | {"pretrained": False, "weights": None, "compile": False}
    model = NoodleClassifier(**hparams)
    model.load_state_dict(checkpoint["state_dict"])
    model.on_load_checkpoint(checkpoint)
    model.checkpoint_path = str(path)
    return model.eval()

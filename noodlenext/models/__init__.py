"""Models: the NoodleClassifier LightningModule, its timm backbone and optimizer, checkpoint loading,
calibration (temperature scaling) and test-time augmentation."""

from noodlenext.core.lazy import lazy_exports

_EXPORTS = {
    "CHECKPOINT_KEY": "noodlenext.models.classifier",
    "NoodleClassifier": "noodlenext.models.classifier",
    "load_classifier": "noodlenext.models.classifier",
    "create_backbone": "noodlenext.models.backbone",
    "build_optimizer": "noodlenext.models.optim",
    "param_groups": "noodlenext.models.optim",
    "warmup_cosine": "noodlenext.models.optim",
    "predict_to_csv": "noodlenext.models.predictions",
    "fit_temperature": "noodlenext.models.calibration",
    "calibration_errors": "noodlenext.models.calibration",
    "reliability_bins": "noodlenext.models.calibration",
    "tta_probabilities": "noodlenext.models.tta",
    "tta_views": "noodlenext.models.tta",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

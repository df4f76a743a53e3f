"""Data: the ImageFolder data module, its transforms, image decoding, the synthetic dataset, and the
data doctor's library (scan, fingerprints, rules, fixes, report; its command is data/check.py)."""

from noodlenext.core.lazy import lazy_exports

_EXPORTS = {
    "NoodleDataModule": "noodlenext.data.datamodule",
    "NoodleImages": "noodlenext.data.datamodule",
    "Augmentation": "noodlenext.data.transforms",
    "load_augmentation": "noodlenext.data.transforms",
    "eval_transform": "noodlenext.data.transforms",
    "find_images": "noodlenext.data.images",
    "load_rgb": "noodlenext.data.images",
    "render_dataset": "noodlenext.data.synthetic",
    "check_dataset": "noodlenext.data.rules",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

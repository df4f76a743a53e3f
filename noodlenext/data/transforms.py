"""The eval transform, and the training augmentation of the `augment` config group.

The training stacks live in conf/augment/*.yaml (every transform a `_target_` entry with its numbers),
so they can be read, changed and swept from the command line; `load_augmentation` builds one by name
from those files for Python users, with the same result as Hydra composing it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torchvision import transforms as T

from noodlenext.core.config import config_dir

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """Resize to the model's input size and normalize."""
    return T.Compose(
        [T.Resize((image_size, image_size)), T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    )


@dataclass
class Augmentation:
    """Training augmentation: a per-image transform (PIL image -> tensor) and an optional batch mix.

    train: None means no augmentation (the eval transform). mixup: a factory taking `num_classes` and
    returning a callable `(images, labels) -> (images, soft labels)` (timm's Mixup), or None.
    """

    train: Callable[[Any], Any] | None = None
    mixup: Callable[..., Any] | None = None


def augment_choices() -> list[str]:
    """The names of the augment group's configs (conf/augment/*.yaml)."""
    return sorted(p.stem for p in (config_dir() / "augment").glob("*.yaml"))


def load_augmentation(
    choice: str, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> Augmentation:
    """conf/augment/<choice>.yaml built for this input size and normalisation."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = config_dir() / "augment" / f"{choice}.yaml"
    if not path.is_file():
        raise ValueError(f"augment={choice!r} is not known; use one of {', '.join(augment_choices())}")
    data = {"image_size": int(image_size), "mean": list(mean), "std": list(std)}
    root = OmegaConf.create({"data": {**data, "augment": OmegaConf.load(path)}})
    return augmentation_of(instantiate(root.data.augment))


def augmentation_of(
    augment: Augmentation | Mapping[str, Any] | None,
) -> Augmentation:
    """An Augmentation from what the data module is given: one, a {train, mixup} mapping, or None."""
    if augment is None or isinstance(augment, Augmentation):
        return augment or Augmentation()
    if not isinstance(augment, Mapping):
        raise ValueError(
            f"data.augment={augment!r}: choose a stack with the augment group (augment=writeup, "
            f"augment=randaugment, augment=none) or pass {{'train': transform, 'mixup': factory}}"
        )
    unknown = set(augment) - {"train", "mixup"}
    if unknown:
        raise ValueError(f"data.augment has unknown key(s) {sorted(unknown)}; it takes train and mixup")
    return Augmentation(augment.get("train"), augment.get("mixup"))

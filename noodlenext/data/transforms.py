"""The eval transform, and the training augmentation of the `augment` config group.

The training stacks live in conf/augment/*.yaml (every transform a `_target_` entry with its numbers),
so they can be read, changed and swept from the command line; `load_augmentation` builds one by name
from those files for Python users, with the same result as Hydra composing it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision import transforms as T
from torchvision.transforms import v2

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


# ------------------------------------------------------------------------- decoding size, device stacks
def first_resize(transform: Any) -> T.Resize | None:
    """The Resize a torchvision stack starts with (the write-up's Resize 420, the eval transform's), or None
    (a stack that crops first, like augment=randaugment's, needs the full image)."""
    steps = transform.transforms if isinstance(transform, T.Compose) else [transform]
    first = steps[0] if steps else None
    return first if isinstance(first, T.Resize) else None


def decode_size(transform: Any) -> tuple[int, int] | None:
    """(width, height) of the stack's first Resize: what load_rgb may decode a JPEG down to (draft mode).
    An int size (the shorter side) gives (size, size): both sides then stay at or above it."""
    resize = first_resize(transform)
    if resize is None:
        return None
    size = resize.size
    if isinstance(size, int):
        return size, size
    if len(size) == 1:
        return int(size[0]), int(size[0])
    return int(size[1]), int(size[0])


def _v2_step(step: Any) -> Any:
    """The torchvision.transforms.v2 twin of one v1 step, with its numbers (for uint8/float tensors)."""
    kind = type(step)
    if kind is T.Resize:
        return v2.Resize(step.size, step.interpolation, step.max_size, antialias=step.antialias)
    if kind is T.RandomResizedCrop:
        return v2.RandomResizedCrop(step.size, step.scale, step.ratio, step.interpolation, step.antialias)
    if kind is T.CenterCrop:
        return v2.CenterCrop(step.size)
    if kind is T.RandomHorizontalFlip:
        return v2.RandomHorizontalFlip(step.p)
    if kind is T.RandomVerticalFlip:
        return v2.RandomVerticalFlip(step.p)
    if kind is T.RandomRotation:
        return v2.RandomRotation(step.degrees, step.interpolation, step.expand, step.center, step.fill)
    if kind is T.ColorJitter:
        return v2.ColorJitter(step.brightness, step.contrast, step.saturation, step.hue)
    if kind is T.RandomGrayscale:
        return v2.RandomGrayscale(step.p)
    if kind is T.RandomAffine:
        return v2.RandomAffine(
            step.degrees, step.translate, step.scale, step.shear, step.interpolation, step.fill, step.center
        )
    if kind is T.ToTensor:  # a no-op on the device: DeviceAugmentation turns images to float first
        return v2.ToDtype(torch.float32, scale=True)
    if kind is T.Normalize:
        return v2.Normalize(step.mean, step.std)
    if kind is T.RandomErasing and not isinstance(step.value, str):
        return v2.RandomErasing(step.p, step.scale, step.ratio, step.value)
    raise ValueError(
        f"{kind.__module__}.{kind.__name__} has no tensor twin here, so this stack cannot run on the device "
        "(data.augment_on=gpu, data.decode=gpu): use augment=writeup or augment=none, or data.augment_on=cpu"
    )


# Steps without random parameters: one call on the whole batch does what a call per image would.
_BATCHED = (v2.ToDtype, v2.Normalize)


class DeviceAugmentation:
    """The steps of a torchvision stack after its first Resize, on a batch tensor on the training device.

    Input: (B, 3, H, W) uint8 images, all at the first Resize's size; output: what the stack gives per
    image (float, normalised), stacked. Each image gets its own random parameters, as in a DataLoader
    worker: a torchvision v2 transform called on a batch tensor draws ONE set of parameters for the whole
    batch (every image flipped, or none), so the random steps run image by image, and only the steps
    without randomness (ToDtype, Normalize) run once on the whole batch. The images become float in
    [0, 1] first (the stack's own ToTensor is then a no-op): torchvision's rotations and colour ops are
    10-20x slower on uint8 tensors, and nearest-neighbour rotation gives the same pixels either way.
    Same transforms, same parameter ranges and order as the v1 stack on PIL images; pixels differ only
    by rounding and resampling details (tensor vs PIL bilinear, no uint8 rounding between steps).
    Cost: the loop over images is bound by Python and kernel launches, not pixels: ~1 ms an image on a
    2-core EPYC at 8 px (where pixels cost nothing), so roughly 1,000 img/s at most from the process
    that runs it (the training loop's); bench/gpu.sh measures it on a GPU.
    """

    def __init__(self, steps: Sequence[Any]) -> None:
        self.steps = list(steps)
        self.segments: list[tuple[bool, v2.Compose]] = [
            (False, v2.Compose([v2.ToDtype(torch.float32, scale=True)]))
        ]
        for step in self.steps:  # (per image, steps): consecutive steps of one kind grouped
            per_image = not isinstance(step, _BATCHED)
            if self.segments and self.segments[-1][0] == per_image:
                self.segments[-1][1].transforms.append(step)
            else:
                self.segments.append((per_image, v2.Compose([step])))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"DeviceAugmentation takes (B, C, H, W) batches, not {tuple(images.shape)}")
        for per_image, steps in self.segments:
            images = torch.stack([steps(image) for image in images]) if per_image else steps(images)
        return images

    def __repr__(self) -> str:
        return f"DeviceAugmentation({self.steps})"


def split_for_device(transform: Any) -> tuple[T.Resize, DeviceAugmentation]:
    """(the stack's first Resize, everything after it as a DeviceAugmentation).

    The Resize runs where images are decoded (a loader worker, or the GPU decoder) so that a batch has
    one size; the rest runs on the device. A stack that does not start with a Resize cannot be split.
    """
    resize = first_resize(transform)
    if resize is None:
        steps = transform.transforms if isinstance(transform, T.Compose) else [transform]
        first = type(steps[0]).__name__ if steps else "nothing"
        raise ValueError(
            f"the stack starts with {first}, so it does not start with a Resize that "
            "gives its images one size to batch on the device (data.augment_on=gpu, data.decode=gpu): use "
            "augment=writeup or augment=none"
        )
    if isinstance(resize.size, int) or len(resize.size) != 2:
        raise ValueError(
            f"{resize!r} keeps each image's aspect ratio, so a batch has no common size on the device "
            "(data.augment_on=gpu, data.decode=gpu): the stack must start with Resize((height, width))"
        )
    steps = transform.transforms[1:] if isinstance(transform, T.Compose) else []
    return resize, DeviceAugmentation([_v2_step(step) for step in steps])

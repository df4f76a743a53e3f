"""Train and eval transforms; every size follows image_size (the write-up's numbers at 384 px)."""

from __future__ import annotations

from collections.abc import Sequence

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The write-up resizes to 420 before cropping 384; keep that ratio at other sizes.
RESIZE_RATIO = 420 / 384


def writeup_train_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """The write-up's augmentation stack, in its order, scaled to image_size."""
    resize = round(image_size * RESIZE_RATIO)
    return T.Compose(
        [
            T.Resize((resize, resize)),
            T.RandomResizedCrop(image_size, scale=(0.8, 1.0)),
            T.RandomHorizontalFlip(p=0.5),
            T.RandomRotation(10),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            T.RandomGrayscale(p=0.02),
            T.RandomAffine(degrees=0, translate=(0.1, 0.1)),
            T.ToTensor(),
            T.Normalize(mean=list(mean), std=list(std)),
            T.RandomErasing(p=0.2),
        ]
    )


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """Resize to the model's input size and normalize."""
    return T.Compose(
        [T.Resize((image_size, image_size)), T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]
    )


def train_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], augment: str = "writeup"
) -> T.Compose:
    """`augment=writeup` (default) or `none` (eval transform, for debugging)."""
    if augment == "writeup":
        return writeup_train_transform(image_size, mean, std)
    if augment == "none":
        return eval_transform(image_size, mean, std)
    raise ValueError(f"data.augment={augment!r} is not known; use 'writeup' or 'none'")

"""Train and eval transforms: the write-up's augmentation stack, its scaling with image_size, eval."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from noodlenext.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    train_transform,
    writeup_train_transform,
)

WRITEUP_STEPS = [
    T.Resize,
    T.RandomResizedCrop,
    T.RandomHorizontalFlip,
    T.RandomRotation,
    T.ColorJitter,
    T.RandomGrayscale,
    T.RandomAffine,
    T.ToTensor,
    T.Normalize,
    T.RandomErasing,
]


def _image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return T.ToPILImage()(torch.randint(0, 256, (3, size[1], size[0]), generator=g, dtype=torch.uint8))


def _steps(image_size: int) -> list:
    return list(writeup_train_transform(image_size, IMAGENET_MEAN, IMAGENET_STD).transforms)


def test_imagenet_statistics() -> None:
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)


def test_writeup_train_transform_has_the_writeup_steps_in_order() -> None:
    assert [type(t) for t in _steps(384)] == WRITEUP_STEPS


def test_writeup_train_transform_parameters_at_384() -> None:
    resize, crop, flip, rotate, jitter, gray, affine, _, normalize, erase = _steps(384)
    assert tuple(resize.size) == (420, 420)
    assert tuple(crop.size) == (384, 384)
    assert tuple(crop.scale) == (0.8, 1.0)
    assert flip.p == 0.5
    assert tuple(rotate.degrees) == (-10.0, 10.0)
    for factor in (jitter.brightness, jitter.contrast, jitter.saturation):
        assert tuple(factor) == pytest.approx((0.8, 1.2))
    assert jitter.hue is None
    assert gray.p == 0.02
    assert tuple(affine.degrees) == (0.0, 0.0)
    assert tuple(affine.translate) == (0.1, 0.1)
    assert affine.scale is None and affine.shear is None
    assert tuple(normalize.mean) == IMAGENET_MEAN
    assert tuple(normalize.std) == IMAGENET_STD
    assert erase.p == 0.2


def test_train_transform_defaults_to_the_writeup_stack() -> None:
    assert [type(t) for t in train_transform(384, IMAGENET_MEAN, IMAGENET_STD).transforms] == WRITEUP_STEPS


def test_writeup_sizes_scale_with_image_size() -> None:
    resize, crop, *_ = _steps(64)
    assert tuple(resize.size) == (70, 70)  # 64 * 420 / 384
    assert tuple(crop.size) == (64, 64)


@pytest.mark.parametrize("size", [(40, 32), (200, 90), (64, 64), (10, 7)])
def test_writeup_output_is_3_by_image_size_for_any_input_size(size: tuple[int, int]) -> None:
    tf = writeup_train_transform(64, IMAGENET_MEAN, IMAGENET_STD)
    torch.manual_seed(0)
    for _ in range(3):
        out = tf(_image(size))
        assert out.shape == (3, 64, 64) and out.dtype == torch.float32


def test_eval_transform_is_resize_to_tensor_normalize() -> None:
    resize, to_tensor, normalize = eval_transform(64, IMAGENET_MEAN, IMAGENET_STD).transforms
    assert isinstance(resize, T.Resize) and tuple(resize.size) == (64, 64)
    assert isinstance(to_tensor, T.ToTensor)
    assert isinstance(normalize, T.Normalize)
    assert tuple(normalize.mean) == IMAGENET_MEAN and tuple(normalize.std) == IMAGENET_STD


@pytest.mark.parametrize("size", [(40, 32), (10, 7), (200, 90)])
def test_eval_transform_output_shape(size: tuple[int, int]) -> None:
    assert eval_transform(32, IMAGENET_MEAN, IMAGENET_STD)(_image(size)).shape == (3, 32, 32)


def test_eval_transform_is_deterministic() -> None:
    tf, image = eval_transform(32, IMAGENET_MEAN, IMAGENET_STD), _image((40, 32))
    torch.manual_seed(0)
    first = tf(image)
    torch.manual_seed(1)
    assert torch.equal(first, tf(image))


def test_eval_transform_normalizes_with_the_given_statistics() -> None:
    grey = Image.new("RGB", (8, 8), (128, 128, 128))
    out = eval_transform(8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(grey)
    assert torch.allclose(out, torch.full_like(out, (128 / 255 - 0.5) / 0.25), atol=1e-6)


def test_augment_none_is_the_eval_transform() -> None:
    tf = train_transform(32, IMAGENET_MEAN, IMAGENET_STD, augment="none")
    assert [type(t) for t in tf.transforms] == [T.Resize, T.ToTensor, T.Normalize]


def test_unknown_augment_raises_naming_the_option() -> None:
    with pytest.raises(ValueError, match=r"data\.augment='fancy'"):
        train_transform(32, IMAGENET_MEAN, IMAGENET_STD, augment="fancy")

"""Transforms: the augment config group (the write-up's stack in its order, scaled with image_size;
randaugment with mixup; none), built the same by Hydra and by `load_augmentation`, and the eval transform."""

from __future__ import annotations

import functools

import hydra
import lightning as L
import pytest
import torch
from omegaconf import OmegaConf, open_dict
from PIL import Image
from timm.data import Mixup
from torchvision import transforms as T

from noodlenext.data.datamodule import NoodleDataModule
from noodlenext.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    augment_choices,
    eval_transform,
    load_augmentation,
)
from noodlenext.models.classifier import NoodleClassifier

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
    return list(load_augmentation("writeup", image_size, IMAGENET_MEAN, IMAGENET_STD).train.transforms)


def test_imagenet_statistics() -> None:
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)


def test_augment_group_offers_writeup_randaugment_and_none() -> None:
    assert set(augment_choices()) >= {"writeup", "randaugment", "none"}


def _check_writeup_at_384(steps: list) -> None:
    assert [type(t) for t in steps] == WRITEUP_STEPS
    resize, crop, flip, rotate, jitter, gray, affine, _, normalize, erase = steps
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


def test_writeup_experiment_composes_to_exactly_the_writeup_stack_in_order(compose_cfg) -> None:
    cfg = compose_cfg("train", ["experiment=writeup"])
    augment = hydra.utils.instantiate(cfg.data.augment)
    _check_writeup_at_384(list(augment.train.transforms))
    assert augment.mixup is None


def test_the_composed_config_shows_every_writeup_number(compose_cfg) -> None:
    # What `noodlenext.train experiment=writeup --cfg job --resolve` prints (Hydra resolves in place).
    cfg = compose_cfg("train", ["experiment=writeup"]).copy()
    OmegaConf.set_readonly(cfg, False)
    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.resolve(cfg)
    shown = OmegaConf.to_container(cfg.data.augment)
    steps = {s["_target_"].rsplit(".", 1)[1]: s for s in shown["train"]["transforms"]}
    assert steps["Resize"]["size"] == [420, 420] and steps["RandomResizedCrop"]["size"] == 384
    assert steps["RandomGrayscale"]["p"] == 0.02 and steps["RandomErasing"]["p"] == 0.2
    assert steps["RandomAffine"]["translate"] == [0.1, 0.1] and steps["RandomRotation"]["degrees"] == 10


def test_load_augmentation_builds_what_hydra_composes(compose_cfg) -> None:
    cfg = compose_cfg("train", ["experiment=writeup"])
    composed = hydra.utils.instantiate(cfg.data.augment).train
    assert repr(composed) == repr(load_augmentation("writeup", 384, IMAGENET_MEAN, IMAGENET_STD).train)
    _check_writeup_at_384(_steps(384))


def test_one_augmentation_number_changes_from_the_command_line(compose_cfg) -> None:
    cfg = compose_cfg("train", ["data.augment.train.transforms.3.degrees=20"])
    rotate = hydra.utils.instantiate(cfg.data.augment).train.transforms[3]
    assert tuple(rotate.degrees) == (-20.0, 20.0)


def test_writeup_sizes_scale_with_image_size() -> None:
    resize, crop, *_ = _steps(64)
    assert tuple(resize.size) == (70, 70)  # 64 * 420 / 384
    assert tuple(crop.size) == (64, 64)


@pytest.mark.parametrize("size", [(40, 32), (200, 90), (64, 64), (10, 7)])
@pytest.mark.parametrize("choice", ["writeup", "randaugment"])
def test_train_output_is_3_by_image_size_for_any_input_size(choice: str, size: tuple[int, int]) -> None:
    tf = load_augmentation(choice, 64, IMAGENET_MEAN, IMAGENET_STD).train
    torch.manual_seed(0)
    for _ in range(3):
        out = tf(_image(size))
        assert out.shape == (3, 64, 64) and out.dtype == torch.float32


def test_randaugment_is_timms_recipe_with_mixup(compose_cfg) -> None:
    augment = hydra.utils.instantiate(compose_cfg("train", ["augment=randaugment"]).data.augment)
    names = [type(t).__name__ for t in augment.train.transforms]
    assert names[:3] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment"]
    assert "RandomErasing" in names
    mixup = augment.mixup(num_classes=3)
    assert isinstance(mixup, Mixup) and mixup.num_classes == 3 and mixup.label_smoothing == 0.0


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


def test_augment_none_trains_on_the_eval_transform(make_tree) -> None:
    dm = NoodleDataModule(make_tree({"train": 3}), image_size=32, augment="none", num_workers=0)
    dm.setup("fit")
    assert [type(t) for t in dm.train_set.transform.transforms] == [T.Resize, T.ToTensor, T.Normalize]


def test_unknown_augment_raises_naming_the_option() -> None:
    with pytest.raises(ValueError, match=r"augment='fancy' is not known; use one of none, randaugment"):
        load_augmentation("fancy", 32, IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.slow
def test_mixup_mixes_training_batches_only_and_the_model_learns_from_soft_labels(make_tree) -> None:
    seen: dict[str, list[int]] = {"train": [], "val": []}

    class LabelShapes(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            seen["train"].append(batch[1].ndim)

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
            seen["val"].append(batch[1].ndim)

    mixup = functools.partial(Mixup, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.0)
    dm = NoodleDataModule(
        make_tree({"train": 6}), image_size=32, batch_size=4, num_workers=0, augment={"mixup": mixup}
    )
    model = NoodleClassifier(
        "convnext_atto", 3, ["spaghetti", "ramen", "udon"], image_size=32, pretrained=False
    )
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
        callbacks=[LabelShapes()],
    )
    trainer.fit(model, datamodule=dm)
    assert seen == {"train": [2, 2], "val": [1]}  # (B, classes) mixtures in training, class indices in val
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_mixup_needs_an_even_batch(make_tree) -> None:
    dm = NoodleDataModule(
        make_tree({"train": 6}), image_size=32, batch_size=3, num_workers=0, augment="randaugment"
    )
    with pytest.raises(ValueError, match=r"data.batch_size=3: mixup/cutmix .* needs an even batch size"):
        dm.setup("fit")

"""NoodleDataModule and image loading: classes, splits, bad files, image modes, samplers, loaders."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSES, write_image
from PIL import Image
from torch.utils.data import RandomSampler, WeightedRandomSampler

from noodlenext.data.datamodule import NoodleDataModule, NoodleImages
from noodlenext.data.images import load_rgb

SIZE = 32
LOGGER = "noodlenext.data.datamodule"


def _dm(root: Path, **kwargs: object) -> NoodleDataModule:
    kwargs = {"image_size": SIZE, "num_workers": 0, "batch_size": 4, **kwargs}
    return NoodleDataModule(root, **kwargs)


def _write_counts(split_dir: Path, counts: dict[str, int], seed: int = 0) -> list[Path]:
    return [
        write_image(split_dir / cls / f"{i:03d}.png", seed=seed + 100 * c + i)
        for c, (cls, n) in enumerate(counts.items())
        for i in range(n)
    ]


def _paths(dataset: NoodleImages | None) -> set[Path]:
    assert dataset is not None
    return {path for path, _ in dataset.samples}


def _labels(dataset: NoodleImages | None) -> list[int]:
    assert dataset is not None
    return [label for _, label in dataset.samples]


def _per_class(dataset: NoodleImages | None, num_classes: int = 3) -> list[int]:
    return np.bincount(_labels(dataset), minlength=num_classes).tolist()


# ------------------------------------------------------------------------------- bad files and modes
def _corrupt_jpg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    return path


def _truncated_jpg(path: Path) -> Path:
    write_image(path, size=(160, 120))  # large enough that half the bytes cut into the pixel data
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with Image.open(path) as im:  # the header is intact: only decoding the pixels finds the problem
        assert im.size == (160, 120)
    return path


BAD_FILES: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "random-bytes": ("corrupt.jpg", _corrupt_jpg),
    "truncated-jpeg": ("truncated.jpg", _truncated_jpg),
}


def _rgba_with_transparent_pixel(path: Path) -> Path:
    im = Image.new("RGBA", (40, 32), (10, 20, 30, 255))
    im.putpixel((0, 0), (0, 0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def _palette_with_transparency(path: Path) -> Path:
    im = Image.new("P", (40, 32), 0)
    im.putpalette([200, 0, 0, 0, 0, 200] + [0] * 762)
    im.putpixel((0, 0), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, transparency=1)  # palette index 1 is fully transparent
    return path


def _gray16(path: Path) -> Path:
    arr = np.full((32, 40), 20000, dtype=np.uint16)
    arr[0, :3] = (65535, 32768, 1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


MODES: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "grayscale-L": ("gray.png", lambda p: write_image(p, mode="L")),
    "cmyk-jpeg": ("cmyk.jpg", lambda p: write_image(p, mode="CMYK")),
    "rgba-png": ("rgba.png", _rgba_with_transparent_pixel),
    "palette-transparent": ("palette.png", _palette_with_transparency),
    "gray-16bit-png": ("gray16.png", _gray16),
}


# ------------------------------------------------------------------------------- classes
def test_class_names_drop_the_order_prefix_and_keep_folder_order(make_tree) -> None:
    dm = _dm(make_tree({"train": 2}))
    assert dm.class_names == ["spaghetti", "ramen", "udon"]
    assert dm.num_classes == 3


def test_class_folders_are_ordered_by_numeric_prefix(make_tree) -> None:
    root = make_tree({"train": 2}, classes=("10_a", "2_b"))
    dm = _dm(root, val_fraction=0.0)
    assert dm.class_names == ["b", "a"]
    dm.setup("fit")
    assert {path.parent.name for path, label in dm.train_set.samples if label == 0} == {"2_b"}


# ------------------------------------------------------------------------------- train/val split
def test_split_takes_rounded_ten_percent_of_each_class_at_least_one(tmp_path: Path) -> None:
    _write_counts(tmp_path / "train", {"0_spaghetti": 5, "1_ramen": 10, "2_udon": 30})
    dm = _dm(tmp_path)
    dm.setup("fit")
    assert _per_class(dm.val_set) == [1, 1, 3]  # round(0.5) = 0 -> at least 1
    assert _per_class(dm.train_set) == [4, 9, 27]


def test_split_is_the_same_for_the_same_seed(make_tree) -> None:
    root = make_tree({"train": 20})
    first, second = _dm(root, split_seed=7), _dm(root, split_seed=7)
    first.setup("fit")
    second.setup("fit")
    assert first.val_set.samples == second.val_set.samples
    assert first.train_set.samples == second.train_set.samples


def test_split_differs_for_another_seed(make_tree) -> None:
    root = make_tree({"train": 20})
    first, second = _dm(root, split_seed=0), _dm(root, split_seed=1)
    first.setup("fit")
    second.setup("fit")
    assert _paths(first.val_set) != _paths(second.val_set)


def test_split_partitions_the_train_folder(make_tree) -> None:
    root = make_tree({"train": 20})
    dm = _dm(root)
    dm.setup("fit")
    train, val = _paths(dm.train_set), _paths(dm.val_set)
    assert not train & val
    assert train | val == set((root / "train").rglob("*.png"))


def test_val_folder_is_used_when_present_and_train_is_not_split(make_tree) -> None:
    root = make_tree({"train": 4, "val": 2})
    dm = _dm(root)
    dm.setup("fit")
    assert _paths(dm.train_set) == set((root / "train").rglob("*.png"))
    assert _paths(dm.val_set) == set((root / "val").rglob("*.png"))
    assert _per_class(dm.val_set) == [2, 2, 2]


def test_class_counts_are_counted_after_the_split(tmp_path: Path) -> None:
    _write_counts(tmp_path / "train", {"0_spaghetti": 5, "1_ramen": 10, "2_udon": 30})
    assert _dm(tmp_path).class_counts == [4, 9, 27]


# ------------------------------------------------------------------------------- test split
def test_labelled_test_folders_use_the_training_label_order(make_tree) -> None:
    root = make_tree({"train": 3})
    write_image(root / "test" / "udon" / "a.png")  # no prefix, no ramen, other order
    write_image(root / "test" / "7_spaghetti" / "b.png")
    dm = _dm(root)
    dm.setup("test")
    assert dm.test_is_labelled
    assert {path.parent.name: label for path, label in dm.test_set.samples} == {"udon": 2, "7_spaghetti": 0}


def test_unknown_test_folder_is_unlabelled(make_tree) -> None:
    root = make_tree({"train": 3})
    for i in range(5):
        write_image(root / "test" / "unknown" / f"{i}.png", seed=i)
    dm = _dm(root)
    dm.setup("predict")
    assert not dm.test_is_labelled
    assert _labels(dm.test_set) == [-1] * 5


def test_predict_dataloader_yields_the_unlabelled_test_images(make_tree) -> None:
    root = make_tree({"train": 3})
    for i in range(5):
        write_image(root / "test" / "unknown" / f"{i}.png", seed=i)
    dm = _dm(root)
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert [x.shape for x, _ in batches] == [(4, 3, SIZE, SIZE), (1, 3, SIZE, SIZE)]
    assert torch.cat([y for _, y in batches]).tolist() == [-1] * 5


def test_setup_test_on_unlabelled_test_images_raises(make_tree) -> None:
    root = make_tree({"train": 3})
    write_image(root / "test" / "unknown" / "0.png")
    with pytest.raises(FileNotFoundError, match="no labelled class folders"):
        _dm(root).setup("test")


def test_test_class_not_in_train_raises_naming_the_folder(make_tree) -> None:
    root = make_tree({"train": 3, "test": 1})
    soba = write_image(root / "test" / "3_soba" / "0.png").parent
    with pytest.raises(ValueError, match=re.escape(str(soba))):
        _dm(root).setup("test")


def test_test_mixing_class_folders_and_unknown_raises(make_tree) -> None:
    root = make_tree({"train": 3, "test": 1})
    write_image(root / "test" / "unknown" / "0.png")
    with pytest.raises(ValueError, match="unknown/"):
        _dm(root).setup("test")


# ------------------------------------------------------------------------------- empty folders
def test_empty_train_class_folder_raises_naming_it(make_tree) -> None:
    root = make_tree({"train": 3})
    empty = root / "train" / "3_soba"
    empty.mkdir()
    with pytest.raises(ValueError, match=re.escape(str(empty))):
        _dm(root).setup("fit")


def test_empty_test_class_folder_is_skipped_and_reported(make_tree, caplog) -> None:
    root = make_tree({"train": 3, "test": 2})
    empty = root / "test" / "2_udon"
    for p in empty.iterdir():
        p.unlink()
    dm = _dm(root)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        dm.setup("test")
    assert dm.report.empty_folders == [empty]
    assert _per_class(dm.test_set) == [2, 2, 0]
    assert str(empty) in caplog.text


# ------------------------------------------------------------------------------- bad and odd files
@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_image_is_skipped_and_listed(make_tree, kind: str) -> None:
    root = make_tree({"train": 3, "test": 1})
    name, write = BAD_FILES[kind]
    bad = write(root / "train" / "1_ramen" / name)
    dm = _dm(root)
    dm.setup("fit")
    assert [path for path, _ in dm.report.skipped] == [bad]
    assert bad not in _paths(dm.train_set) | _paths(dm.val_set)
    assert dm.class_counts == [2, 2, 2]


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_image_in_test_is_skipped_and_listed(make_tree, kind: str) -> None:
    root = make_tree({"train": 3, "test": 2})
    name, write = BAD_FILES[kind]
    bad = write(root / "test" / "0_spaghetti" / name)
    dm = _dm(root)
    dm.setup("test")
    assert [path for path, _ in dm.report.skipped] == [bad]
    assert _per_class(dm.test_set) == [2, 2, 2]


def test_bad_images_are_reported_once_across_setups(make_tree, caplog) -> None:
    root = make_tree({"train": 3, "test": 1})
    bad = _corrupt_jpg(root / "train" / "1_ramen" / "corrupt.jpg")
    dm = _dm(root)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        dm.setup("fit")
        dm.setup("test")
        dm.setup("validate")
    assert sum(str(bad) in r.getMessage() for r in caplog.records) == 1
    assert len(dm.report.skipped) == 1


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_image_with_on_bad_image_error_raises_naming_the_file(make_tree, kind: str) -> None:
    root = make_tree({"train": 3})
    name, write = BAD_FILES[kind]
    bad = write(root / "train" / "1_ramen" / name)
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        _dm(root, on_bad_image="error").setup("fit")


def test_non_image_files_are_ignored_and_counted_hidden_files_are_not(make_tree) -> None:
    root = make_tree({"train": 3})
    notes = root / "train" / "0_spaghetti" / "notes.txt"
    notes.write_text("not a noodle")
    (root / "train" / "0_spaghetti" / ".DS_Store").write_bytes(b"\0\1\2")
    dm = _dm(root, val_fraction=0.0)
    dm.setup("fit")
    assert dm.report.non_images == [notes]
    assert dm.report.skipped == []
    assert dm.class_counts == [3, 3, 3]


def test_non_image_files_in_unknown_test_folder_are_counted(make_tree) -> None:
    root = make_tree({"train": 3})
    write_image(root / "test" / "unknown" / "0.png")
    notes = root / "test" / "unknown" / "notes.txt"
    notes.write_text("ids")
    (root / "test" / "unknown" / ".DS_Store").write_bytes(b"\0")
    dm = _dm(root)
    dm.setup("predict")
    assert dm.report.non_images == [notes]
    assert _labels(dm.test_set) == [-1]


def test_image_smaller_than_input_is_counted_and_loads(make_tree) -> None:
    root = make_tree({"train": 3})  # 40x32: not smaller than 32
    small = write_image(root / "train" / "2_udon" / "small.png", size=(20, 12))
    dm = _dm(root, val_fraction=0.0)
    dm.setup("fit")
    assert dm.report.smaller_than_input == 1
    index = [path for path, _ in dm.train_set.samples].index(small)
    image, label = dm.train_set[index]
    assert image.shape == (3, SIZE, SIZE) and label == 2


def test_image_broken_after_setup_raises_naming_it(make_tree) -> None:
    root = make_tree({"train": 3})
    dm = _dm(root, val_fraction=0.0)
    dm.setup("fit")
    path, _ = dm.train_set.samples[0]
    path.write_bytes(b"overwritten")
    with pytest.raises(RuntimeError, match=re.escape(str(path))):
        dm.train_set[0]


# ------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("mode", MODES)
def test_load_rgb_returns_rgb_for_any_mode(tmp_path: Path, mode: str) -> None:
    name, write = MODES[mode]
    image = load_rgb(write(tmp_path / name))
    assert image.mode == "RGB" and image.size == (40, 32)


def test_grayscale_loads_as_equal_rgb_channels(tmp_path: Path) -> None:
    arr = np.asarray(load_rgb(write_image(tmp_path / "g.png", mode="L")))
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_rgba_transparent_pixel_is_composited_on_white(tmp_path: Path) -> None:
    arr = np.asarray(load_rgb(_rgba_with_transparent_pixel(tmp_path / "rgba.png")))
    assert arr[0, 0].tolist() == [255, 255, 255]
    assert arr[5, 5].tolist() == [10, 20, 30]  # opaque pixels keep their colour


def test_palette_transparent_index_is_composited_on_white(tmp_path: Path) -> None:
    arr = np.asarray(load_rgb(_palette_with_transparency(tmp_path / "p.png")))
    assert arr[0, 0].tolist() == [255, 255, 255]
    assert arr[5, 5].tolist() == [200, 0, 0]


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = _gray16(tmp_path / "gray16.png")
    with Image.open(path) as im:
        assert im.mode == "I;16"
    arr = np.asarray(load_rgb(path)).astype(int)
    assert arr[0, 0].tolist() == [255, 255, 255]
    assert abs(arr[0, 1, 0] - 128) <= 1  # 32768 / 65535 of full scale
    assert arr[0, 2, 0] <= 5  # 1000 is dark, not clipped to 255
    assert abs(arr[5, 5, 0] - 78) <= 1  # 20000 / 257


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.new("RGB", (40, 20), (90, 90, 90)).save(path, exif=exif)
    assert load_rgb(path).size == (20, 40)


@pytest.mark.parametrize("mode", MODES)
def test_train_loader_yields_3_channel_tensors_for_any_mode(make_tree, mode: str) -> None:
    root = make_tree({"train": 2, "val": 1})
    name, write = MODES[mode]
    odd = write(root / "train" / "1_ramen" / name)
    dm = _dm(root, batch_size=7)  # the whole train set in one batch
    dm.setup("fit")
    assert odd in _paths(dm.train_set)
    assert [x.shape for x, _ in dm.train_dataloader()] == [(7, 3, SIZE, SIZE)]


# ------------------------------------------------------------------------------- sampling
def test_weighted_sampler_draws_classes_roughly_equally(tmp_path: Path) -> None:
    _write_counts(tmp_path / "train", {"0_spaghetti": 4, "1_ramen": 8, "2_udon": 16})
    _write_counts(tmp_path / "val", {"0_spaghetti": 1, "1_ramen": 1, "2_udon": 1}, seed=5000)
    dm = _dm(tmp_path, sampler="weighted")
    dm.setup("fit")
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, WeightedRandomSampler) and sampler.replacement
    labels = _labels(dm.train_set)
    drawn: list[int] = []
    while len(drawn) < 3000:
        drawn += [labels[i] for i in sampler]
    shares = np.bincount(drawn[:3000], minlength=3) / 3000
    assert all(0.25 <= s <= 0.42 for s in shares), shares


def test_default_train_loader_shuffles_every_sample_once_per_epoch(make_tree) -> None:
    dm = _dm(make_tree({"train": 10}), batch_size=9)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, RandomSampler) and not loader.sampler.replacement
    torch.manual_seed(0)
    epoch = list(loader.sampler)
    n = len(dm.train_set)
    assert n == 27  # 3 full batches: no partial training batch for the loader to drop
    assert sorted(epoch) == list(range(n))
    assert epoch != list(range(n))
    assert sum(len(y) for _, y in loader) == n


def test_val_loader_keeps_sample_order(make_tree) -> None:
    dm = _dm(make_tree({"train": 10}))
    dm.setup("fit")
    assert torch.cat([y for _, y in dm.val_dataloader()]).tolist() == _labels(dm.val_set)


# ------------------------------------------------------------------------------- configuration errors
def test_missing_train_folder_raises_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "test").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "train"))):
        _dm(tmp_path).setup("fit")


@pytest.mark.parametrize(
    ("option", "value"),
    [("val_fraction", 1.5), ("val_fraction", -0.1), ("sampler", "oops"), ("on_bad_image", "oops")],
)
def test_invalid_option_raises_naming_it(tmp_path: Path, option: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"data\.{option}="):
        _dm(tmp_path, **{option: value})


# ------------------------------------------------------------------------------- end to end
def test_loaders_iterate_every_batch_with_bad_files_present(make_tree) -> None:
    root = make_tree({"train": 6, "test": 2})
    for split in ("train", "test"):
        _corrupt_jpg(root / split / CLASSES[0] / "corrupt.jpg")
        _truncated_jpg(root / split / CLASSES[1] / "truncated.jpg")
        (root / split / CLASSES[2] / "notes.txt").write_text("x")
    write_image(root / "train" / CLASSES[2] / "tiny.png", size=(10, 7))
    dm = _dm(root, batch_size=4)
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.report.skipped) == 4
    assert len(dm.train_set) == 16  # 4 full batches: no partial training batch for the loader to drop
    for loader, n in (
        (dm.train_dataloader(), len(dm.train_set)),
        (dm.val_dataloader(), len(dm.val_set)),
        (dm.test_dataloader(), 6),
    ):
        seen = 0
        for x, y in loader:
            assert x.shape[1:] == (3, SIZE, SIZE) and x.isfinite().all()
            assert ((y >= 0) & (y < 3)).all()
            seen += len(y)
        assert seen == n

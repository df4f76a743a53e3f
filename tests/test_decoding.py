"""Decoding for the model: JPEG draft mode at the first Resize's size (EXIF orientation read first), the
data.cache=resized copies, the write-up stack on the device (data.augment_on=gpu, per-image randomness) and
the bytes-then-decode path of data.decode=gpu (run here with torchvision's CPU JPEG decoder)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T

from noodlenext.data.datamodule import NoodleDataModule
from noodlenext.data.gpu_decode import EncodedImages, collate_encoded, decode_batch
from noodlenext.data.images import load_rgb
from noodlenext.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DeviceAugmentation,
    decode_size,
    eval_transform,
    load_augmentation,
    split_for_device,
)
from noodlenext.models.classifier import NoodleClassifier

# EXIF orientation -> the transpose that stores an upright image that way (the inverse of making it upright)
STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def upright_photo(size: tuple[int, int] = (800, 600), seed: int = 0) -> Image.Image:
    """Smooth colours with a red block at the top left and a blue one at the top right, upright."""
    w, h = size
    small = (max(1, w // 16), max(1, h // 16))  # drawn small and enlarged: cheap even at phone sizes
    yy, xx = np.mgrid[0 : small[1], 0 : small[0]]
    rng = np.random.default_rng(seed)
    grad = np.stack([xx * 200 / small[0], yy * 200 / small[1], np.full(xx.shape, 80.0)], axis=-1)
    grad = np.clip(grad + rng.normal(0, 8, grad.shape), 0, 255).astype(np.uint8)
    arr = np.array(Image.fromarray(grad, "RGB").resize(size, Image.Resampling.BILINEAR))
    arr[: h // 4, : w // 4] = (250, 20, 20)
    arr[: h // 4, -w // 4 :] = (20, 20, 250)
    return Image.fromarray(arr, "RGB")


def write_jpeg(path: Path, orientation: int = 1, size: tuple[int, int] = (800, 600), seed: int = 0) -> Path:
    """A JPEG whose pixels are stored turned so that its EXIF orientation makes it upright_photo again."""
    image = upright_photo(size, seed)
    if STORED[orientation] is not None:
        image = image.transpose(STORED[orientation])
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=92, exif=exif.tobytes())
    return path


def corners(image: Image.Image) -> tuple[str, str]:
    """Which of red/blue the top-left and top-right corners are."""
    arr = np.asarray(image.convert("RGB"), dtype=np.int32)
    h, w = arr.shape[:2]

    def colour(px: np.ndarray) -> str:
        return "red" if px[0] > px[2] + 100 else "blue" if px[2] > px[0] + 100 else "other"

    return colour(arr[h // 10, w // 10]), colour(arr[h // 10, w - w // 10])


def mean_abs(a: Image.Image, b: Image.Image, size: tuple[int, int] = (200, 150)) -> float:
    return float(np.abs(np.asarray(a.resize(size), float) - np.asarray(b.resize(size), float)).mean())


# ------------------------------------------------------------------------------------------ draft mode
@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_draft_decode_is_upright_at_the_smallest_scale_not_below_the_target(tmp_path, orientation) -> None:
    path = write_jpeg(tmp_path / "photo.jpg", orientation)
    reference = ImageOps.exif_transpose(Image.open(path)).convert("RGB")  # full decode, upright
    assert reference.size == (800, 600)
    # Upright target 100x190: 800/100 = 8 but 600/190 = 3, so 1/2 scale; judging the stored (turned)
    # sides against the target unswapped would pick 1/4 for orientations 5-8 and go below 190.
    image = load_rgb(path, (100, 190))
    assert image.size == (400, 300)
    assert image.mode == "RGB"
    assert corners(image) == corners(reference) == ("red", "blue")
    assert mean_abs(image, reference) < 3.0
    assert 0x0112 not in image.getexif()  # upright now: nothing applies the orientation a second time


def test_phone_photo_decodes_at_a_quarter_for_the_writeup_resize(tmp_path) -> None:
    path = write_jpeg(tmp_path / "phone.jpg", 6, size=(4032, 3024))
    writeup = load_augmentation("writeup", 384, IMAGENET_MEAN, IMAGENET_STD).train
    assert decode_size(writeup) == (420, 420)
    image = load_rgb(path, decode_size(writeup))
    assert image.size == (1008, 756)  # 1/8 would be 504x378, below 420
    assert corners(image) == ("red", "blue")


def test_phone_mpo_with_a_second_frame_decodes_in_draft_mode_too(tmp_path) -> None:
    """Phones often write MPO (a JPEG followed by more frames, e.g. a depth map); PIL opens it as MPO."""
    stored = upright_photo().transpose(STORED[6])
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, "MPO", save_all=True, append_images=[stored.resize((60, 80))], exif=exif.tobytes())
    assert Image.open(path).format == "MPO"
    image = load_rgb(path, (100, 190))
    assert image.size == (400, 300)
    assert corners(image) == ("red", "blue")


def test_upright_jpeg_without_a_target_decodes_in_full_and_unchanged(tmp_path) -> None:
    path = write_jpeg(tmp_path / "plain.jpg", 1, size=(320, 240))
    image = load_rgb(path)
    assert image.size == (320, 240)
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(path).convert("RGB")))


def test_non_jpeg_is_unaffected_by_a_draft_target(tmp_path) -> None:
    path = tmp_path / "photo.png"
    upright_photo((640, 480)).save(path)
    image = load_rgb(path, (64, 64))
    assert image.size == (640, 480)
    assert np.array_equal(np.asarray(image), np.asarray(upright_photo((640, 480))))


def test_small_jpeg_is_never_decoded_below_its_size(tmp_path) -> None:
    path = write_jpeg(tmp_path / "small.jpg", 6, size=(300, 200))
    assert load_rgb(path, (420, 420)).size == (300, 200)


def test_data_module_decodes_training_and_eval_images_in_draft_mode(tmp_path) -> None:
    root = tmp_path / "noodles"
    for c in ("a", "b"):
        for i in range(3):
            write_jpeg(root / "train" / c / f"{i}.jpg", 1 + 5 * (i % 2), size=(320, 240), seed=i)
    dm = NoodleDataModule(root, 64, batch_size=2, num_workers=0, val_fraction=0.34)
    dm.setup("fit")
    assert dm.train_set.decode_size == (70, 70)  # the write-up's Resize 420 at 384 px, scaled to 64
    assert dm.val_set.decode_size == (64, 64)  # the eval transform's Resize
    x, _ = dm.val_set[0]
    full = eval_transform(64, IMAGENET_MEAN, IMAGENET_STD)(
        ImageOps.exif_transpose(Image.open(dm.val_set.samples[0][0])).convert("RGB")
    )
    assert x.shape == full.shape == (3, 64, 64)
    assert float((x - full).abs().mean()) < 0.05  # the same picture as a full decode, normalised


# ------------------------------------------------------------------------------------------ the cache
def _tree(root: Path, n: int = 3) -> Path:
    for c in ("a", "b"):
        for i in range(n):
            write_jpeg(
                root / "train" / c / f"{i}.jpg", (1, 6, 3)[i % 3], size=(400, 300), seed=10 * i + ord(c)
            )
    return root


def _entries(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*.npy")}


def test_cache_gives_the_uncached_pixels_and_is_reused(tmp_path) -> None:
    root = _tree(tmp_path / "noodles")
    plain = NoodleDataModule(root, 64, num_workers=0, val_fraction=0.34)
    plain.setup("fit")
    cached = NoodleDataModule(root, 64, num_workers=0, val_fraction=0.34, cache="resized")
    cached.setup("fit")
    cache = cached.val_set.cache
    assert cache.folder == root / ".noodlenext_cache" / "64x64-bilinear"
    first = [cached.val_set[i][0] for i in range(len(cached.val_set))]
    assert (cache.hits, cache.misses) == (0, len(first))
    assert len(_entries(cache.folder)) == len(first)
    for i, x in enumerate(first):
        assert torch.equal(x, plain.val_set[i][0])  # lossless: exactly what an uncached epoch sees
        assert torch.equal(cached.val_set[i][0], x)
    assert (cache.hits, cache.misses) == (len(first), len(first))
    # a new run (new data module) finds the entries
    again = NoodleDataModule(root, 64, num_workers=0, val_fraction=0.34, cache="resized")
    again.setup("fit")
    again.val_set[0]
    assert (again.val_set.cache.hits, again.val_set.cache.misses) == (1, 0)
    assert not list(cache.folder.rglob("*.tmp"))  # atomic writes leave no temporary file


def test_cache_is_rebuilt_when_the_file_changes(tmp_path) -> None:
    root = _tree(tmp_path / "noodles")
    dm = NoodleDataModule(root, 64, num_workers=0, val_fraction=0.34, cache="resized")
    dm.setup("fit")
    path = dm.val_set.samples[0][0]
    before = dm.val_set[0][0]
    entries = _entries(dm.val_set.cache.folder)
    Image.new("RGB", (400, 300), (0, 200, 0)).save(path, "JPEG")  # another picture, same name
    after = dm.val_set[0][0]
    assert len(_entries(dm.val_set.cache.folder) - entries) == 1  # a new entry for the new bytes
    assert not torch.equal(before, after)
    green = torch.tensor([0.0, 200 / 255, 0.0])
    expected = (green - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(after.mean(dim=(1, 2)), expected, atol=0.1)


def test_cache_is_rebuilt_for_another_size(tmp_path) -> None:
    root = _tree(tmp_path / "noodles")
    small = NoodleDataModule(root, 64, num_workers=0, val_fraction=0.34, cache="resized")
    small.setup("fit")
    small.val_set[0]
    large = NoodleDataModule(root, 96, num_workers=0, val_fraction=0.34, cache="resized")
    large.setup("fit")
    assert large.val_set[0][0].shape == (3, 96, 96)
    assert large.val_set.cache.folder != small.val_set.cache.folder
    assert (large.val_set.cache.hits, large.val_set.cache.misses) == (0, 1)
    assert len(_entries(large.val_set.cache.folder)) == 1


def test_damaged_cache_entry_is_rebuilt(tmp_path) -> None:
    root = _tree(tmp_path / "noodles")
    dm = NoodleDataModule(root, 64, num_workers=0, val_fraction=0.34, cache="resized")
    dm.setup("fit")
    x = dm.val_set[0][0]
    entry = dm.val_set.cache.entry(dm.val_set.samples[0][0])
    entry.write_bytes(entry.read_bytes()[:50])  # truncated
    assert torch.equal(dm.val_set[0][0], x)
    assert dm.val_set.cache.misses == 2


def test_training_images_are_cached_at_the_writeup_resize(tmp_path) -> None:
    root = _tree(tmp_path / "noodles")
    dm = NoodleDataModule(root, 64, batch_size=2, num_workers=0, val_fraction=0.34, cache="resized")
    dm.setup("fit")
    for _ in range(2):  # two epochs
        for images, _ in dm.train_dataloader():
            assert images.shape[1:] == (3, 64, 64)
    cache = dm.train_set.cache
    assert cache.folder.name == "70x70-bilinear"
    assert cache.misses == len(dm.train_set) and cache.hits == len(dm.train_set)


def test_unwritable_cache_folder_is_a_clear_error(tmp_path) -> None:
    root = _tree(tmp_path / "noodles", n=2)
    (tmp_path / "a_file").write_text("")
    dm = NoodleDataModule(root, 64, num_workers=0, cache="resized", cache_dir=tmp_path / "a_file" / "cache")
    with pytest.raises(
        ValueError, match=r"data.cache=resized: cannot write to the cache folder .*data.cache_dir"
    ):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cache": "all"}, r"data.cache='all' is not known"),
        ({"decode": "nvjpeg"}, r"data.decode='nvjpeg' is not known"),
        ({"augment_on": "tpu"}, r"data.augment_on='tpu' is not known"),
        ({"decode": "gpu"}, r"data.decode=gpu .* add data.augment_on=gpu"),
        ({"decode": "gpu", "augment_on": "gpu", "cache": "resized"}, r"choose one"),
    ],
)
def test_unknown_or_conflicting_decoding_options_raise_naming_them(tmp_path, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        NoodleDataModule(tmp_path, 64, **options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where there is no CUDA GPU")
def test_gpu_decoding_without_cuda_is_a_clear_error(tmp_path) -> None:
    dm = NoodleDataModule(_tree(tmp_path / "noodles", n=2), 64, decode="gpu", augment_on="gpu")
    with pytest.raises(RuntimeError, match=r"data.decode=gpu .* no CUDA GPU is visible .*data.decode=cpu"):
        dm.setup("fit")


# ------------------------------------------------------------------------------ augmentation on the device
def _writeup(size: int = 64) -> T.Compose:
    return load_augmentation("writeup", size, IMAGENET_MEAN, IMAGENET_STD).train


def test_device_stack_is_the_writeup_stack_after_its_resize_with_the_same_numbers() -> None:
    resize, device = split_for_device(_writeup(384))
    assert resize.size == [420, 420]
    names = [type(s).__name__ for s in device.steps]
    assert names == [
        "RandomResizedCrop",
        "RandomHorizontalFlip",
        "RandomRotation",
        "ColorJitter",
        "RandomGrayscale",
        "RandomAffine",
        "ToDtype",
        "Normalize",
        "RandomErasing",
    ]
    crop, flip, rotation, jitter, gray, affine, _, normalize, erasing = device.steps
    assert (list(crop.size), list(crop.scale)) == ([384, 384], [0.8, 1.0])
    assert flip.p == 0.5 and gray.p == 0.02 and erasing.p == 0.2
    assert rotation.degrees == [-10.0, 10.0]
    assert jitter.brightness == jitter.contrast == jitter.saturation == (0.8, 1.2)
    assert affine.translate == (0.1, 0.1) or list(affine.translate) == [0.1, 0.1]
    assert list(normalize.mean) == list(IMAGENET_MEAN)


def test_device_augmentation_draws_parameters_per_image() -> None:
    torch.manual_seed(0)
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    image[:, :, :4] = 255  # bright left half
    flips = DeviceAugmentation(
        split_for_device(T.Compose([T.Resize((8, 8)), T.RandomHorizontalFlip(0.5)]))[1].steps
    )
    out = flips(image.expand(400, -1, -1, -1).contiguous())
    flipped = (out[:, 0, 0, 0] == 0).float().mean().item()
    assert 0.4 < flipped < 0.6  # one draw per batch would give 0 or 1


def test_device_writeup_stack_matches_the_cpu_stacks_distribution() -> None:
    """The same photo through the PIL stack (a worker) and the tensor stack (the device), 120 draws each:
    the per-image means and spreads agree, and so does how often the image comes out mirrored."""
    torch.manual_seed(0)
    photo = upright_photo((140, 100))
    cpu_stack = _writeup(32)
    resize, device = split_for_device(cpu_stack)
    base = T.PILToTensor()(resize(photo))
    cpu = torch.stack([cpu_stack(photo) for _ in range(120)])
    gpu = device(base.expand(120, -1, -1, -1).contiguous())
    assert cpu.shape == gpu.shape == (120, 3, 32, 32)
    for stat in (lambda x: x.mean(dim=(1, 2, 3)), lambda x: x.std(dim=(1, 2, 3))):
        a, b = stat(cpu), stat(gpu)
        assert abs(a.mean() - b.mean()) < 0.1 and abs(a.std() - b.std()) < 0.1

    def mirrored(x: torch.Tensor) -> torch.Tensor:  # red (top left) lies right of centre
        red = x[:, 0, :10] - x[:, 2, :10]
        return red[:, :, 16:].mean(dim=(1, 2)) > red[:, :, :16].mean(dim=(1, 2))

    assert abs(mirrored(cpu).float().mean() - mirrored(gpu).float().mean()) < 0.15
    assert 0.3 < mirrored(gpu).float().mean() < 0.7


def test_stack_that_crops_first_cannot_run_on_the_device(tmp_path) -> None:
    dm = NoodleDataModule(_tree(tmp_path / "noodles", n=2), 64, augment="randaugment", augment_on="gpu")
    with pytest.raises(ValueError, match=r"does not start with a Resize.*augment=writeup"):
        dm.setup("fit")


@pytest.mark.slow
def test_augment_on_gpu_trains_with_the_stack_applied_after_the_transfer(tmp_path) -> None:
    seen: dict[str, list] = {"train": [], "val": []}

    class Shapes(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            seen["train"].append((tuple(batch[0].shape), batch[0].dtype))

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
            seen["val"].append((tuple(batch[0].shape), batch[0].dtype))

    dm = NoodleDataModule(
        _tree(tmp_path / "noodles"), 32, batch_size=2, num_workers=0, val_fraction=0.34, augment_on="gpu"
    )
    dm.setup("fit")
    assert dm.train_set[0][0].dtype == torch.uint8 and dm.train_set[0][0].shape == (3, 35, 35)  # Resize only
    model = NoodleClassifier("convnext_atto", 2, ["a", "b"], image_size=32, pretrained=False)
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
        callbacks=[Shapes()],
    )
    trainer.fit(model, datamodule=dm)
    assert seen == {"train": [((2, 3, 32, 32), torch.float32)] * 2, "val": [((2, 3, 32, 32), torch.float32)]}
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


# ------------------------------------------------------------------------------ bytes, then decode
def test_encoded_batch_decodes_upright_and_resized_like_the_cpu_path(tmp_path) -> None:
    """data.decode=gpu's path with torchvision's CPU decoder standing in for nvJPEG: workers send bytes
    and the orientation; decode_batch turns them upright and resizes them; a PNG travels decoded."""
    samples = [(write_jpeg(tmp_path / f"{o}.jpg", o, size=(400, 300)), o) for o in (1, 3, 5, 6, 8)]
    png = tmp_path / "p.png"
    upright_photo((400, 300)).save(png)
    samples.append((png, 0))
    resize = T.Resize((48, 64))
    items = EncodedImages(samples, resize)
    batch = collate_encoded([items[i] for i in range(len(items))])
    assert [d.ndim for d in batch[0]] == [1, 1, 1, 1, 1, 3]  # JPEG bytes; the PNG decoded by the worker
    assert batch[1] == [1, 3, 5, 6, 8, 1]
    images = decode_batch(batch[0], batch[1], resize, "cpu")
    assert images.shape == (6, 3, 48, 64) and images.dtype == torch.uint8
    for image, (path, _) in zip(images, samples, strict=True):
        expected = T.PILToTensor()(resize(load_rgb(path))).float()
        assert float((image.float() - expected).abs().mean()) < 6.0, path.name
        assert corners(T.ToPILImage()(image)) == ("red", "blue"), path.name


def test_decoding_options_compose_from_the_command_line(compose_cfg, tmp_path) -> None:
    import hydra

    cfg = compose_cfg(
        "train",
        [f"data.root={_tree(tmp_path / 'noodles', n=2)}", "data.cache=resized", "data.augment_on=gpu"],
    )
    assert (cfg.data.cache, cfg.data.decode, cfg.data.augment_on) == ("resized", "cpu", "gpu")
    dm = hydra.utils.instantiate(cfg.data)
    assert (dm.cache, dm.augment_on, dm.decode) == ("resized", "gpu", "cpu")
    assert dm.cache_dir == tmp_path / "noodles" / ".noodlenext_cache"
    default = compose_cfg("train", [])
    assert (default.data.cache, default.data.decode, default.data.augment_on) == ("none", "cpu", "cpu")
    assert hydra.utils.instantiate(default.data).cache is None

"""Fuzzing the image readers: real JPEG, PNG and WebP files, cut short, with flipped bytes, with garbage
headers and broken EXIF blocks, deterministically from one seed. The data module, the data doctor,
predict and the page's photo loading never crash on them, and every file they refuse is named."""

from __future__ import annotations

import csv
import io
import logging
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image
from torch.utils.data import DataLoader

from noodlenext.app import open_photo
from noodlenext.data.datamodule import UNLABELLED, NoodleDataModule, NoodleImages
from noodlenext.data.images import check_image, find_readable_images, load_rgb
from noodlenext.data.rules import check_dataset
from noodlenext.data.transforms import eval_transform
from noodlenext.models.classifier import NoodleClassifier
from noodlenext.models.predictions import predict_to_csv

SEED = 20_240_613
SIZE = 32
CLASSES = ("0_spaghetti", "1_ramen", "2_udon")
MAX_PIXELS = 50_000_000  # the page's limit (app.max_pixels): a flipped header byte can claim a huge image


@pytest.fixture(autouse=True)
def _quiet_pil() -> Iterator[None]:
    with warnings.catch_warnings():  # PIL warns about truncated EXIF reads and large images: expected here
        warnings.simplefilter("ignore")
        yield


def photo(seed: int, size: tuple[int, int] = (72, 56)) -> Image.Image:
    """Smooth blobs: a photo-like picture (real encoders compress it as they would a photo)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8), "RGB")
    return small.resize(size, Image.Resampling.BICUBIC)


def exif_block(orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "Noodle"
    return exif.tobytes()  # b"Exif\0\0" + a big-endian TIFF block


def encoded(im: Image.Image, fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **save)
    return buffer.getvalue()


def originals() -> dict[str, bytes]:
    """The files the mutants are made from: what cameras, phones and the web produce."""
    exif = exif_block()
    rgba = photo(3).convert("RGBA")
    rgba.putalpha(160)
    return {
        "exif.jpg": encoded(photo(1), "JPEG", quality=85, exif=exif),
        "progressive.jpg": encoded(photo(2), "JPEG", quality=85, progressive=True),
        "alpha.png": encoded(rgba, "PNG", exif=exif),
        "palette.png": encoded(photo(4).convert("P"), "PNG"),
        "exif.webp": encoded(photo(5), "WEBP", quality=80, exif=exif),
        "lossless.webp": encoded(photo(6), "WEBP", lossless=True),
    }


def broken_exif(kind: str) -> bytes:
    """An EXIF block (PIL writes it into a JPEG, PNG or WebP) that is damaged in one specific way."""
    good = exif_block()
    tiff = good[6:]
    if kind == "orientation_9":
        return exif_block(9)
    if kind == "orientation_0":
        return exif_block(0)
    if kind == "orientation_65535":
        return exif_block(65535)
    if kind == "orientation_as_text":  # the tag's type says ASCII: "6" is not a number PIL returns
        return good.replace(
            b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06", b"\x01\x12\x00\x02\x00\x00\x00\x02\x36\x00"
        )
    if (
        kind == "wrong_type_tag"
    ):  # Make's bytes under ColorMap's tag (a SHORT array): read, cannot be written back
        return good.replace(b"\x01\x0f\x00\x02", b"\x01\x40\x00\x02")
    if kind == "ifd_count_huge":
        return b"Exif\x00\x00" + tiff[:8] + b"\xff\xff" + tiff[10:]
    if kind == "ifd_offset_out_of_range":
        return b"Exif\x00\x00" + tiff[:4] + struct.pack(">I", 0x7FFFFFF0) + tiff[8:]
    if kind == "bad_byte_order":
        return b"Exif\x00\x00XX" + tiff[2:]
    if kind == "cut_short":
        return good[: len(good) // 2]
    raise ValueError(kind)


EXIF_DAMAGE = (
    "orientation_9",
    "orientation_0",
    "orientation_65535",
    "orientation_as_text",
    "wrong_type_tag",
    "ifd_count_huge",
    "ifd_offset_out_of_range",
    "bad_byte_order",
    "cut_short",
)


def mutants(name: str, data: bytes, rng: np.random.Generator) -> Iterator[tuple[str, bytes]]:
    """(label, bytes): cuts at many points, flipped bits, overwritten header bytes and random blocks."""
    n = len(data)
    for cut in np.unique(np.linspace(1, n - 1, 14).astype(int)):
        yield f"cut{cut}", data[:cut]
    for i in range(10):
        b = bytearray(data)
        for pos in rng.integers(0, n, int(rng.integers(1, 6))):
            b[pos] ^= 1 << int(rng.integers(0, 8))
        yield f"flip{i}", bytes(b)
    for i in range(8):  # the header: sizes, modes, chunk lengths, markers
        b = bytearray(data)
        b[int(rng.integers(0, min(n, 120)))] = int(rng.integers(0, 256))
        yield f"head{i}", bytes(b)
    for i in range(4):
        b = bytearray(data)
        start, length = int(rng.integers(0, n)), int(rng.integers(1, 48))
        b[start : start + length] = rng.bytes(length)[: n - start]
        yield f"block{i}", bytes(b)
    at = max(data.find(b"Exif\x00\x00"), data.find(b"eXIf"), data.find(b"EXIF"))
    if at >= 0:  # inside the EXIF block: its entries, types, counts and offsets
        for i in range(6):
            b = bytearray(data)
            for pos in rng.integers(at + 8, min(n, at + 60), 3):
                b[pos] = int(rng.integers(0, 256))
            if data[at : at + 4] == b"eXIf":  # PNG: a chunk with a CRC, which PIL checks; make it match
                length = struct.unpack(">I", data[at - 4 : at])[0]
                b[at + 4 + length : at + 8 + length] = struct.pack(">I", zlib.crc32(b[at : at + 4 + length]))
            yield f"exif{i}", bytes(b)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A dataset tree: a few clean photos per class, and every mutant in train/ (none in test/, where a
    byte-identical copy would be refused as leakage). Returns (root, the mutant files)."""
    root = tmp_path_factory.mktemp("fuzz") / "noodles"
    rng = np.random.default_rng(SEED)
    files: list[Path] = []

    def add(folder: Path, name: str, data: bytes) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        files.append(folder / name)

    for c, cls in enumerate(CLASSES):
        for i in range(3):
            for split, seed, ext in (("train", 100 * c + i, "jpg"), ("test", 1000 + 100 * c + i, "png")):
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                photo(seed).save(root / split / cls / f"clean{i}.{ext}")
    for k, (name, data) in enumerate(originals().items()):
        stem, ext = name.split(".")
        for label, mutant in mutants(name, data, rng):
            add(root / "train" / CLASSES[k % 3], f"{stem}_{label}.{ext}", mutant)
    for k, kind in enumerate(EXIF_DAMAGE):
        for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")):
            image = encoded(photo(50 + k), fmt, exif=broken_exif(kind))
            add(root / "train" / CLASSES[k % 3], f"damaged_exif_{kind}.{ext}", image)
    return root, files


def test_checking_agrees_with_loading_and_the_page_names_every_refused_file(corpus) -> None:
    _, files = corpus
    refused = 0
    for path in files:
        problem, (width, height) = check_image(path)
        if problem is None:
            for image in (load_rgb(path), load_rgb(path, SIZE)):  # what the data module decodes
                assert image.mode == "RGB" and min(image.size) > 0, path
            assert open_photo(path, MAX_PIXELS).mode == "RGB"  # the page opens what the check passes
        else:
            refused += 1
            with pytest.raises(ValueError, match=path.name.replace(".", r"\.")):  # a message, no trace
                open_photo(path, MAX_PIXELS)
    assert 0.2 * len(files) < refused < 0.9 * len(files)  # the fuzzing does break files, and not all


def test_the_data_doctor_reports_every_unreadable_file_by_name(corpus) -> None:
    root, files = corpus
    report = check_dataset(root, image_size=SIZE, workers=2)
    unreadable = {rel for f in report.findings if f.kind == "unreadable" for rel in f.files}
    expected = {p.relative_to(root).as_posix() for p in files if check_image(p)[0] is not None}
    assert unreadable == expected
    report.to_dict()  # the JSON report can be written


def test_the_data_module_skips_what_it_cannot_read_and_loads_every_batch(corpus, caplog) -> None:
    root, files = corpus
    dm = NoodleDataModule(root, image_size=SIZE, batch_size=16, num_workers=0, augment="none", val_fraction=0)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    skipped = {path for path, _ in dm.report.skipped}
    assert skipped == {p for p in files if check_image(p)[0] is not None}
    assert all(str(path) in caplog.text for path, _ in dm.report.skipped[:20])  # named: 20, then a count
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, SIZE, SIZE) and len(y) == 16
    seen = 0
    for x, _ in DataLoader(dm.train_set, batch_size=64):  # every readable mutant, none left out
        assert x.shape[1:] == (3, SIZE, SIZE) and bool(x.isfinite().all())
        seen += len(x)
    assert seen == len(dm.train_set) == len(files) - len(skipped) + 3 * len(CLASSES)


def test_predict_writes_every_readable_file_and_names_the_others(corpus, tmp_path: Path, caplog) -> None:
    root, files = corpus
    with caplog.at_level(logging.WARNING):
        readable = find_readable_images(root / "train")  # what `python -m noodlenext.predict` does
    refused = [p for p in files if check_image(p)[0] is not None]
    assert all(f"skipping {p}: " in caplog.text for p in refused)
    model = NoodleClassifier("convnext_atto", 3, ["a", "b", "c"], image_size=SIZE, pretrained=False)
    hp = model.hparams
    dataset = NoodleImages(
        [(p, UNLABELLED) for p in readable], eval_transform(hp.image_size, hp.mean, hp.std)
    )
    out = predict_to_csv(model, dataset, model.class_names, tmp_path / "predictions.csv", batch_size=64)
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == [str(p) for p in readable]
    assert len(rows) == len(files) - len(refused) + 3 * len(CLASSES)

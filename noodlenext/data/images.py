"""Finding, checking and decoding the images of an ImageFolder tree."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
_ORDER_PREFIX = re.compile(r"^(\d+)[_\-. ]+")


def display_name(folder: str) -> str:
    """`0_spaghetti` -> `spaghetti`: an ordering prefix is not part of the class name."""
    return _ORDER_PREFIX.sub("", folder)


def class_folders(split_dir: Path) -> list[Path]:
    """Class sub-folders of a split, ordered by numeric prefix (`2_x` before `10_x`), then name."""

    def key(p: Path) -> tuple[int, str]:
        m = _ORDER_PREFIX.match(p.name)
        return (int(m.group(1)) if m else 1 << 30, p.name)

    return sorted((p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")), key=key)


def list_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) below a folder, recursively, sorted; hidden files are ignored."""
    images, others = [], []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        (images if p.suffix.lower() in IMAGE_EXTENSIONS else others).append(p)
    return images, others


def check_image(path: Path) -> tuple[str | None, tuple[int, int]]:
    """Fully decode an image cheaply; returns (problem or None, (width, height))."""
    try:
        with Image.open(path) as im:
            size = im.size
            im.draft("RGB", (64, 64))  # JPEG decodes at 1/8 scale: reads every byte, ~10x faster
            im.load()
        return None, size
    except Image.DecompressionBombError as e:
        return f"too large to decode safely ({e})", (0, 0)
    except Exception as e:  # PIL raises many types for broken files
        return f"unreadable image ({type(e).__name__}: {e})", (0, 0)


def check_images(paths: Iterable[Path]) -> list[tuple[str | None, tuple[int, int]]]:
    """check_image over many files in threads (decoding releases the GIL)."""
    paths = list(paths)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(check_image, paths, chunksize=32))


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16-bit scaled (not clipped), transparency composited on white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        if im.mode != "I" or arr.max() > 255:
            arr = arr / 257.0
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        im = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


_ORIENTATION_TAG = 0x0112  # EXIF Orientation
_UPRIGHT = {  # EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = {5, 6, 7, 8}  # these orientations store the image on its side: width and height swap


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8, 1 = upright); from a JPEG's header without decoding a pixel (other
    formats may load the image to find their EXIF block: load them first, so that a broken file raises
    there and not in here, where a failure only means "no orientation")."""
    try:
        value = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a damaged EXIF block: PIL raises many types; the pixels may still be fine
        return 1
    return value if value in _UPRIGHT else 1


def load_rgb(path: str | Path, size: int | tuple[int, int] | None = None) -> Image.Image:
    """Decode an image upright (EXIF orientation applied) as RGB.

    size: the (width, height) of the image upright (an int: both sides) that the caller resizes it to
    next. A JPEG (or MPO, a phone's JPEG with extra frames) then decodes in draft mode, at the smallest
    of the 1/1, 1/2, 1/4, 1/8 DCT scales that is not below it on either side (a 4032x3024 photo for a
    420x420 resize decodes at 1008x756, ~4x less CPU: bench/train_throughput.py --photo-size); other
    formats decode in full. A JPEG's orientation tag is read before decoding: it tells which stored side
    is which. An upright image (the common case) is not copied to be transposed.
    """
    with Image.open(path) as im:
        jpeg = im.format in ("JPEG", "MPO")
        if not jpeg:
            im.load()  # a PNG's EXIF may follow its pixels: getexif would load it, and hide a failure
        orientation = exif_orientation(im)
        if size is not None and jpeg:
            width, height = (size, size) if isinstance(size, int) else size
            if orientation in _SWAPS_AXES:
                width, height = height, width
            im.draft("RGB", (max(1, int(width)), max(1, int(height))))
        im.load()
        if orientation in _UPRIGHT:
            im = im.transpose(_UPRIGHT[orientation])
            try:  # upright now: drop the tag, as exif_transpose does, so none applies it twice
                exif = im.getexif()
                exif.pop(_ORIENTATION_TAG, None)
                im.info["exif"] = exif.tobytes()
            except Exception:  # a damaged EXIF block that PIL reads but cannot write back (struct.error;
                im.info.pop("exif", None)  # exif_transpose crashes there): drop it, the pixels are upright
        return im if im.mode == "RGB" else to_rgb(im)


@dataclass
class ScanReport:
    """What setup skipped or adjusted, reported once."""

    skipped: list[tuple[Path, str]] = field(default_factory=list)
    non_images: list[Path] = field(default_factory=list)
    empty_folders: list[Path] = field(default_factory=list)
    smaller_than_input: int = 0

    def lines(self, image_size: int) -> list[str]:
        out = []
        if self.skipped:
            out.append(f"skipped {len(self.skipped)} unreadable image(s):")
            out += [f"  {p}: {why}" for p, why in self.skipped[:20]]
            if len(self.skipped) > 20:
                out.append(f"  ... and {len(self.skipped) - 20} more")
        if self.non_images:
            shown = ", ".join(str(p) for p in self.non_images[:5])
            more = f" and {len(self.non_images) - 5} more" if len(self.non_images) > 5 else ""
            out.append(f"ignored {len(self.non_images)} non-image file(s): {shown}{more}")
        if self.empty_folders:
            out.append("ignored empty class folder(s): " + ", ".join(map(str, self.empty_folders)))
        if self.smaller_than_input:
            out.append(
                f"{self.smaller_than_input} image(s) are smaller than {image_size} px and are upscaled"
            )
        return out


def find_images(input_path: str | Path) -> list[Path]:
    """An image file, or every image below a folder (sorted); a clear error when there is none."""
    path = Path(input_path).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input={input_path}: no such file or folder")
    images = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise FileNotFoundError(f"input={input_path}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return images


def find_readable_images(input_path: str | Path) -> list[Path]:
    """find_images, without the files that cannot be decoded (each skipped with a warning naming it).

    A single file that cannot be read, or a folder of which none can, is a ValueError naming it.
    """
    paths = find_images(input_path)
    readable = []
    for path, (problem, _) in zip(paths, check_images(paths), strict=True):
        if problem and len(paths) == 1:
            raise ValueError(f"input={path}: {problem}")
        if problem:
            log.warning("skipping %s: %s", path, problem)
        else:
            readable.append(path)
    if not readable:
        raise ValueError(f"input={input_path}: none of the {len(paths)} image file(s) could be read")
    return readable

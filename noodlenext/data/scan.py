"""Scanning a dataset for the data doctor: every file of the tree, read once, and what reading it found.

The tree is an ImageFolder one: root/<split>/<class>/ for the splits train, val and test, or
test/unknown/ for an unlabelled test set. Each file is read once and, for an image, decoded once: its
SHA-256, size, format, mode, EXIF orientation and fingerprint (see fingerprints.py) all come from that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from noodlenext.data.fingerprints import fingerprint, sha256_of
from noodlenext.data.images import (
    IMAGE_EXTENSIONS,
    class_folders,
    display_name,
    exif_orientation,
    list_files,
)

SPLITS = ("train", "val", "test")
UNKNOWN_FOLDER = "unknown"  # test/unknown/*: an unlabelled test set


@dataclass
class FileInfo:
    """One file of the tree and what inspecting it found."""

    path: Path
    rel: str  # posix path relative to the dataset root: how reports and file lists name it
    split: str
    cls: str  # display name of the class folder; "unknown" for an unlabelled test set
    is_image: bool  # has an image extension (the data module reads it)
    sha256: str | None = None
    problem: str | None = None
    width: int = 0
    height: int = 0
    format: str | None = None
    mode: str | None = None
    orientation: int = 1
    phash: int | None = None
    thumb: np.ndarray | None = field(default=None, repr=False)

    @property
    def readable(self) -> bool:
        return self.is_image and self.problem is None

    @property
    def labelled(self) -> bool:
        return self.cls != UNKNOWN_FOLDER or self.split != "test"


def inspect_file(path: Path, is_image: bool = True) -> dict[str, Any]:
    """Read a file once: SHA-256 of its bytes, and for an image its size, format, mode, EXIF orientation
    and fingerprint(), decoding every byte (as `images.check_image` does, at 1/8 scale for JPEG) so
    truncated files are caught. One open and one decode per file (check_image + hashing would decode
    twice): the hash reads it in 1 MiB chunks, so a huge file (a video named .jpg) costs no memory, then
    PIL reads it again from the page cache. A non-image file only has its header tried, to tell an image
    under an unknown extension."""
    try:
        with open(path, "rb") as f:
            facts: dict[str, Any] = {"sha256": sha256_of(f)}
            f.seek(0)
            return _inspect_image(f, facts) if is_image else _sniff_format(f, facts)  # they catch their own
    except OSError as e:
        return {"problem": f"cannot read file ({type(e).__name__}: {e})"}


def _sniff_format(f: BinaryIO, facts: dict[str, Any]) -> dict[str, Any]:
    """A non-image file: only its header is tried, to tell an image with an unknown extension."""
    try:
        with Image.open(f) as im:
            facts["format"] = im.format
    except Exception:
        pass
    return facts


def _inspect_image(f: BinaryIO, facts: dict[str, Any]) -> dict[str, Any]:
    try:
        with Image.open(f) as im:
            facts.update(format=im.format, mode=im.mode, width=im.size[0], height=im.size[1])
            im.draft("RGB", (64, 64))  # JPEG: decode at up to 1/8 scale, still reading every byte
            im.load()
            # as loading applies it: 1 for a malformed EXIF block or an orientation outside 1-8
            orientation = exif_orientation(im)
            facts["orientation"] = orientation
            facts["phash"], facts["thumb"] = fingerprint(im, orientation)
    except Image.DecompressionBombError as e:
        facts["problem"] = f"too large to decode safely ({e})"
    except Exception as e:  # PIL raises many types for broken files
        facts["problem"] = f"unreadable image ({type(e).__name__}: {e})"
    return facts


def scan_tree(root: Path) -> list[FileInfo]:
    """Every non-hidden file under root/<split>/<class>/, in split, class and path order; not read yet."""
    splits = [s for s in SPLITS if (root / s).is_dir()]
    if not splits:
        raise FileNotFoundError(
            f"root={root} has no train/, val/ or test/ folder; point root= at a dataset laid out as "
            "<root>/train/<class>/*.jpg (val/ and test/ alike)"
        )
    files = []
    for split in splits:
        for folder in class_folders(root / split):
            cls = (
                UNKNOWN_FOLDER
                if split == "test" and folder.name == UNKNOWN_FOLDER
                else display_name(folder.name)
            )
            images, others = list_files(folder)
            for path in sorted(images + others):
                rel = path.relative_to(root).as_posix()
                files.append(FileInfo(path, rel, split, cls, path.suffix.lower() in IMAGE_EXTENSIONS))
    return files

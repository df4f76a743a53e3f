"""data.cache=resized: every image decoded and resized once, then read back as a small file.

An entry is the image after load_rgb (upright, RGB, JPEGs in draft mode) and the stack's first Resize,
stored losslessly as a uint8 (H, W, 3) .npy array (read with allow_pickle=False: no code in a cache
file ever runs), so a cached epoch sees exactly the pixels an uncached one would. Entries are keyed by
the SHA-256 of the source file's bytes and the target size:

    <cache dir>/<width>x<height>-<interpolation>/<sha256[:2]>/<sha256>.npy   (Resize((h, w)))
    <cache dir>/short<side>-<interpolation>/<sha256[:2]>/<sha256>.npy       (Resize(side): the shorter side)

so an edited image (new bytes) or a new data.image_size gets a new entry, and identical files share
one. Writes go to a temporary file in the same folder and are renamed into place (atomic), so a
crashed or concurrent writer (loader workers, two runs) never leaves a half-written entry; an unreadable
entry is rebuilt. Hashes are remembered per process by the file's (size, mtime, inode), so a file is
hashed once per run (the data module hands over the hashes of its duplicate check), not once per epoch.
Stale entries are never read again and can be deleted with the folder at any time.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from noodlenext.data.fingerprints import content_hash
from noodlenext.data.images import load_rgb
from noodlenext.data.transforms import decode_size

CACHE_FOLDER = ".noodlenext_cache"  # default: inside data.root (hidden: the scan skips it)
# The cache folder's marker (the Cache Directory Tagging Specification, bford.info/cachedir: backup tools
# skip such a folder): noodlenext writes entries only into a folder that carries it, or that it created
# or found empty (core.ownership.claim_folder), never among a user's own files.
CACHE_TAG = "CACHEDIR.TAG"
CACHE_TAG_TEXT = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by noodlenext (data.cache=resized).\n"
    "# For information about cache directory tags, see: https://bford.info/cachedir/\n"
)


def _signature(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino


class ResizedCache:
    """Resized copies of images, built on first use.

    directory: the cache folder. resize: the torchvision Resize that makes an entry from the upright RGB
    image (a stack's first step, see transforms.first_resize); its size also sets load_rgb's draft size.
    """

    def __init__(self, directory: str | Path, resize: Callable[[Image.Image], Image.Image]) -> None:
        self.directory = Path(directory).expanduser()
        self.resize = resize
        size = decode_size(resize)
        if size is None:
            raise ValueError(f"ResizedCache needs a torchvision Resize, got {resize!r}")
        self.size = size
        side = getattr(resize, "size", None)
        label = f"short{side}" if isinstance(side, int) else f"{size[0]}x{size[1]}"
        interpolation = getattr(getattr(resize, "interpolation", None), "value", "default")
        self.folder = self.directory / f"{label}-{interpolation}"
        self._digests: dict[Path, tuple[tuple[int, int, int], str]] = {}
        self.hits = self.misses = 0

    def remember(self, digests: Mapping[Path, str]) -> None:
        """Hashes computed already (by the data module's duplicate check), for the files as they are now."""
        for path, digest in digests.items():
            try:
                self._digests[Path(path)] = (_signature(Path(path)), digest)
            except OSError:
                continue

    def digest(self, path: Path) -> str:
        """SHA-256 of the file's bytes, recomputed only when its size, mtime or inode changed."""
        signature = _signature(path)
        known = self._digests.get(path)
        if known is not None and known[0] == signature:
            return known[1]
        digest = content_hash(path)
        self._digests[path] = (signature, digest)
        return digest

    def entry(self, path: str | Path) -> Path:
        digest = self.digest(Path(path))
        return self.folder / digest[:2] / f"{digest}.npy"

    def load(self, path: str | Path) -> Image.Image:
        """The resized image of `path`, from the cache or built (and stored) now."""
        entry = self.entry(path)
        try:
            pixels = np.load(entry, allow_pickle=False)
            if pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3:
                self.hits += 1
                return Image.fromarray(pixels, "RGB")
        except (OSError, ValueError, EOFError):  # missing, or damaged: rebuilt below
            pass
        self.misses += 1
        image = self.resize(load_rgb(path, self.size))
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        self._write(entry, pixels)
        return Image.fromarray(pixels, "RGB")

    def _write(self, entry: Path, pixels: np.ndarray) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=f".{entry.stem[:16]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, pixels, allow_pickle=False)
            os.replace(tmp, entry)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

"""Fingerprints of images: content hashes for exact copies, perceptual hashes and thumbnails for near ones.

Exact copies: SHA-256 of the file's bytes (what `sha256sum` prints). Near-duplicates, in two steps.
Candidates: a 64-bit DCT perceptual hash (pHash, `imagehash.phash`'s algorithm: 32x32 grayscale, the
lowest 8x8 DCT frequencies, bit = above their median) within NEAR_THRESHOLD = 10 bits (Hamming distance).
Confirmation: 16x16 RGB thumbnails that correlate at NEAR_SIMILARITY = 0.99 or better (Pearson r).
Measured with `bench/data_check_speed.py --calibrate` on the real noodle photos (1,388) and 20,001
synthetic ones:
  - edited copies: JPEG q=50 re-encodes and 0.5x resizes move <= 4 bits, +15 % brightness <= 12. On
    real photos their thumbnails correlate >= 0.996 (resize), and 99 % of them >= 0.994 (JPEG q=50,
    lowest 0.987) and >= 0.993 (brightness, lowest 0.988). On the synthetic images +15 % brightness
    clips the white plates: r falls to 0.95-0.99 and about one such copy in six is missed;
  - different images: noodle bowls centred on a table look alike at 8x8 frequencies: half the synthetic
    images have a *different* one within 6 bits, some at 0, so pHash alone flags thousands. Their
    thumbnails correlate at most 0.983 (synthetic lookalikes: same table colour and layout) and at most
    0.92 among the real photos; the two real pairs at r = 1.0 are true duplicates (different bytes).
A finer 256-bit pHash was tried instead of the thumbnails: it flipped 40+ bits on a JPEG re-encode of a
smooth image (its high frequencies are near zero, so their signs are noise). Not caught, by design of
pHash: crops (3 % moves 8-20 bits, r ~0.85) and mirrors. Lower near_similarity to catch harsher edits,
at the price of flagging lookalikes.

Hashing reads files in 1 MiB chunks (memory stays flat for any file size) and runs in threads (PIL
decoding and SHA-256 release the GIL); the all-pairs comparison is vectorised numpy popcounts over blocks
of rows, about a second for 20,000 images.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from noodlenext.data.images import to_rgb

HASH_BITS = 64
NEAR_THRESHOLD = 10  # pHash Hamming distance (of 64 bits) at or below which two images are candidates ...
NEAR_SIMILARITY = 0.99  # ... confirmed as near-duplicates when their 16x16 RGB thumbnails correlate this well
_TRANSPOSE = {  # EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


# ----------------------------------------------------------------------------------------- in threads
def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def parallel_map(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    workers: int | None = None,
    label: str = "working",
    progress: bool = False,
) -> list[Any]:
    """fn over items in threads (one per CPU core, at most 8, by default), in order, with a rich progress
    bar labelled `label` when asked."""
    from rich.progress import track  # only a progress bar needs rich

    with ThreadPoolExecutor(max_workers=workers or _default_workers()) as pool:
        results = pool.map(fn, items)
        return list(track(results, total=len(items), description=label, disable=not progress or not items))


# ----------------------------------------------------------------------------------------- exact copies
HASH_CHUNK = 1 << 20  # bytes read at a time: memory stays flat however large the file


def sha256_of(f: BinaryIO) -> str:
    """SHA-256 of a binary file's bytes from where it stands to its end, read HASH_CHUNK at a time."""
    digest = hashlib.sha256()
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    while n := f.readinto(buffer):
        digest.update(view[:n])
    return digest.hexdigest()


def content_hash(path: str | Path) -> str:
    """SHA-256 of the file's bytes (what `sha256sum` prints), in chunks: a huge file costs no memory."""
    with open(path, "rb") as f:
        return sha256_of(f)


def hash_files(paths: Sequence[Path], workers: int | None = None, progress: bool = False) -> list[str]:
    """content_hash over many files in threads (hashlib releases the GIL on large buffers)."""
    return parallel_map(content_hash, paths, workers, "hashing", progress)


# ----------------------------------------------------------------------------------------- near copies
def _dct_matrix(n: int) -> np.ndarray:
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))  # scipy.fftpack.dct type II, unnormalised


_DCT = _dct_matrix(32)


def fingerprint(image: Image.Image, orientation: int = 1) -> tuple[int, np.ndarray]:
    """(64-bit pHash, 16x16 RGB thumbnail) of an image, upright per EXIF orientation.

    pHash as imagehash.phash: 32x32 grayscale (LANCZOS), 2D DCT-II, the lowest 8x8 frequencies, bit =
    above their median. The thumbnail (colour, which pHash ignores) confirms a match by correlation.
    """
    rgb = to_rgb(image).resize((32, 32), Image.Resampling.LANCZOS)
    if orientation in _TRANSPOSE:  # a square: transposing it equals transposing the full image first
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    pixels = np.asarray(rgb.convert("L"), dtype=np.float64)
    low = (_DCT @ pixels @ _DCT.T)[:8, :8]  # separable 2D DCT, the lowest 8x8 frequencies
    bits = (low > np.median(low)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big"), np.asarray(rgb.reduce(2), dtype=np.uint8)


def phash(image: Image.Image, orientation: int = 1) -> int:
    """The 64-bit pHash of fingerprint()."""
    return fingerprint(image, orientation)[0]


def similarity(thumbs: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 1 << 14) -> np.ndarray:
    """Pearson correlation of thumbnails i[k] and j[k] ((n, ...) uint8), chunked to bound memory.
    A flat thumbnail (no contrast) correlates 0 with anything."""
    flat = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    flat -= flat.mean(axis=1, keepdims=True)
    flat /= np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-6)
    out = np.empty(len(i), dtype=np.float32)
    for start in range(0, len(i), chunk):
        a, b = i[start : start + chunk], j[start : start + chunk]
        out[start : start + chunk] = np.einsum("kd,kd->k", flat[a], flat[b])
    return out


def hash_words(hashes: Sequence[int]) -> np.ndarray:
    """HASH_BITS-bit ints -> (n, HASH_BITS // 64) uint64 array, for vectorised Hamming distances."""
    raw = b"".join(int(h).to_bytes(HASH_BITS // 8, "big") for h in hashes)
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(hashes), HASH_BITS // 64)


def near_pairs(
    words: np.ndarray, threshold: int, block_elements: int = 1 << 21
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs i < j of rows of `words` ((n, k) uint64, see hash_words) whose Hamming distance is
    <= threshold, as (i, j, distance) arrays.

    Exhaustive but vectorised: XOR + popcount of a block of rows against every later row, so 20,000
    64-bit hashes (2e8 pairs) take about a second and memory stays near 16 * block_elements bytes.
    """
    h = np.asarray(words, dtype=np.uint64)
    h = h.reshape(len(h), -1)
    n = len(h)
    out_i, out_j, out_d = [], [], []
    start = 0
    while start < n:
        rows = max(1, min(n - start, block_elements // max(1, n - start)))
        block = h[start : start + rows]
        dist = np.zeros((rows, n - start), dtype=np.uint16)  # column c is index start + c
        for w in range(h.shape[1]):
            dist += np.bitwise_count(block[:, None, w] ^ h[None, start:, w])
        r, c = np.nonzero(dist <= threshold)
        keep = c > r  # only later indices: each pair once, no self pairs
        out_i.append(r[keep] + start)
        out_j.append(c[keep] + start)
        out_d.append(dist[r[keep], c[keep]])
        start += rows
    if not out_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d).astype(np.int64)


def connected_components(n: int, pairs_i: Iterable[int], pairs_j: Iterable[int]) -> list[list[int]]:
    """Connected components (of size >= 2) of the graph on range(n) with the given edges, each in
    ascending order, ordered by their smallest member: near pairs chain into one group of lookalikes."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving keeps the trees flat
            x = parent[x]
        return x

    for a, b in zip(pairs_i, pairs_j, strict=True):
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = defaultdict(list)
    for x in range(n):
        groups[find(x)].append(x)
    return [g for g in groups.values() if len(g) > 1]

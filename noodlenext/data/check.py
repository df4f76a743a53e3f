"""Data doctor: `python -m noodlenext.data.check root=<dataset> [fix=list|quarantine|undo]`.

Checks an ImageFolder tree (train/, val/, test/ of <class>/ folders, or test/unknown/) before a run
wastes hours on it. Prints a table per split and class and writes a JSON report listing every finding
with the files it names:

    unreadable        cannot be decoded (corrupt, truncated, not really an image)          error
    non_image         a file without an image extension (the data module ignores it)       warning
    label_conflict    the same bytes under two classes                                     error
    leakage           the same (or a near-identical) image in test and train/val           error
                      (train <-> val only: warning)
    exact_duplicate   the same bytes twice within a split (SHA-256)                        warning
    near_duplicate    near-identical images within a split (pHash, see NEAR_THRESHOLD)     warning
    too_small         short side below the model's input size: upscaled when training      warning
    class_imbalance   largest / smallest class of a split above `imbalance_ratio`          warning
    size_by_class     classes differ in typical resolution: a shortcut a model can learn   warning
    empty_class       a class folder without a readable image                              warning
    extreme_aspect    long / short side above `max_aspect`: squashed by the square resize  info
    exif_orientation  an EXIF rotation (applied when loading; other tools may not)         info
    wrong_extension   the extension does not match the format (a PNG named .jpg)           info

Fixes never delete anything. `fix=list` writes the readable images minus the offending ones to a file
list that the data module reads with `data.file_list=<path>`. `fix=quarantine` moves the offending
files into `<dataset's parent>/quarantine/<dataset name>/` (same relative paths) and appends every move
to `moves.jsonl` there; `fix=undo` moves them back. Which files are "offending" is set by `fix_kinds`:
all files of unreadable, non_image and label_conflict findings, the train/val side of a leakage, and
all but the first file (sorted by path) of a duplicate group.

Near-duplicates, in two steps. Candidates: a 64-bit DCT perceptual hash (pHash, `imagehash.phash`'s
algorithm: 32x32 grayscale, the lowest 8x8 DCT frequencies, bit = above their median) within
NEAR_THRESHOLD = 10 bits (Hamming distance). Confirmation: 16x16 RGB thumbnails that correlate at
NEAR_SIMILARITY = 0.99 or better (Pearson r). Measured with `bench/data_check_speed.py --calibrate` on the
real noodle photos (1,388) and 20,001 synthetic ones:
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

Hashing runs in threads (PIL decoding and SHA-256 release the GIL); the all-pairs comparison is
vectorised numpy popcounts over blocks of rows, about a second for 20,000 images.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import logging
import os
import shutil
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig
from PIL import Image

from noodlenext.config import CONFIG_DIR
from noodlenext.data.images import IMAGE_EXTENSIONS, class_folders, display_name, list_files, to_rgb
from noodlenext.files import write_text_atomic

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
UNKNOWN_FOLDER = "unknown"  # test/unknown/*: an unlabelled test set
NEAR_THRESHOLD = 10  # pHash Hamming distance (of 64 bits) at or below which two images are candidates ...
NEAR_SIMILARITY = 0.99  # ... confirmed as near-duplicates when their 16x16 RGB thumbnails correlate this well
FIX_KINDS = ("unreadable", "non_image", "label_conflict", "leakage", "exact_duplicate", "near_duplicate")
SEVERITIES = ("error", "warning", "info")
_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {  # EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_FORMAT_EXTENSIONS = {
    "JPEG": {".jpg", ".jpeg"},
    "PNG": {".png"},
    "BMP": {".bmp"},
    "GIF": {".gif"},
    "TIFF": {".tif", ".tiff"},
    "WEBP": {".webp"},
    "MPO": {".jpg", ".jpeg"},  # multi-picture JPEGs from phones
}


# ----------------------------------------------------------------------------------------- hashing
def content_hash(path: str | Path) -> str:
    """SHA-256 of the file's bytes (what `sha256sum` prints)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _parallel(
    fn: Callable[[Any], Any], items: Sequence[Any], workers: int | None, label: str, progress: bool
) -> list[Any]:
    """fn over paths in threads, in order, with a rich progress bar when asked."""
    from rich.progress import track

    with ThreadPoolExecutor(max_workers=workers or _default_workers()) as pool:
        results = pool.map(fn, items)
        return list(track(results, total=len(items), description=label, disable=not progress or not items))


def hash_files(paths: Sequence[Path], workers: int | None = None, progress: bool = False) -> list[str]:
    """content_hash over many files in threads (hashlib releases the GIL on large buffers)."""
    return _parallel(content_hash, paths, workers, "hashing", progress)


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


def _dct_matrix(n: int) -> np.ndarray:
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))  # scipy.fftpack.dct type II, unnormalised


HASH_BITS = 64
_DCT = _dct_matrix(32)


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


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per uint64 element."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1)


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
            dist += _popcount(block[:, None, w] ^ h[None, start:, w])
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


def _components(n: int, pairs_i: Iterable[int], pairs_j: Iterable[int]) -> list[list[int]]:
    """Connected components (of size >= 2) of the graph on range(n) with the given edges."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
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


# ----------------------------------------------------------------------------------------- inspecting
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
    truncated files are caught. One read and one decode per file: check_image + hashing would decode twice.
    A non-image file only has its header tried, to tell an image under an unknown extension."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return {"problem": f"cannot read file ({type(e).__name__}: {e})"}
    facts: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest()}
    if not is_image:
        try:  # header only: is it an image with an unknown extension?
            with Image.open(io.BytesIO(data)) as im:
                facts["format"] = im.format
        except Exception:
            pass
        return facts
    try:
        with Image.open(io.BytesIO(data)) as im:
            facts.update(format=im.format, mode=im.mode, width=im.size[0], height=im.size[1])
            im.draft("RGB", (64, 64))  # JPEG: decode at up to 1/8 scale, still reading every byte
            im.load()
            try:
                orientation = int(im.getexif().get(_ORIENTATION_TAG, 1))
            except Exception:  # a malformed EXIF block is not worth failing the image for
                orientation = 1
            facts["orientation"] = orientation
            facts["phash"], facts["thumb"] = fingerprint(im, orientation)
    except Image.DecompressionBombError as e:
        facts["problem"] = f"too large to decode safely ({e})"
    except Exception as e:  # PIL raises many types for broken files
        facts["problem"] = f"unreadable image ({type(e).__name__}: {e})"
    return facts


def scan_tree(root: Path) -> list[FileInfo]:
    """Every non-hidden file under root/<split>/<class>/, in split, class and path order."""
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


# ----------------------------------------------------------------------------------------- findings
@dataclass
class Finding:
    """One problem, the files it names, and which of them a fix takes out (`remove`)."""

    kind: str
    severity: str
    message: str
    files: list[str]
    remove: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckReport:
    """Everything one check found: per-file facts, per-split/class statistics and the findings."""

    root: Path
    settings: dict[str, Any]
    files: list[FileInfo]
    findings: list[Finding]
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.findings

    def kinds(self) -> Counter:
        return Counter(f.kind for f in self.findings)

    def worst(self) -> str | None:
        """The most severe severity found, or None for a clean report."""
        found = {f.severity for f in self.findings}
        return next((s for s in SEVERITIES if s in found), None)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per split: total images and, per class, count, share, median size, smallest, formats, modes."""
        out: dict[str, dict[str, Any]] = {}
        for split in SPLITS:
            mine = [f for f in self.files if f.split == split and f.is_image]
            if not any(f.split == split for f in self.files):
                continue
            readable = [f for f in mine if f.readable]
            classes: dict[str, Any] = {}
            for cls in dict.fromkeys(f.cls for f in self.files if f.split == split):
                imgs = [f for f in readable if f.cls == cls]
                smallest = min(imgs, key=lambda f: (f.width * f.height, f.rel), default=None)
                classes[cls] = {
                    "count": len(imgs),
                    "share": len(imgs) / len(readable) if readable else 0.0,
                    "unreadable": sum(1 for f in mine if f.cls == cls and not f.readable),
                    "median_size": [
                        int(np.median([f.width for f in imgs])),
                        int(np.median([f.height for f in imgs])),
                    ]
                    if imgs
                    else None,
                    "smallest": {"file": smallest.rel, "size": [smallest.width, smallest.height]}
                    if smallest
                    else None,
                    "formats": dict(Counter(f.format for f in imgs).most_common()),
                    "modes": dict(Counter(f.mode for f in imgs).most_common()),
                }
            out[split] = {"images": len(readable), "classes": classes}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "checked_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(self.seconds, 2),
            "settings": self.settings,
            "clean": self.clean,
            "counts": dict(self.kinds()),
            "splits": self.stats(),
            "findings": [asdict(f) for f in self.findings],
            "files": [
                {
                    "file": f.rel,
                    "split": f.split,
                    "class": f.cls,
                    "sha256": f.sha256,
                    "size": [f.width, f.height] if f.readable else None,
                    "format": f.format,
                    "mode": f.mode,
                    "phash": f"{f.phash:0{HASH_BITS // 4}x}" if f.phash is not None else None,
                    "problem": f.problem,
                }
                for f in self.files
            ],
        }


def _groups_findings(
    groups: list[list[FileInfo]], exact: bool, closeness: dict[int, dict[str, float]] | None = None
) -> list[Finding]:
    """Leakage, label conflicts and within-split duplicates from groups of identical / similar images."""
    findings = []
    how = "byte-identical" if exact else "near-identical"
    for n, group in enumerate(groups):
        group = sorted(group, key=lambda f: (SPLITS.index(f.split), f.rel))
        files = [f.rel for f in group]
        details: dict[str, Any] = {} if exact else dict((closeness or {}).get(n, {}))
        shas = {f.sha256 for f in group}
        labels = sorted({f.cls for f in group if f.labelled})
        if exact and len(labels) > 1:
            findings.append(
                Finding(
                    "label_conflict",
                    "error",
                    f"the same image is filed under {len(labels)} classes ({', '.join(labels)}): "
                    f"{', '.join(files)}; keep it in the right class only",
                    files,
                    remove=files,
                    details={"classes": labels},
                )
            )
        test = [f for f in group if f.split == "test"]
        other = [f for f in group if f.split != "test"]
        splits = sorted({f.split for f in group}, key=SPLITS.index)
        if len(splits) > 1 and (exact or len(shas) > 1):
            # test against train/val: test scores would be inflated; train against val: val scores are
            severity = "error" if test and any(f.labelled for f in test) else "warning"
            side = other if test else [f for f in group if f.split == "val"]
            findings.append(
                Finding(
                    "leakage",
                    severity,
                    f"{how} images in {' and '.join(splits)}: {', '.join(files)}; "
                    f"the {'train/val' if test else 'val'} copies inflate {'test' if test else 'val'} scores",
                    files,
                    remove=[f.rel for f in side],
                    details={"splits": splits, "match": "exact" if exact else "near", **details},
                )
            )
        for split in splits:
            mine = [f for f in group if f.split == split]
            if len(mine) < 2 or (not exact and len({f.sha256 for f in mine}) < 2):
                continue
            classes = sorted({f.cls for f in mine})
            if exact and len(classes) > 1:
                continue  # reported as a label_conflict, whose fix takes out every copy
            note = f" (under different classes: {', '.join(classes)})" if len(classes) > 1 else ""
            findings.append(
                Finding(
                    "exact_duplicate" if exact else "near_duplicate",
                    "warning",
                    f"{len(mine)} {how} images in {split}{note}: {', '.join(f.rel for f in mine)}",
                    [f.rel for f in mine],
                    remove=[f.rel for f in mine[1:]],
                    details={"split": split, **details},
                )
            )
    return findings


def _per_file_findings(files: list[FileInfo], image_size: int, max_aspect: float) -> list[Finding]:
    findings = []
    for f in files:
        if not f.is_image:
            what = (
                f"a {f.format} image with an extension the data module ignores; rename it to one of "
                f"{sorted(_FORMAT_EXTENSIONS.get(f.format, IMAGE_EXTENSIONS))}"
                if f.format
                else "not an image (the data module ignores it)"
            )
            findings.append(Finding("non_image", "warning", f"{f.rel}: {what}", [f.rel], remove=[f.rel]))
        elif f.problem:
            findings.append(Finding("unreadable", "error", f"{f.rel}: {f.problem}", [f.rel], remove=[f.rel]))
    for split in SPLITS:
        mine = [f for f in files if f.split == split and f.readable]
        small = [f for f in mine if min(f.width, f.height) < image_size]
        if small:
            findings.append(
                Finding(
                    "too_small",
                    "warning",
                    f"{len(small)} image(s) in {split} have a short side below {image_size} px "
                    f"(the model's input size) and are upscaled: {_some(small)}",
                    [f.rel for f in small],
                    details={"split": split, "image_size": image_size},
                )
            )
        wide = [f for f in mine if max(f.width, f.height) > max_aspect * min(f.width, f.height)]
        if wide:
            findings.append(
                Finding(
                    "extreme_aspect",
                    "info",
                    f"{len(wide)} image(s) in {split} are more than {max_aspect}:1; the square resize "
                    f"squashes them: {_some(wide)}",
                    [f.rel for f in wide],
                    details={"split": split, "max_aspect": max_aspect},
                )
            )
        turned = [f for f in mine if f.orientation != 1]
        if turned:
            findings.append(
                Finding(
                    "exif_orientation",
                    "info",
                    f"{len(turned)} image(s) in {split} carry an EXIF rotation; noodlenext applies it, "
                    f"other tools may show them sideways: {_some(turned)}",
                    [f.rel for f in turned],
                    details={"split": split, "orientation": {f.rel: f.orientation for f in turned}},
                )
            )
        misnamed = [
            f
            for f in mine
            if f.format in _FORMAT_EXTENSIONS and f.path.suffix.lower() not in _FORMAT_EXTENSIONS[f.format]
        ]
        if misnamed:
            findings.append(
                Finding(
                    "wrong_extension",
                    "info",
                    f"{len(misnamed)} image(s) in {split} have an extension that does not match their "
                    f"format: {', '.join(f'{f.rel} ({f.format})' for f in misnamed[:5])}"
                    + (f" and {len(misnamed) - 5} more" if len(misnamed) > 5 else ""),
                    [f.rel for f in misnamed],
                    details={"split": split},
                )
            )
    return findings


def _class_findings(report_stats: dict[str, Any], imbalance_ratio: float) -> list[Finding]:
    findings = []
    for split, s in report_stats.items():
        classes = {c: v for c, v in s["classes"].items() if not (split == "test" and c == UNKNOWN_FOLDER)}
        for cls, v in classes.items():
            if v["count"] == 0:
                findings.append(
                    Finding(
                        "empty_class",
                        "warning",
                        f"{split}/{cls} has no readable image",
                        [],
                        details={"split": split, "class": cls},
                    )
                )
        counts = {c: v["count"] for c, v in classes.items() if v["count"]}
        if len(counts) > 1 and max(counts.values()) > imbalance_ratio * min(counts.values()):
            big, small = max(counts, key=counts.get), min(counts, key=counts.get)
            findings.append(
                Finding(
                    "class_imbalance",
                    "warning",
                    f"{split} is imbalanced: {big} has {counts[big]} images, {small} {counts[small]} "
                    f"({counts[big] / counts[small]:.1f}x > {imbalance_ratio}x; counts {counts}); "
                    "consider data.sampler=weighted or more images of the small classes",
                    [f"{split}/{c}" for c in counts],
                    details={"split": split, "counts": counts},
                )
            )
        medians = {
            c: v["median_size"][0] * v["median_size"][1] for c, v in classes.items() if v["median_size"]
        }
        if len(medians) > 1 and max(medians.values()) > 2.0 * min(medians.values()):
            sizes = {c: "x".join(map(str, classes[c]["median_size"])) for c in medians}
            findings.append(
                Finding(
                    "size_by_class",
                    "warning",
                    f"{split}: classes differ in typical resolution (median {sizes}); a model can learn the "
                    "class from size or compression artefacts instead of the noodles",
                    [f"{split}/{c}" for c in medians],
                    details={"split": split, "median_size": sizes},
                )
            )
    return findings


def _some(files: Sequence[FileInfo], n: int = 5) -> str:
    shown = ", ".join(f.rel for f in files[:n])
    return shown + (f" and {len(files) - n} more" if len(files) > n else "")


def check_dataset(
    root: str | Path,
    image_size: int = 384,
    near_threshold: int | None = NEAR_THRESHOLD,
    near_similarity: float = NEAR_SIMILARITY,
    imbalance_ratio: float = 3.0,
    max_aspect: float = 2.5,
    workers: int | None = None,
    progress: bool = False,
) -> CheckReport:
    """Inspect every file under root (in threads) and collect the findings; `near_threshold=None` skips
    the near-duplicate search."""
    import time

    start = time.perf_counter()
    root = Path(root).expanduser().resolve()
    files = scan_tree(root)
    facts = _parallel(lambda f: inspect_file(f.path, f.is_image), files, workers, "checking images", progress)
    for f, fact in zip(files, facts, strict=True):
        for key, value in fact.items():
            setattr(f, key, value)
    findings = _per_file_findings(files, image_size, max_aspect)

    readable = [f for f in files if f.readable]
    by_sha: dict[str, list[FileInfo]] = defaultdict(list)
    for f in readable:
        by_sha[f.sha256].append(f)
    findings += _groups_findings([g for g in by_sha.values() if len(g) > 1], exact=True)

    if near_threshold is not None and near_threshold >= 0 and len(by_sha) > 1:
        unique = list(by_sha.values())  # one hash per distinct content: exact copies are reported above
        i, j, d = near_pairs(hash_words([g[0].phash for g in unique]), near_threshold)
        sim = similarity(np.stack([g[0].thumb for g in unique]), i, j)
        keep = sim >= near_similarity
        i, j, d, sim = i[keep], j[keep], d[keep], sim[keep]
        comps = _components(len(unique), i.tolist(), j.tolist())
        comp_of = {u: n for n, comp in enumerate(comps) for u in comp}
        worst: dict[int, dict[str, float]] = {}
        for a, dist, r in zip(i.tolist(), d.tolist(), sim.tolist(), strict=True):
            w = worst.setdefault(comp_of[a], {"max_distance": 0, "min_similarity": 1.0})
            w["max_distance"] = max(w["max_distance"], dist)
            w["min_similarity"] = round(min(w["min_similarity"], r), 4)
        groups = [[f for u in comp for f in unique[u]] for comp in comps]
        findings += _groups_findings(groups, exact=False, closeness=worst)

    settings = {
        "image_size": image_size,
        "near_threshold": near_threshold,
        "near_similarity": near_similarity,
        "imbalance_ratio": imbalance_ratio,
        "max_aspect": max_aspect,
    }
    report = CheckReport(root, settings, files, findings)
    report.findings += _class_findings(report.stats(), imbalance_ratio)
    order = {k: n for n, k in enumerate(SEVERITIES)}
    report.findings.sort(key=lambda f: (order[f.severity], f.kind, f.files[:1]))
    report.seconds = time.perf_counter() - start
    return report


# ----------------------------------------------------------------------------------------- printing
def split_table(report: CheckReport, split: str) -> Any:
    """class | images | share | median WxH | smallest | formats | modes, for one split (rich Table)."""
    from rich.table import Table

    s = report.stats()[split]
    table = Table(title=f"{split}: {s['images']} readable image(s)")
    for column in ("class", "images", "share", "median WxH", "smallest", "formats", "modes"):
        table.add_column(column, justify="right" if column in ("images", "share") else "left")
    for cls, v in s["classes"].items():
        smallest = v["smallest"]
        table.add_row(
            cls,
            str(v["count"]) + (f" (+{v['unreadable']} bad)" if v["unreadable"] else ""),
            f"{100 * v['share']:.1f}%",
            "x".join(map(str, v["median_size"])) if v["median_size"] else "-",
            f"{smallest['size'][0]}x{smallest['size'][1]} {Path(smallest['file']).name}" if smallest else "-",
            ", ".join(f"{k} {n}" for k, n in v["formats"].items()),
            ", ".join(f"{k} {n}" for k, n in v["modes"].items()),
        )
    return table


def print_report(report: CheckReport, max_findings: int = 40) -> None:
    """The tables, then the findings, most severe first."""
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    for split in report.stats():
        console.print(split_table(report, split))
    if report.clean:
        console.print(f"[green]clean:[/green] no problems found in {len(report.files)} file(s)")
        return
    colour = {"error": "red", "warning": "yellow", "info": "cyan"}
    counts = ", ".join(f"{n} {k}" for k, n in sorted(report.kinds().items()))
    console.print(f"[b]{len(report.findings)} finding(s):[/b] {counts}")
    for f in report.findings[:max_findings]:
        console.print(
            f"[{colour[f.severity]}]{f.severity:7}[/] {f.kind:16} {escape(f.message)}", highlight=False
        )
    if len(report.findings) > max_findings:
        console.print(f"... and {len(report.findings) - max_findings} more in the JSON report")


# ----------------------------------------------------------------------------------------- fixes
def offending(report: CheckReport, kinds: Iterable[str] = FIX_KINDS) -> dict[str, str]:
    """rel path -> the finding kind that takes it out, over the findings of `kinds`."""
    kinds = list(kinds)
    unknown = set(kinds) - set(FIX_KINDS)
    if unknown:
        raise ValueError(f"fix_kinds={sorted(unknown)} are not fixable kinds; choose from {list(FIX_KINDS)}")
    out: dict[str, str] = {}
    for f in report.findings:
        if f.kind in kinds:
            for rel in f.remove:
                out.setdefault(rel, f.kind)
    return out


def write_file_list(
    report: CheckReport, path: str | Path, kinds: Iterable[str] = FIX_KINDS
) -> tuple[Path, int]:
    """Write the readable images minus the offending ones, one root-relative path a line; returns
    (path, number of images left out). The data module reads it with data.file_list=<path>."""
    bad = offending(report, kinds)
    keep = [f.rel for f in report.files if f.readable and f.rel not in bad]
    left_out = sum(1 for f in report.files if f.is_image) - len(keep)
    path = Path(path).expanduser().resolve()
    header = [
        f"# noodlenext data check of {report.root}",
        f"# {len(keep)} image(s) kept, {left_out} left out ({', '.join(sorted(set(kinds)))} and unreadable)",
        "# paths are relative to the dataset root; use: data.file_list=" + str(path),
    ]
    write_text_atomic(path, "\n".join(header + keep) + "\n")
    return path, left_out


def default_quarantine_dir(root: str | Path) -> Path:
    """<dataset's parent>/quarantine/<dataset name>: beside the dataset, never inside it."""
    root = Path(root).expanduser().resolve()
    return root.parent / "quarantine" / root.name


def quarantine(
    report: CheckReport, qdir: str | Path | None = None, kinds: Iterable[str] = FIX_KINDS
) -> list[dict[str, str]]:
    """Move the offending files to qdir (same relative paths), appending each move to qdir/moves.jsonl
    before the next one; never overwrites (a taken name gets a .1, .2 ... suffix). Returns the moves."""
    qdir = Path(qdir).expanduser().resolve() if qdir else default_quarantine_dir(report.root)
    bad = offending(report, kinds)
    moves = []
    qdir.mkdir(parents=True, exist_ok=True)
    with open(qdir / "moves.jsonl", "a") as logfile:
        for rel, kind in sorted(bad.items()):
            src = report.root / rel
            if not src.exists():
                continue
            dst = _free_name(qdir / rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(src, dst)
            move = {"op": "move", "from": str(src), "to": str(dst), "reason": kind, "at": _now()}
            logfile.write(json.dumps(move) + "\n")
            logfile.flush()
            moves.append(move)
    return moves


def undo_quarantine(qdir: str | Path) -> tuple[list[dict[str, str]], list[str]]:
    """Move quarantined files back, newest move first; returns (undone moves, problems). A file whose
    original place is taken again stays in quarantine and is named in the problems."""
    qdir = Path(qdir).expanduser().resolve()
    logpath = qdir / "moves.jsonl"
    if not logpath.is_file():
        raise FileNotFoundError(f"{logpath} does not exist: nothing was quarantined there")
    entries = [json.loads(line) for line in logpath.read_text().splitlines() if line.strip()]
    undone, problems = [], []
    with open(logpath, "a") as logfile:
        for move in reversed([e for e in entries if e["op"] == "move"]):
            src, dst = Path(move["to"]), Path(move["from"])
            if not src.exists():
                continue  # undone before, or moved by hand
            if dst.exists():
                problems.append(f"{dst} exists again; {src} stays in quarantine")
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(src, dst)
            entry = {"op": "undo", "from": str(src), "to": str(dst), "at": _now()}
            logfile.write(json.dumps(entry) + "\n")
            logfile.flush()
            undone.append(entry)
    return undone, problems


def _free_name(path: Path) -> Path:
    n = 0
    candidate = path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
    return candidate


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------- entry point
def run(cfg: DictConfig) -> CheckReport | None:
    """What `python -m noodlenext.data.check` does with a composed config (see conf/check.yaml)."""
    if cfg.fix not in (None, "list", "quarantine", "undo"):
        raise ValueError(
            f"fix={cfg.fix!r} is not known; use fix=list, fix=quarantine or fix=undo (or leave it out)"
        )
    if cfg.fail_on not in (None, *SEVERITIES):
        raise ValueError(f"fail_on={cfg.fail_on!r} is not known; use null, error, warning or info")
    root = Path(str(cfg.root)).expanduser().resolve()
    qdir = (
        Path(cfg.quarantine_dir).expanduser().resolve()
        if cfg.get("quarantine_dir")
        else default_quarantine_dir(root)
    )
    if cfg.fix == "undo":
        undone, problems = undo_quarantine(qdir)
        print(f"moved {len(undone)} file(s) back from {qdir} into {root}")
        for p in problems:
            log.warning(p)
        return None
    report = check_dataset(
        root,
        image_size=cfg.image_size,
        near_threshold=cfg.near_threshold,
        near_similarity=cfg.near_similarity,
        imbalance_ratio=cfg.imbalance_ratio,
        max_aspect=cfg.max_aspect,
        workers=cfg.workers,
        progress=cfg.progress,
    )
    print_report(report)
    out = Path(cfg.report) if cfg.get("report") else Path(cfg.paths.output_dir) / "data_check.json"
    write_text_atomic(out, json.dumps(report.to_dict(), indent=2))
    print(f"report: {out}  ({len(report.files)} files in {report.seconds:.1f}s)")
    kinds = list(cfg.fix_kinds)
    if cfg.fix == "list":
        target = cfg.get("file_list") or Path(cfg.paths.output_dir) / "clean_files.txt"
        path, left_out = write_file_list(report, target, kinds)
        print(f"file list: {path} ({left_out} image(s) left out); train on it with data.file_list={path}")
    elif cfg.fix == "quarantine":
        moves = quarantine(report, qdir, kinds)
        print(f"moved {len(moves)} file(s) to {qdir} (log: {qdir / 'moves.jsonl'}); undo with fix=undo")
    return report


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="check")
def main(cfg: DictConfig) -> None:
    """Check, print, write the report, apply fix=; exit 1 when a finding is as severe as fail_on."""
    report = run(cfg)
    worst = report.worst() if report else None
    if cfg.fail_on and worst and SEVERITIES.index(worst) <= SEVERITIES.index(cfg.fail_on):
        sys.exit(1)


if __name__ == "__main__":
    main()

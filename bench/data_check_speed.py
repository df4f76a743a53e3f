"""Data doctor speed (images/s) and the near-duplicate threshold's calibration.

    .venv/bin/python bench/data_check_speed.py --images 20000            # render (cached), then time
    .venv/bin/python bench/data_check_speed.py --root /work/shared/data/noodles --workers 1 2
    .venv/bin/python bench/data_check_speed.py --root /work/shared/data/noodles --calibrate

Speed: `check_dataset` end to end (scan, read + SHA-256 + decode + pHash in threads, all-pairs pHash
comparison, findings) per worker count, best of `--repeats` (a shared machine only ever slows a run
down), plus the near-duplicate search alone. The first run reads from disk, later ones from the page
cache; pass --repeats 1 on a cold cache to see disk-bound numbers.

Calibration: pHash distances of edited copies of `--samples` images (JPEG q=50, 0.5x resize, +15 %
brightness, 3 % crop, and a mirror, which pHash is not meant to catch) against the distance from each
image to the closest *other* image of the dataset: the threshold must sit above the first and below
the second.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from machine import device_name
from PIL import Image, ImageEnhance, ImageOps

from noodlenext.data.fingerprints import (
    HASH_BITS,
    NEAR_SIMILARITY,
    NEAR_THRESHOLD,
    fingerprint,
    hash_words,
    near_pairs,
    similarity,
)
from noodlenext.data.images import load_rgb
from noodlenext.data.rules import check_dataset
from noodlenext.data.synthetic import render_dataset


def speed(root: Path, workers: list[int], repeats: int) -> None:
    for w in workers:
        best, report = float("inf"), None
        for _ in range(repeats):
            start = time.perf_counter()
            report = check_dataset(root, workers=w)
            best = min(best, time.perf_counter() - start)
        n = len(report.files)
        rate = n / best
        print(f"workers={w}: {n} files in {best:.1f}s = {rate:.0f} images/s, {len(report.findings)} findings")
    words = hash_words([f.phash for f in report.files if f.phash is not None])
    start = time.perf_counter()
    i, _, _ = near_pairs(words, NEAR_THRESHOLD)
    took = time.perf_counter() - start
    print(
        f"near-duplicate search alone: {len(words)} hashes, {len(i)} pairs <= {NEAR_THRESHOLD}: {took:.2f}s"
    )


EDITS = {
    "jpeg q=50": lambda im: Image.open(_jpeg(im, 50)),
    "resize 0.5x": lambda im: im.resize(
        (max(1, im.width // 2), max(1, im.height // 2)), Image.Resampling.BILINEAR
    ),
    "brightness +15%": lambda im: ImageEnhance.Brightness(im).enhance(1.15),
    "crop 3%": lambda im: im.crop(
        (round(0.03 * im.width), round(0.03 * im.height), round(0.97 * im.width), round(0.97 * im.height))
    ),
    "mirror (not a target)": ImageOps.mirror,
}


def _jpeg(im: Image.Image, quality: int) -> io.BytesIO:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return buf


def _bits(x: int) -> int:
    return bin(x).count("1")


def calibrate(root: Path, samples: int) -> None:
    report = check_dataset(root, near_threshold=None)
    files = [f for f in report.files if f.readable]
    rng = np.random.default_rng(0)
    picked = [files[k] for k in rng.choice(len(files), min(samples, len(files)), replace=False)]
    pct = (50, 90, 99, 100)
    rule = f"pHash distance <= {NEAR_THRESHOLD} of {HASH_BITS} bits and thumbnail r >= {NEAR_SIMILARITY}"
    print(f"near-duplicate rule now: {rule}")
    for name, edit in EDITS.items():
        dist, sims = [], []
        for f in picked:
            h, thumb = fingerprint(edit(load_rgb(f.path)))
            dist.append(_bits(f.phash ^ h))
            sims.append(similarity(np.stack([f.thumb, thumb]), np.array([0]), np.array([1]))[0])
        d, r = (
            np.percentile(dist, pct).astype(int).tolist(),
            np.percentile(sims, (0, 1, 10, 50)).round(4).tolist(),
        )
        print(f"edited copy, {name:22}: distance {pct}% = {d}; r (0, 1, 10, 50)% = {r}")
    i, j, d = near_pairs(hash_words([f.phash for f in files]), 12)
    r = similarity(np.stack([f.thumb for f in files]), i, j)
    distinct = np.array([files[a].sha256 != files[b].sha256 for a, b in zip(i, j, strict=True)], dtype=bool)
    print(f"pairs of different files among {len(files)} images (real near-duplicates included):")
    for t in (4, 6, 8, 10, 12):
        m = distinct & (d <= t)
        top = [round(float(x), 3) for x in np.sort(r[m])[-5:]]
        print(f"  within {t:2} bits: {int(m.sum()):6} pairs; the 5 best-correlated: {top}")
    m = distinct & (d <= NEAR_THRESHOLD) & (r >= NEAR_SIMILARITY)
    print(f"  flagged by the rule: {int(m.sum())}")
    for a, b in zip(i[m][:10], j[m][:10], strict=True):
        print(f"    {files[a].rel}  {files[b].rel}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, help="dataset to check; default: render --images synthetic ones")
    p.add_argument("--images", type=int, default=20000, help="synthetic images to render when no --root")
    p.add_argument("--cache", type=Path, default=Path("data/bench"), help="where synthetic data is rendered")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--workers", type=int, nargs="+", default=[2])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--calibrate", action="store_true", help="print the threshold calibration instead")
    p.add_argument("--samples", type=int, default=300, help="images edited for --calibrate")
    a = p.parse_args()
    root = a.root
    if root is None:
        per_class = -(-a.images // 3)
        root = a.cache / f"synthetic_{per_class * 3}_{a.image_size}px"
        start = time.perf_counter()
        render_dataset(root, images_per_class=per_class, image_size=a.image_size)
        print(f"dataset: {root} ({time.perf_counter() - start:.0f}s to render or find)")
    import torch

    print(f"machine: {device_name(torch.device('cpu'))}")
    if a.calibrate:
        calibrate(root, a.samples)
    else:
        speed(root, a.workers, a.repeats)


if __name__ == "__main__":
    main()

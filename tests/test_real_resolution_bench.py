"""bench/real_resolution.py's control copy: every photo at one common size, the source only read."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import real_resolution  # noqa: E402  (bench/real_resolution.py)


def test_the_control_copy_brings_every_photo_to_the_common_size_and_leaves_the_source(tmp_path: Path) -> None:
    src = tmp_path / "noodles"
    rng = np.random.default_rng(0)
    for split, cls, side in [("train", "ramen", 150), ("train", "spaghetti", 64), ("test", "ramen", 150)]:
        (src / split / cls).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(
            src / split / cls / "a.jpg"
        )
    before = {p: p.read_bytes() for p in src.rglob("*.jpg")}
    out = real_resolution.common_size(src, tmp_path / "common")
    copies = sorted(out.rglob("*.jpg"))
    assert [p.relative_to(out) for p in copies] == sorted(p.relative_to(src) for p in before)
    assert all(Image.open(p).size == (real_resolution.SIDE,) * 2 for p in copies)
    # A photo already at the common size keeps its bytes; the source is as it was.
    assert (out / "train/spaghetti/a.jpg").read_bytes() == before[src / "train/spaghetti/a.jpg"]
    assert {p: p.read_bytes() for p in src.rglob("*.jpg")} == before

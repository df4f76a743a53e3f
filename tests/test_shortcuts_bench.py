"""The planted-shortcut benchmark (bench/shortcuts.py) plants what it says where it says, and its scoring
reads a cause as named only when one of the kind's own words is in the text."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import shortcuts  # noqa: E402  (bench/shortcuts.py)

SIZE = 128


def photo_and_mask() -> tuple[Image.Image, np.ndarray]:
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(60, 200, (SIZE, SIZE, 3), dtype=np.uint8))
    y, x = np.mgrid[:SIZE, :SIZE]
    return photo, (x - SIZE / 2) ** 2 + (y - SIZE / 2) ** 2 < (SIZE / 4) ** 2  # the food: a disc


def changed(kind: str) -> np.ndarray:
    photo, mask = photo_and_mask()
    out = shortcuts.kinds()[kind].plant(photo, mask)
    assert out.size == photo.size and out.mode == "RGB"
    return np.abs(np.asarray(out, np.int16) - np.asarray(photo, np.int16)).max(-1) > 0


def test_a_corner_patch_and_a_watermark_touch_only_their_corner() -> None:
    patch = changed("patch")
    assert patch[-20:-4, -20:-4].all() and not patch[: SIZE // 2].any() and not patch[:, : SIZE // 2].any()
    text = changed("watermark")
    assert text[-SIZE // 6 :, : SIZE // 3].mean() > 0.1 and not text[: SIZE * 2 // 3].any()


def test_a_frame_touches_the_edges_a_background_all_but_the_food() -> None:
    frame = changed("frame")
    assert frame[:4].all() and frame[:, -4:].all() and not frame[16:-16, 16:-16].any()
    _, mask = photo_and_mask()
    background = changed("background")
    assert not background[mask].any() and background[~mask].mean() > 0.9


@pytest.mark.parametrize("kind", ["colour_cast", "lowres", "jpeg"])
def test_a_global_change_touches_the_whole_photo(kind: str) -> None:
    assert changed(kind).mean() > 0.5


def test_the_plain_copy_plants_nothing_and_its_words_are_every_kinds() -> None:
    every = shortcuts.kinds()
    assert every["none"].plant is None
    assert shortcuts.names_cause("Heat in the lower right, mostly pink.", every["none"], every)
    assert shortcuts.names_cause("The hot region is mostly pink.", every["patch"], every)
    assert not shortcuts.names_cause("Heat in the lower left, mostly white.", every["patch"], every)
    assert not shortcuts.names_cause("The tablet is blurrier", every["background"], every)  # whole words
    assert shortcuts.names_cause("At a quarter of the resolution it becomes udon.", every["lowres"], every)

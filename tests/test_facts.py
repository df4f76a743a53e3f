"""Heatmap facts: regions, shares, concentration, edge cases and serialisation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from noodlenext.explain.facts import REGIONS, HeatmapFacts, heatmap_facts


def hot_pixel(h: int, w: int, y: int, x: int) -> np.ndarray:
    cam = np.zeros((h, w))
    cam[y, x] = 1.0
    return cam


@pytest.mark.parametrize("h, w", [(30, 30), (31, 44), (5, 7)])
@pytest.mark.parametrize("cell", range(9))
def test_single_hot_pixel_lands_in_its_cell(h: int, w: int, cell: int) -> None:
    y, x = int((cell // 3 + 0.5) * h / 3), int((cell % 3 + 0.5) * w / 3)  # middle of the cell
    f = heatmap_facts(hot_pixel(h, w, y, x))
    assert f.peak_region == REGIONS[cell]
    assert f.peak_xy == pytest.approx(((x + 0.5) / w, (y + 0.5) / h))
    assert f.centroid_xy == pytest.approx(f.peak_xy)
    assert f.region_shares == {r: (1.0 if r == REGIONS[cell] else 0.0) for r in REGIONS}
    assert f.area_above_half == pytest.approx(1 / (h * w))
    assert f.concentration == pytest.approx(1 - 1 / (h * w))
    assert REGIONS[cell] in f.describe()


def test_uniform_map() -> None:
    f = heatmap_facts(np.full((30, 30), 0.7))
    assert list(f.region_shares) == list(REGIONS)  # all nine, in reading order
    assert list(f.region_shares.values()) == pytest.approx([1 / 9] * 9)
    assert f.concentration == pytest.approx(0.0, abs=1e-9)
    assert f.area_above_half == 1.0
    assert f.centroid_xy == pytest.approx((0.5, 0.5))
    assert "spread over most of the image" in f.describe()


def test_sizes_not_divisible_by_three_split_symmetrically() -> None:
    s = heatmap_facts(np.ones((31, 40))).region_shares  # rows 10/11/10, columns 13/14/13
    assert sum(s.values()) == pytest.approx(1.0)
    assert s["upper left"] == pytest.approx(10 * 13 / (31 * 40))
    assert s["center"] == pytest.approx(11 * 14 / (31 * 40))
    assert s["upper left"] == s["lower right"] == s["upper right"] == s["lower left"]
    assert s["upper center"] == s["lower center"]
    assert s["middle left"] == s["middle right"]


def test_concentration_is_one_minus_the_effective_area() -> None:
    cam = np.zeros((40, 40))
    cam[:20, :20] = 3.0  # a flat block over a quarter of the image
    f = heatmap_facts(cam)
    assert f.concentration == pytest.approx(0.75)
    assert f.area_above_half == pytest.approx(0.25)
    assert f.centroid_xy == pytest.approx((0.25, 0.25))
    assert f.peak_region == "upper left"  # first maximum in reading order


def test_all_zero_map_has_neutral_values_and_no_nan() -> None:
    f = heatmap_facts(np.zeros((17, 23)))
    values = [*f.peak_xy, *f.centroid_xy, *f.region_shares.values(), f.area_above_half, f.concentration]
    assert not any(math.isnan(v) for v in values)
    assert f.peak_region == "center" and f.peak_xy == (0.5, 0.5) and f.centroid_xy == (0.5, 0.5)
    assert list(f.region_shares.values()) == pytest.approx([1 / 9] * 9)
    assert f.area_above_half == 0.0 and f.concentration == 0.0
    assert "empty" in f.describe()
    json.dumps(f.to_dict())


def test_two_blobs_put_the_centroid_between_them() -> None:
    cam = np.zeros((60, 90))
    cam[8:12, 13:17] = 1.0  # centred at x = 15/90, y = 10/60
    cam[48:52, 73:77] = 1.0  # centred at x = 75/90, y = 50/60
    f = heatmap_facts(cam)
    assert f.centroid_xy == pytest.approx((45 / 90, 30 / 60))
    assert f.region_shares["upper left"] == pytest.approx(0.5)
    assert f.region_shares["lower right"] == pytest.approx(0.5)
    cam[48:52, 73:77] = 3.0  # a hotter second blob pulls the centroid towards it, and takes the peak
    f = heatmap_facts(cam)
    assert 45 / 90 < f.centroid_xy[0] < 75 / 90 and 30 / 60 < f.centroid_xy[1] < 50 / 60
    assert f.peak_region == "lower right"


def test_to_dict_is_json_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    f = heatmap_facts(rng.random((24, 33)) ** 4)
    d = json.loads(json.dumps(f.to_dict()))
    assert HeatmapFacts.from_dict(d) == f
    assert set(d) == {
        "peak_region",
        "peak_xy",
        "region_shares",
        "area_above_half",
        "centroid_xy",
        "concentration",
    }


def test_describe_names_the_largest_share_and_the_peak() -> None:
    cam = np.zeros((30, 30))
    cam[10:20, 10:20] = 1.0  # the center holds all the heat...
    cam[2, 2] = 5.0  # ...but the single hottest pixel is in the upper left
    text = heatmap_facts(cam).describe()
    assert "is in the center" in text and "peak is in the upper left" in text
    assert text.count(".") == 1 and "%" in text


def test_torch_input_matches_numpy() -> None:
    cam = torch.rand(1, 20, 26, requires_grad=True)  # a leading size-1 dim is squeezed
    assert heatmap_facts(cam) == heatmap_facts(cam.detach().numpy()[0])


def test_negatives_are_clipped_and_bad_shapes_rejected() -> None:
    cam = np.zeros((9, 9))
    cam[0, 0], cam[8, 8] = 1.0, -5.0
    assert heatmap_facts(cam).region_shares["upper left"] == 1.0
    with pytest.raises(ValueError, match="H, W"):
        heatmap_facts(np.zeros((2, 9, 9)))

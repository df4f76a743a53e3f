"""Plain facts about a class-activation heatmap, for people and for an LLM prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

REGIONS = (
    "upper left", "upper center", "upper right",
    "middle left", "center", "middle right",
    "lower left", "lower center", "lower right",
)  # fmt: skip


@dataclass(frozen=True)
class HeatmapFacts:
    """Where the heat of one (H, W) map sits; fractions are of image width and height (0..1)."""

    peak_region: str  # 3x3 cell holding the maximum (first maximum in reading order)
    peak_xy: tuple[float, float]  # centre of the peak pixel
    region_shares: dict[str, float]  # share of total heat per cell, all 9 cells in reading order
    area_above_half: float  # fraction of pixels strictly above half the peak value
    centroid_xy: tuple[float, float]  # heat-weighted centre
    # 1 - exp(entropy) / n_pixels: one minus the effective fraction of the image the heat covers.
    # 0 = uniform, 1 - 1/n = one pixel. Unlike 1 - entropy/log(n), it does not depend on resolution
    # for a smooth (upsampled) map: a blob covering 20% of the image scores about 0.8 at any size.
    concentration: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable plain types (tuples become lists)."""
        return {
            "peak_region": self.peak_region,
            "peak_xy": list(self.peak_xy),
            "region_shares": dict(self.region_shares),
            "area_above_half": self.area_above_half,
            "centroid_xy": list(self.centroid_xy),
            "concentration": self.concentration,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeatmapFacts:
        """Inverse of to_dict."""
        return cls(
            peak_region=str(d["peak_region"]),
            peak_xy=(float(d["peak_xy"][0]), float(d["peak_xy"][1])),
            region_shares={str(k): float(v) for k, v in d["region_shares"].items()},
            area_above_half=float(d["area_above_half"]),
            centroid_xy=(float(d["centroid_xy"][0]), float(d["centroid_xy"][1])),
            concentration=float(d["concentration"]),
        )

    def largest_share(self) -> tuple[str, float]:
        """The region holding the largest share of the heat, and that share (the first region on ties)."""
        return max(self.region_shares.items(), key=lambda kv: kv[1])

    def describe(self) -> str:
        """One or two plain English sentences."""
        if self.area_above_half == 0.0:  # only an all-zero map has no pixel above half its peak
            return "The heatmap is empty: no part of the image stands out."
        top, share = self.largest_share()
        lead = "Most heat" if share > 0.5 else "The largest share of heat"
        c = self.concentration
        spread = (
            "highly concentrated"
            if c >= 0.9
            else "fairly concentrated"
            if c >= 0.7
            else "somewhat spread out"
            if c >= 0.4
            else "spread over most of the image"
        )
        return (
            f"{lead} ({share:.0%}) is in the {top}; the peak is in the {self.peak_region}; "
            f"{self.area_above_half:.0%} of the image is above half the peak; heat is {spread}."
        )


def _cells(n: int) -> np.ndarray:
    """Third (0, 1, 2) of each of n pixels, by pixel centre; symmetric, and never on a boundary."""
    return np.minimum((3 * (np.arange(n) + 0.5) / n).astype(int), 2)


def heatmap_facts(cam: np.ndarray | torch.Tensor) -> HeatmapFacts:
    """Facts about a non-negative (H, W) heatmap; size-1 leading dims are squeezed, negatives clipped."""
    if isinstance(cam, torch.Tensor):
        cam = cam.detach().float().cpu().numpy()
    a = np.asarray(cam, dtype=np.float64)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"heatmap_facts expects an (H, W) map, got shape {np.shape(cam)}")
    a = np.clip(np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)
    h, w = a.shape
    total = a.sum()
    ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w  # pixel centres as fractions
    cell = 3 * _cells(h)[:, None] + _cells(w)[None, :]
    if total <= 0:  # all-zero map: documented neutral values instead of 0/0
        shares = dict.fromkeys(REGIONS, 1 / 9)
        return HeatmapFacts("center", (0.5, 0.5), shares, 0.0, (0.5, 0.5), 0.0)
    p = a / total
    iy, ix = np.unravel_index(int(np.argmax(a)), a.shape)
    shares = np.bincount(cell.ravel(), weights=p.ravel(), minlength=9)
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    return HeatmapFacts(
        peak_region=REGIONS[int(cell[iy, ix])],
        peak_xy=(float(xs[ix]), float(ys[iy])),
        region_shares=dict(zip(REGIONS, shares.tolist(), strict=True)),
        area_above_half=float((a > 0.5 * a[iy, ix]).mean()),
        centroid_xy=(float((p.sum(0) * xs).sum()), float((p.sum(1) * ys).sum())),
        concentration=float(np.clip(1.0 - np.exp(entropy) / a.size, 0.0, 1.0)),
    )

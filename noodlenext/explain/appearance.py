"""What the hot region of a photo looks like, in words: colour names, brightness and texture.

Deterministic numpy, no new dependency: each pixel takes the nearest of a small table of colour names
in CIE Lab (a tiny sRGB -> Lab conversion, D65), brightness is the mean luma, edges are Sobel gradients
of the luma, and "strand-like" means many edges that are locally aligned (structure-tensor coherence).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from noodlenext.explain.evidence import HOT_THRESHOLD, Appearance, RegionLook

# Prototype sRGB colour of each name; a pixel takes the nearest in Lab (CIE76 distance). Greys and
# black/white are in the table, so an unsaturated pixel lands on them rather than on a near hue.
COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 240),
    "cream": (250, 238, 200),
    "beige": (215, 190, 145),
    "yellow": (235, 200, 40),
    "orange": (230, 130, 30),
    "red": (190, 30, 30),
    "pink": (235, 150, 170),
    "brown": (140, 90, 45),
    "dark brown": (75, 45, 25),
    "green": (70, 140, 50),
    "blue": (50, 90, 180),
    "grey": (128, 128, 128),
    "black": (20, 20, 20),
}
# A colour is named when it holds at least this share of the region's pixels (at most MAX_COLOURS, most
# common first; the most common one always).
MIN_COLOUR_SHARE = 0.15
MAX_COLOURS = 3
# Texture, from the mean Sobel magnitude (1 = a black-to-white step) and the energy-weighted local
# coherence of the gradients (0 = no direction, 1 = all parallel) in 5x5 windows: below SMOOTH_EDGES is a
# smooth surface; at least STRAND_EDGES with coherence at least STRAND_COHERENCE is strand-like (parallel
# edges, as noodles); anything else is mixed. Calibrated on synthetic stripes (coherence ~0.9), white
# noise (~0.4) and flat colour (edges ~0).
SMOOTH_EDGES = 0.05
STRAND_EDGES = 0.1
STRAND_COHERENCE = 0.6
WINDOW = 5


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE Lab (D65) of sRGB values (..., 3) in 0..255: L in 0..100."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = linear @ m.T / np.array([0.95047, 1.0, 1.08883])
    d = 6 / 29
    f = np.where(xyz > d**3, np.cbrt(xyz), xyz / (3 * d * d) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


_NAMES = list(COLOURS)
_LAB = srgb_to_lab(np.array([COLOURS[n] for n in _NAMES]))


def colour_names(pixels: np.ndarray) -> np.ndarray:
    """Index into COLOURS (in table order) of the nearest colour name of each sRGB pixel (N, 3)."""
    lab = srgb_to_lab(pixels)
    return ((lab[:, None, :] - _LAB[None]) ** 2).sum(-1).argmin(1)


# A finer colour table than the names, for what is unusual: each of R, G, B in this many equal bins.
COLOUR_BINS = 8


def colour_bins(pixels: np.ndarray) -> np.ndarray:
    """The bin (0..COLOUR_BINS**3 - 1) of each (N, 3) uint8 RGB pixel."""
    q = np.asarray(pixels, dtype=np.int64)[:, :3] * COLOUR_BINS // 256
    return (q[:, 0] * COLOUR_BINS + q[:, 1]) * COLOUR_BINS + q[:, 2]


def colour_histogram(pixels: np.ndarray) -> np.ndarray:
    """The share of (N, 3) uint8 RGB pixels in each colour bin (`colour_bins`): (COLOUR_BINS**3,) summing to
    1 (all zero for no pixels)."""
    counts = np.bincount(colour_bins(pixels), minlength=COLOUR_BINS**3).astype(np.float64)
    return counts / max(1.0, counts.sum())


def _luma(photo: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of gamma-encoded sRGB, 0..1: the brightness a viewer reads, cheaply."""
    return (photo[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])) / 255.0


def _box(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k windows (edge-replicated), same shape, by cumulative sums."""
    r = k // 2
    p = np.pad(a, r, mode="edge").cumsum(0).cumsum(1)
    p = np.pad(p, ((1, 0), (1, 0)))
    h, w = a.shape
    return (p[k : k + h, k : k + w] - p[:h, k : k + w] - p[k : k + h, :w] + p[:h, :w]) / (k * k)


def _gradients(luma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel gx, gy divided by 4, so a unit step gives 1 (edge-replicated border)."""
    p = np.pad(luma, 1, mode="edge")
    dx = p[:, 2:] - p[:, :-2]  # (H + 2, W)
    dy = p[2:, :] - p[:-2, :]  # (H, W + 2)
    gx = (dx[:-2] + 2 * dx[1:-1] + dx[2:]) / 4
    gy = (dy[:, :-2] + 2 * dy[:, 1:-1] + dy[:, 2:]) / 4
    return gx, gy


def _eroded(mask: np.ndarray) -> np.ndarray:
    """Pixels whose whole 3x3 neighbourhood is in the mask; the mask itself if none is.

    Edge statistics use it, so the border between the region and the rest counts for neither.
    """
    p = np.pad(mask, 1, mode="constant", constant_values=False)
    h, w = mask.shape
    inner = np.ones_like(mask)
    for dy in range(3):
        for dx in range(3):
            inner &= p[dy : dy + h, dx : dx + w]
    return inner if inner.any() else mask


def _describe(photo: np.ndarray, mask: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> RegionLook:
    if not mask.any():
        return RegionLook(colours=[], brightness=0.0, edge_density=0.0, texture="none")
    counts = np.bincount(colour_names(photo[mask][:, :3]), minlength=len(_NAMES))
    shares = counts / counts.sum()
    order = np.argsort(-shares, kind="stable")  # ties: table order
    colours = [_NAMES[i] for i in order[:MAX_COLOURS] if shares[i] >= MIN_COLOUR_SHARE] or [_NAMES[order[0]]]
    inner = _eroded(mask)
    magnitude = np.minimum(np.hypot(gx, gy), 1.0)
    edges = float(magnitude[inner].mean())
    jxx, jyy, jxy = _box(gx * gx, WINDOW), _box(gy * gy, WINDOW), _box(gx * gy, WINDOW)
    energy = jxx + jyy
    coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (energy + 1e-12)
    weight = energy[inner].sum()
    aligned = float((coherence[inner] * energy[inner]).sum() / weight) if weight > 0 else 0.0
    if edges < SMOOTH_EDGES:
        texture = "smooth surface"
    elif edges >= STRAND_EDGES and aligned >= STRAND_COHERENCE:
        texture = "strand-like edges"
    else:
        texture = "mixed"
    return RegionLook(
        colours=colours, brightness=float(_luma(photo)[mask].mean()), edge_density=edges, texture=texture
    )


def _as_rgb(photo: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(photo, Image.Image):
        photo = np.asarray(photo.convert("RGB"))
    photo = np.asarray(photo)
    if photo.ndim != 3 or photo.shape[2] < 3 or photo.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB photo, got {photo.shape} {photo.dtype}")
    return photo[..., :3]


def describe_region(photo_rgb_uint8: np.ndarray | Image.Image, mask: np.ndarray) -> RegionLook:
    """What the pixels of `mask` (H, W) bool look like in the photo (H, W, 3) uint8 RGB (or a PIL image).

    colours: names holding at least MIN_COLOUR_SHARE of the pixels, most common first; brightness: mean
    luma 0..1; edge_density: mean Sobel magnitude 0..1 inside the region (its border excluded);
    texture: `strand-like edges`, `smooth surface` or `mixed` (see the thresholds above); an empty mask
    gives no colours and texture `none`.
    """
    photo = _as_rgb(photo_rgb_uint8)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != photo.shape[:2]:
        raise ValueError(f"mask {mask.shape} is not the photo's size {photo.shape[:2]}")
    return _describe(photo, mask, *_gradients(_luma(photo)))


def hot_mask(cam: np.ndarray, threshold: float = HOT_THRESHOLD) -> np.ndarray:
    """The hot region of an (H, W) map: heat >= threshold * peak, and > 0 (an all-zero map has none)."""
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float64))
    return (cam >= threshold * cam.max()) & (cam > 0)


def appearance(
    photo: np.ndarray | Image.Image, cam: np.ndarray, threshold: float = HOT_THRESHOLD
) -> Appearance:
    """The hot region of `cam` (heat >= threshold * peak) against the rest of the photo.

    photo: (H, W, 3) uint8 RGB or a PIL image; cam: (h, w) heatmap, resized bilinearly to the photo's
    size when it differs (as the counterfactuals' rule, so both describe the same pixels).
    """
    rgb = _as_rgb(photo)
    cam = np.asarray(cam.detach().cpu() if hasattr(cam, "detach") else cam, dtype=np.float32)
    while cam.ndim > 2 and cam.shape[0] == 1:
        cam = cam[0]
    if cam.shape != rgb.shape[:2]:
        cam = np.asarray(Image.fromarray(cam, mode="F").resize(rgb.shape[1::-1], Image.BILINEAR))
    hot = hot_mask(cam, threshold)
    gx, gy = _gradients(_luma(rgb))
    return Appearance(hot=_describe(rgb, hot, gx, gy), rest=_describe(rgb, ~hot, gx, gy))

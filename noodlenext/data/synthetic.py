"""Procedural noodle "photos" (spaghetti / ramen / udon): embedded default data, no download needed.

Each photo comes with its evidence mask, root/masks/<split>/<class>/<stem>.png (8-bit L, 255 = evidence,
0 = not), drawn from the same geometry as the photo. The evidence is the dish's food area: the ellipse the
noodles are laid in (the region `_draw_vessel` returns: 0.6 of the dish radii on a plate, 0.72 in a bowl),
unioned with every shape drawn from the broth on (the broth surface, fat droplets, strands with their
outlines, sauce, meat crumbs, basil, toppings), so whatever pokes out of that ellipse is in too. Not
evidence: the table, the shadow, the plate or bowl, its well and its rim where no food covers them. A
pixel is evidence when at least half of its supersampled sub-pixels are; the photo's blur, lighting and
noise do not move the mask.

The dish: `dishes="by_class"` (the default) serves each class as it usually is, spaghetti on a plate, ramen
and udon in bowls, so the dish tells spaghetti apart too, outside the mask; `dishes="any"` puts every class
on a plate or in a bowl alike, so that only the food (the mask) carries the class: the truth the explainer
benchmark (`bench/explainers.py`) scores maps against.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import json
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from noodlenext.core.files import process_stamp, stamp_alive
from noodlenext.core.ownership import is_empty_dir

CLASS_NAMES: tuple[str, ...] = ("0_spaghetti", "1_ramen", "2_udon")
GENERATOR_VERSION = 1  # bump whenever rendering changes: stale datasets then re-render
MARKER = "SYNTHETIC.json"
MASKS = "masks"  # root/masks/<split>/<class>/<stem>.png, beside (not inside) the split folders
MASKS_VERSION = 1  # in the marker: a dataset rendered before masks (or with other masks) re-renders
_SS = 2  # draw at 2x and downscale: antialiases 1 px strands for free
_SPLITS = ("train", "val", "test")

Pt = tuple[float, float]


def _col(rng: np.random.Generator, rgb: tuple[float, ...], sd: float = 10.0) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, int(c + e))) for c, e in zip(rgb, rng.normal(0, sd, 3).tolist(), strict=True))
    return r, g, b


def _poly_ellipse(cx: float, cy: float, rx: float, ry: float, ang: float = 0.0, n: int = 28) -> list[Pt]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    ca, sa = math.cos(ang), math.sin(ang)
    return list(zip((cx + ca * x - sa * y).tolist(), (cy + sa * x + ca * y).tolist(), strict=True))


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sd: float) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sd)


def _background(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Table: plain colour, wood-like stripes or cloth-like checks, as float32 (s, s, 3); x, y in [0, 1)."""
    kind, shape = rng.integers(3), (*x.shape, 1)
    if kind == 0:
        c = rng.uniform(50, 230, 3)
        bg = (0.6 * c + 0.4 * c.mean()).astype(np.float32) + _noise(rng, shape, 3)  # muted, table-like
    elif kind == 1:
        base = np.array([rng.uniform(110, 200), rng.uniform(65, 125), rng.uniform(30, 75)], np.float32)
        a = rng.uniform(0, np.pi)
        u, v = x * math.cos(a) + y * math.sin(a), -x * math.sin(a) + y * math.cos(a)
        warp = 0.02 * np.sin(2 * np.pi * rng.uniform(1, 4) * v + rng.uniform(0, 6))
        grain = np.sin(2 * np.pi * rng.uniform(10, 28) * (u + warp))
        bg = base * (1 + 0.13 * grain[..., None] + _noise(rng, shape, 0.03))
    else:
        n = rng.integers(3, 9)
        level = (((x * n) % 1 < 0.5).astype(np.float32) + ((y * n) % 1 < 0.5)) / 2
        c1, c2 = rng.uniform(40, 220, 3).astype(np.float32), rng.uniform(200, 250, 3).astype(np.float32)
        bg = c2 + (c1 - c2) * level[..., None] + _noise(rng, shape, 6)
    return bg


def _strands(
    rng: np.random.Generator,
    c: Pt,
    r: Pt,
    n: int,
    step: float,
    turn_sd: float,
    curl: np.ndarray,
    ang: np.ndarray,
    crinkle: float = 0.0,
) -> list[list[Pt]]:
    """Random walks (one per entry of `ang`) kept inside the ellipse (c, r); `crinkle` = ramen zigzag."""
    m = len(ang)
    t, rr = rng.uniform(0, 2 * np.pi, m), np.sqrt(rng.uniform(0, 1, m)) * 0.9
    qx, qy = rr * np.cos(t), rr * np.sin(t)  # position in ellipse-normalised coordinates
    turns = rng.normal(0, turn_sd, (n, m)) + curl
    xs, ys = np.empty((n, m)), np.empty((n, m))
    for k in range(n):  # all strands step together: numpy over strands instead of a Python loop per strand
        out = qx * qx + qy * qy > 0.85
        if out.any():  # steer smoothly back toward the centre instead of leaving the dish
            home = np.arctan2(-qy, -qx) - ang
            ang = ang + out * 0.5 * np.arctan2(np.sin(home), np.cos(home))
        ang = ang + turns[k]
        ca, sa = np.cos(ang), np.sin(ang)
        qx, qy = qx + step / r[0] * ca, qy + step / r[1] * sa
        off = crinkle if k % 2 else -crinkle
        xs[k], ys[k] = c[0] + r[0] * qx - off * sa, c[1] + r[1] * qy + off * ca
    return [list(zip(x, y, strict=True)) for x, y in zip(xs.T.tolist(), ys.T.tolist(), strict=True)]


def _blob(
    draw: ImageDraw.ImageDraw | _FoodDraw,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    r: float,
    fill: tuple[int, int, int],
    n: int = 7,
) -> None:
    for _ in range(n):  # union of jittered circles reads as an organic sauce/batter shape
        a, d, rc = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.6) * r, rng.uniform(0.4, 0.7) * r
        x, y = cx + d * math.cos(a), cy + d * math.sin(a)
        draw.ellipse((x - rc, y - rc, x + rc, y + rc), fill=fill)


def _onions(draw: ImageDraw.ImageDraw | _FoodDraw, rng: np.random.Generator, c: Pt, r: Pt, sz: float) -> None:
    for _ in range(rng.integers(8, 22)):
        t, d = rng.uniform(0, 2 * np.pi), math.sqrt(rng.uniform(0, 1))
        x, y, q = c[0] + r[0] * d * math.cos(t), c[1] + r[1] * d * math.sin(t), sz * rng.uniform(0.7, 1.3)
        draw.ellipse((x - q, y - q, x + q, y + q), fill=_col(rng, (90, 170, 60), 15))
        draw.ellipse((x - q / 2, y - q / 2, x + q / 2, y + q / 2), fill=_col(rng, (190, 225, 150), 10))


@dataclass(frozen=True)
class Dish:
    """Where the plate/bowl sits, in supersampled pixels: centre and the two ellipse radii."""

    cx: float
    cy: float
    rx: float
    ry: float


class _FoodDraw:
    """Draws each shape into the photo with its fill and, as evidence (255), into the mask: one call, one
    geometry, so the mask never drifts from the photo and draws nothing from the rng."""

    def __init__(self, photo: ImageDraw.ImageDraw, mask: ImageDraw.ImageDraw) -> None:
        self.photo, self.mask = photo, mask

    def ellipse(self, xy: tuple[float, ...], fill: tuple[int, ...]) -> None:
        self.photo.ellipse(xy, fill=fill)
        self.mask.ellipse(xy, fill=255)

    def polygon(self, xy: list[Pt], fill: tuple[int, ...]) -> None:
        self.photo.polygon(xy, fill=fill)
        self.mask.polygon(xy, fill=255)

    def line(self, xy: list[Pt], fill: tuple[int, ...], width: int = 0) -> None:
        self.photo.line(xy, fill=fill, width=width)
        self.mask.line(xy, fill=255, width=width)


@dataclass(frozen=True)
class Canvas:
    """What every drawing step shares: the supersampled image, the image's one rng, the dish, the unit."""

    draw: ImageDraw.ImageDraw | _FoodDraw
    rng: np.random.Generator
    dish: Dish
    u: float  # geometry unit: 1 at 128 px output (sizes were tuned there)

    def dish_ellipse(self, f: float, fill: tuple[int, ...], dy: float = 0.0) -> None:
        """The dish outline scaled by `f` (and shifted down by `dy`), filled."""
        cx, cy, rx, ry = self.dish.cx, self.dish.cy, self.dish.rx, self.dish.ry
        self.draw.ellipse((cx - f * rx, cy + dy - f * ry, cx + f * rx, cy + dy + f * ry), fill=fill)


# Bowl toppings: each draws one topping centred at (x, y), rotated by `angle`, sized by the dish.
def _egg(c: Canvas, x: float, y: float, angle: float) -> None:
    """Halved soft-boiled egg."""
    r = c.dish.rx
    c.draw.polygon(_poly_ellipse(x, y, 0.2 * r, 0.15 * r, angle), fill=_col(c.rng, (245, 242, 230), 6))
    c.draw.polygon(_poly_ellipse(x, y, 0.11 * r, 0.08 * r, angle), fill=_col(c.rng, (240, 145, 30), 12))


def _naruto(c: Canvas, x: float, y: float, angle: float) -> None:
    """Naruto fish cake: white disc, pink swirl."""
    rn = 0.14 * c.dish.rx
    c.draw.ellipse((x - rn, y - rn, x + rn, y + rn), fill=_col(c.rng, (248, 245, 240), 5))
    sp = np.linspace(0, 4 * np.pi, 40)
    rs = 0.8 * rn * sp / sp[-1]
    swirl = zip((x + rs * np.cos(sp)).tolist(), (y + rs * np.sin(sp)).tolist(), strict=True)
    c.draw.line(list(swirl), fill=_col(c.rng, (230, 90, 140), 10), width=max(1, round(1.5 * c.u)))


def _chashu(c: Canvas, x: float, y: float, angle: float) -> None:
    """Chashu pork slice."""
    rc = 0.2 * c.dish.rx
    c.draw.ellipse((x - rc, y - rc, x + rc, y + rc), fill=_col(c.rng, (115, 65, 40), 10))
    rc *= 0.8  # lighter meat inside a darker rind
    c.draw.ellipse((x - rc, y - rc, x + rc, y + rc), fill=_col(c.rng, (170, 110, 75), 10))


def _nori(c: Canvas, x: float, y: float, angle: float) -> None:
    """Nori sheet (a rotated 4-gon)."""
    r = c.dish.rx
    c.draw.polygon(_poly_ellipse(x, y, 0.25 * r, 0.35 * r, angle, n=4), fill=_col(c.rng, (25, 45, 30), 6))


def _tempura(c: Canvas, x: float, y: float, angle: float) -> None:
    """Tempura: golden bumpy blob with crunchy specks."""
    r = c.dish.rx
    _blob(c.draw, c.rng, x, y, 0.25 * r, _col(c.rng, (215, 165, 70), 10), n=9)
    for _ in range(12):
        mx, my, m = x + c.rng.normal(0, 0.1) * r, y + c.rng.normal(0, 0.1) * r, c.rng.uniform(1.5, 3) * c.u
        c.draw.ellipse((mx - m, my - m, mx + m, my + m), fill=_col(c.rng, (175, 115, 40), 12))


def _kamaboko(c: Canvas, x: float, y: float, angle: float) -> None:
    """Kamaboko: pink-edged fish-cake slice."""
    rk = 0.15 * c.dish.rx
    c.draw.polygon(_poly_ellipse(x, y, rk, 0.7 * rk, angle), fill=_col(c.rng, (235, 110, 145), 10))
    inner = _poly_ellipse(x + 0.15 * rk, y + 0.15 * rk, 0.85 * rk, 0.55 * rk, angle)
    c.draw.polygon(inner, fill=(246, 242, 236))


def _green_onions(c: Canvas, x: float, y: float, angle: float) -> None:
    """A scatter of green onion rings."""
    _onions(c.draw, c.rng, (x, y), (0.25 * c.dish.rx, 0.25 * c.dish.ry), 2.5 * c.u)


Topping = Callable[[Canvas, float, float, float], None]


@dataclass(frozen=True)
class ClassStyle:
    """How one class is drawn. Ranges are (low, high) for rng.uniform / rng.integers (high exclusive)."""

    vessel: str  # its own dish (dishes="by_class"): "plate" (flat, light, shallow well) or "bowl" (rim)
    noodle_rgb: tuple[float, float, float]
    strand_width: tuple[float, float]  # output px at 128 px
    strand_count: tuple[int, int]
    strand_steps: tuple[int, int]  # random-walk steps per strand
    step: float  # random-walk step length, in geometry units
    turn_sd: float  # per-step random turn (rad)
    tangled: bool  # True: random start directions (spaghetti); False: strands share a lead direction
    curl: float  # tangled strands: steady turn per step, random sign per strand
    bend_sd: float  # strands sharing a direction: sd of each strand's steady turn per step
    crinkle: float  # zigzag amplitude in geometry units (ramen)
    broth_rgb: tuple[int, int, int] | None = None
    fat_droplets: bool = False
    sauce_chance: float = 0.0  # chance of tomato sauce, drawn between two layers of strands
    strands_under_sauce: float = 1.0  # fraction of strands drawn before the sauce
    basil_chance: float = 0.0
    toppings: tuple[Topping, ...] = ()  # bowl toppings: each picked with chance 1/2


CLASS_STYLES: tuple[ClassStyle, ...] = (
    ClassStyle(  # 0_spaghetti: thin yellow tangle on a plate, tomato sauce, maybe basil
        vessel="plate", noodle_rgb=(235, 205, 125), strand_width=(1, 2), strand_count=(30, 45),
        strand_steps=(35, 60), step=4, turn_sd=0.35, tangled=True, curl=0.12, bend_sd=0.0, crinkle=0.0,
        sauce_chance=0.9, strands_under_sauce=0.7, basil_chance=0.4,
    ),
    ClassStyle(  # 1_ramen: crinkly golden strands in brown broth with fat droplets
        vessel="bowl", noodle_rgb=(228, 185, 70), strand_width=(2, 3), strand_count=(22, 32),
        strand_steps=(25, 40), step=4, turn_sd=0.12, tangled=False, curl=0.0, bend_sd=0.05, crinkle=1.2,
        broth_rgb=(165, 100, 45), fat_droplets=True,
        toppings=(_egg, _naruto, _chashu, _nori, _green_onions),
    ),
    ClassStyle(  # 2_udon: few thick white strands in pale broth
        vessel="bowl", noodle_rgb=(246, 238, 212), strand_width=(4, 7), strand_count=(12, 18),
        strand_steps=(16, 26), step=8, turn_sd=0.06, tangled=False, curl=0.0, bend_sd=0.12, crinkle=0.0,
        broth_rgb=(228, 198, 140),
        toppings=(_tempura, _tempura, _kamaboko, _green_onions, _green_onions),
    ),
)  # fmt: skip
DISHES = ("by_class", "any")  # the dish each class's photos show: see the module docstring
PLATE_CHANCE = 0.5  # dishes="any": a plate or a bowl with even odds, whatever the class
PLATE_RGB = ((240, 240, 235), (200, 215, 230))  # white (70 %) or pale blue
BOWL_RGB = ((235, 235, 230), (30, 30, 32), (150, 40, 35), (40, 60, 110))


def _render_image(class_idx: int, index: int, seed: int, size: int, dishes: str = "by_class") -> Image.Image:
    """Render one photo (RGB, size x size); depends only on (seed, class, index, dishes)."""
    return _render(class_idx, index, seed, size, dishes)[0]


def _render(
    class_idx: int, index: int, seed: int, size: int, dishes: str = "by_class"
) -> tuple[Image.Image, Image.Image]:
    """One photo (RGB) and its evidence mask (L, 0 or 255), both size x size; see the module docstring.

    Depends only on (seed, class, index, dishes) so order/parallelism never matters. Every step draws from the
    one rng in turn: keep the steps, and the draws inside them, in this order, or the pixels change (then
    bump GENERATOR_VERSION). The mask draws nothing from the rng.
    """
    style = CLASS_STYLES[class_idx]
    rng = np.random.default_rng([seed, class_idx, index])
    s = size * _SS
    dish = _place_dish(rng, s)
    img = _draw_table(rng, dish, size)
    canvas = Canvas(ImageDraw.Draw(img), rng, dish, u=s / 256)
    food = _draw_vessel(canvas, style, dishes)
    mask = Image.new("L", (s, s), 0)
    mask_draw = ImageDraw.Draw(mask)
    fx, fy = food
    mask_draw.ellipse((dish.cx - fx, dish.cy - fy, dish.cx + fx, dish.cy + fy), fill=255)
    canvas = replace(canvas, draw=_FoodDraw(canvas.draw, mask_draw))  # from here on every shape is food
    _draw_broth(canvas, style)
    strands, noodle_rgb, width = _lay_strands(canvas, style, food, s)
    under = int(len(strands) * style.strands_under_sauce)
    _draw_strands(canvas, strands[:under], noodle_rgb, width)
    _draw_sauce(canvas, style)
    _draw_strands(canvas, strands[under:], noodle_rgb, width)  # on top, so the sauce sits *in* the pasta
    _draw_toppings(canvas, style)
    # evidence where at least half of the SSxSS sub-pixels are (reduce averages them)
    return _finish(img, rng, size), mask.reduce(_SS).point(lambda v: 255 if v >= 128 else 0)


def _place_dish(rng: np.random.Generator, s: int) -> Dish:
    cx, cy = s * (0.5 + rng.uniform(-0.15, 0.15)), s * (0.5 + rng.uniform(-0.15, 0.15))
    rx = s * rng.uniform(0.25, 0.45)
    ry = rx * rng.uniform(0.8, 1.0)  # mild perspective squash
    return Dish(cx, cy, rx, ry)


def _draw_table(rng: np.random.Generator, dish: Dish, size: int) -> Image.Image:
    """The table with the dish's soft drop shadow, as a supersampled RGB image."""
    s = size * _SS
    y, x = _grid(size)  # smooth table + shadow need no supersampling: build at output size, upscale
    bg = _background(rng, x, y)
    sx = (x - (dish.cx + 0.04 * dish.rx) / s) * (s / 1.05 / dish.rx)
    sy = (y - (dish.cy + 0.08 * dish.ry) / s) * (s / 1.05 / dish.ry)
    sh = sx * sx + sy * sy
    bg *= (1 - 0.35 * np.clip((1.25 - sh) / 0.5, 0, 1))[..., None]
    return Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8)).resize((s, s), Image.Resampling.BILINEAR)


def _draw_vessel(c: Canvas, style: ClassStyle, dishes: str) -> Pt:
    """Plate or bowl (the class's own, or either with even odds when `dishes="any"`: one more rng draw);
    returns the radii of the ellipse (around the dish centre) the noodles stay in."""
    if (style.vessel == "plate") if dishes == "by_class" else (c.rng.random() < PLATE_CHANCE):
        plate = _col(c.rng, PLATE_RGB[0] if c.rng.random() < 0.7 else PLATE_RGB[1], 8)
        c.dish_ellipse(1.0, plate)
        c.dish_ellipse(0.72, tuple(int(v * 0.93) for v in plate))  # the shallow well
        return 0.6 * c.dish.rx, 0.6 * c.dish.ry
    bowl = _col(c.rng, BOWL_RGB[c.rng.integers(4)], 10)
    c.dish_ellipse(1.0, bowl)
    c.dish_ellipse(0.9, tuple(min(255, int(v * 1.15 + 15)) for v in bowl))  # the rim
    return 0.72 * c.dish.rx, 0.72 * c.dish.ry


def _draw_broth(c: Canvas, style: ClassStyle) -> None:
    """Ramen and udon (on a plate too, with `dishes="any"`): the broth surface, and fat droplets on ramen
    (tonkotsu/shoyu) broth."""
    if style.broth_rgb is None:
        return
    c.dish_ellipse(0.84, _col(c.rng, style.broth_rgb, 12), dy=0.02 * c.dish.ry)
    if style.fat_droplets:
        for _ in range(c.rng.integers(5, 15)):
            t, q, rd = c.rng.uniform(0, 2 * np.pi), c.rng.uniform(0.3, 0.8), c.rng.uniform(1.5, 4) * c.u
            ox, oy = c.dish.cx + q * c.dish.rx * math.cos(t), c.dish.cy + q * c.dish.ry * math.sin(t)
            c.draw.ellipse((ox - rd, oy - rd, ox + rd, oy + rd), fill=_col(c.rng, (200, 140, 60), 10))


def _lay_strands(
    c: Canvas, style: ClassStyle, food: Pt, s: int
) -> tuple[list[list[Pt]], tuple[float, ...], int]:
    """The strands' paths, their base colour and their line width (supersampled px)."""
    rng = c.rng
    brightness = rng.uniform(0.85, 1.1)  # per-image jitter of the noodles
    width_128 = rng.uniform(*style.strand_width)
    count = rng.integers(*style.strand_count)
    steps = rng.integers(*style.strand_steps)
    noodle_rgb = tuple(v * brightness for v in style.noodle_rgb)
    width = max(1, round(width_128 * s / 128))
    lead = rng.uniform(0, 2 * np.pi)  # drawn for every class; only strands sharing a direction use it
    if style.tangled:
        start = rng.uniform(0, 2 * np.pi, count)
        curl = style.curl * rng.uniform(0.5, 1.5, count) * rng.choice([-1, 1], count)
    else:
        start, curl = lead + rng.normal(0, 0.5, count), rng.normal(0, style.bend_sd, count)
    centre = (c.dish.cx, c.dish.cy)
    step, crinkle = style.step * c.u, style.crinkle * c.u
    paths = _strands(rng, centre, food, int(steps), step, style.turn_sd, curl, start, crinkle)
    return paths, noodle_rgb, width


def _draw_strands(c: Canvas, strands: list[list[Pt]], noodle_rgb: tuple[float, ...], width: int) -> None:
    """Each strand: a darker outline, the strand, and a highlight on thick ones."""
    for pts in strands:
        col = _col(c.rng, noodle_rgb, 6)
        for fill, lw in ((tuple(int(v * 0.72) for v in col), width + max(1, round(c.u))), (col, width)):
            c.draw.line(pts, fill=fill, width=lw)
            if lw >= 8:  # round joints: wide segments otherwise show notches (cheaper than joint="curve")
                r = lw / 2 - 0.5
                for x, y in pts:
                    c.draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        if width >= 6:  # glossy highlight makes thick strands read as round noodles, not flat ribbons
            c.draw.line(pts, fill=tuple(min(255, v + 22) for v in col), width=width // 3)


def _draw_sauce(c: Canvas, style: ClassStyle) -> None:
    """Tomato sauce blobs, sometimes with meat crumbs."""
    rng, dish = c.rng, c.dish
    if not style.sauce_chance or rng.random() >= style.sauce_chance:  # bowls: no draw at all
        return
    for _ in range(rng.integers(1, 3)):
        sx, sy = dish.cx + rng.normal(0, 0.15) * dish.rx, dish.cy + rng.normal(0, 0.15) * dish.ry
        _blob(c.draw, rng, sx, sy, dish.rx * rng.uniform(0.2, 0.32), _col(rng, (200, 55, 30), 12))
        if rng.random() < 0.5:  # meat crumbs
            for _ in range(rng.integers(8, 20)):
                mx, my = sx + rng.normal(0, 0.12) * dish.rx, sy + rng.normal(0, 0.12) * dish.ry
                q = rng.uniform(2, 4) * c.u
                c.draw.ellipse((mx - q, my - q, mx + q, my + q), fill=_col(rng, (110, 60, 35), 12))


def _draw_toppings(c: Canvas, style: ClassStyle) -> None:
    """Maybe a basil leaf (plate), or some of the bowl's toppings at distinct angles around the bowl."""
    if style.basil_chance and c.rng.random() < style.basil_chance:
        _draw_basil(c)
    if not style.toppings:
        return
    n = len(style.toppings)
    picked = [k for k in range(n) if c.rng.random() < 0.5] or [int(c.rng.integers(n))]  # at least one
    slots = c.rng.permutation(8)
    for j, kind in enumerate(picked):
        t, q = slots[j] * np.pi / 4 + c.rng.normal(0, 0.2), c.rng.uniform(0.35, 0.6)
        x, y = c.dish.cx + q * c.dish.rx * math.cos(t), c.dish.cy + q * c.dish.ry * math.sin(t)
        style.toppings[kind](c, x, y, t)


def _draw_basil(c: Canvas) -> None:
    """A basil leaf with pointed ends, somewhere near the middle of the plate."""
    rng, dish = c.rng, c.dish
    lx, ly = dish.cx + rng.normal(0, 0.2) * dish.rx, dish.cy + rng.normal(0, 0.2) * dish.ry
    la, ll = rng.uniform(0, 2 * np.pi), 0.18 * dish.rx
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    px, py = ll * np.cos(t), 0.45 * ll * np.sin(t) * (1 - 0.6 * np.abs(np.cos(t)))
    ca, sa = math.cos(la), math.sin(la)
    leaf = zip((lx + ca * px - sa * py).tolist(), (ly + sa * px + ca * py).tolist(), strict=True)
    c.draw.polygon(list(leaf), fill=_col(rng, (55, 130, 45), 12))


@functools.lru_cache(maxsize=4)
def _grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1) (cached: identical for every image)."""
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) / s
    y.flags.writeable = x.flags.writeable = False
    return y, x


def _finish(img: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    """Downscale, then photo-ish nuisances: blur, lighting gradient, contrast, white balance, noise."""
    img = img.reduce(_SS)  # box filter over each SSxSS block = plain supersampling
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9) * size / 128))
    a = np.asarray(img, dtype=np.float32)
    y, x = _grid(size)
    th = rng.uniform(0, 2 * np.pi)
    grad = (x - 0.5) * math.cos(th) + (y - 0.5) * math.sin(th)
    light = rng.uniform(0.85, 1.12) * (1 + rng.uniform(0, 0.5) * grad)
    a = a * light[..., None] * rng.normal(1, 0.04, 3).astype(np.float32)
    m = a.mean()
    a = (a - m) * np.float32(rng.uniform(0.85, 1.15)) + m + _noise(rng, a.shape, rng.uniform(1, 5))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    if n < 1 or not (0 <= val_fraction < 1 and 0 <= test_fraction < 1):
        raise ValueError("need images_per_class >= 1 and fractions in [0, 1)")
    # every requested split gets >= 1 image: ImageFolder rejects empty class dirs
    nv = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    nt = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    if n - nv - nt < 1:
        raise ValueError(f"images_per_class={n} too small for val/test fractions")
    return {k: c for k, c in zip(_SPLITS, (n - nv - nt, nv, nt), strict=True) if c > 0}


def _metadata(
    images_per_class: int,
    image_size: int,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    dishes: str,
) -> dict:
    """The SYNTHETIC.json content for these parameters (validates them)."""
    if seed < 0 or image_size < 16:
        raise ValueError("seed must be >= 0 and image_size >= 16")
    if dishes not in DISHES:
        raise ValueError(f"data.synthetic.dishes={dishes!r}: use one of {', '.join(DISHES)}")
    counts = _split_counts(images_per_class, val_fraction, test_fraction)
    return {
        "generator_version": GENERATOR_VERSION,
        "masks": MASKS_VERSION,
        "seed": seed,
        "images_per_class": images_per_class,
        "image_size": image_size,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        **({} if dishes == "by_class" else {"dishes": dishes}),  # renders from before the option stay valid
        "classes": list(CLASS_NAMES),
        "counts": {split: dict.fromkeys(CLASS_NAMES, k) for split, k in counts.items()},
    }


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def marker_state(root: str | Path) -> str | None:
    """Whether `root` carries this module's marker: "complete" (SYNTHETIC.json, read whole), "partial" (a
    SYNTHETIC.json cut short: empty, or the start of one this module writes) or None (no marker, or a
    SYNTHETIC.json that is not ours). Only a folder with a marker is ever replaced."""
    try:
        data = (Path(root) / MARKER).read_bytes()
    except OSError:
        return None
    try:
        meta = json.loads(data)
    except ValueError:
        head = data.lstrip()
        return "partial" if _MARKER_HEAD[: len(head)] == head[: len(_MARKER_HEAD)] else None
    return "complete" if isinstance(meta, dict) and "generator_version" in meta else None


_MARKER_HEAD = b'{\n  "generator_version":'  # how every SYNTHETIC.json starts (json.dumps(meta, indent=2))
RENDERING = ".rendering.json"  # in a render under way (root's .partial sibling): its writer and parameters
# What a render holds: photos, masks, the marker, and the resized cache (data.cache=resized's default).
_RENDERED = re.compile(
    rf"^(?:(?:{'|'.join(_SPLITS)})/\d+_\w+/\w+_\d{{5}}\.jpg"
    rf"|{MASKS}/(?:{'|'.join(_SPLITS)})/\d+_\w+/\w+_\d{{5}}\.png"
    rf"|{re.escape(MARKER)}|{re.escape(RENDERING)}"
    r"|\.noodlenext_cache/(?:CACHEDIR\.TAG|[^/]+/[0-9a-f]{2}/(?:[0-9a-f]{64}\.npy|\.[0-9a-f]+\.[^/]*\.tmp)))$"
)


class NotSynthetic(FileExistsError):
    """data.root holds something the renderer did not write: it is left exactly as it is."""


def looks_like_image_folder(root: str | Path) -> bool:
    """root/train/ with at least one class folder: somebody's ImageFolder (or a render: see marker_state)."""
    train = Path(root) / "train"
    try:
        return train.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in train.iterdir())
    except OSError:
        return False


def _foreign_files(root: Path) -> list[str]:
    """The files under a render's root that the renderer does not write (root-relative, sorted)."""
    foreign = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir() and not path.is_symlink():
            continue
        if not _RENDERED.match(rel):
            foreign.append(rel)
    return foreign


def _check_replaceable(root: Path) -> None:
    """Refuse (NotSynthetic) unless root is missing, empty, or a render of ours holding nothing else."""
    if not root.exists() and not root.is_symlink():
        return
    if root.is_symlink() or not root.is_dir():
        raise NotSynthetic(
            f"{root} is not a folder the synthetic renderer made; it was left as it is. Render into a "
            "folder that does not exist yet (data.root=<new folder>)"
        )
    if next(root.iterdir(), None) is None:
        return
    if marker_state(root) is None:
        kind = (
            "an ImageFolder of your own photos: train on it with data=noodles data.root=" + str(root)
            if looks_like_image_folder(root)
            else (
                "neither an ImageFolder (train/<class>/*.jpg, optional val/<class>/*.jpg, test/<class>/*.jpg "
                "or test/unknown/*.jpg) nor a synthetic noodle render"
            )
        )
        raise NotSynthetic(
            f"{root} holds files that the synthetic renderer did not write (it has no {MARKER}); nothing "
            f"in it was changed. It is {kind}. To render the synthetic noodles, pick a data.root that does "
            "not exist yet"
        )
    foreign = _foreign_files(root)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise NotSynthetic(
            f"{root} is a synthetic noodle render ({MARKER}) but also holds files the renderer did not "
            f"write ({shown}); nothing in it was changed. Move those files elsewhere, or render into a "
            "data.root that does not exist yet"
        )


def clean_interrupted_renders(root: str | Path) -> list[Path]:
    """Remove what killed renders of `root` left beside it: `.<name>.*.partial` folders whose
    RENDERING marker names a writer that no longer runs (and empty ones), and `.<name>.*.old` folders (a
    render being replaced) that carry the marker. Anything else is left alone. Returns what was removed."""
    root = Path(root)
    removed: list[Path] = []
    if not root.parent.is_dir():
        return removed
    for path in sorted(root.parent.glob(f".{glob.escape(root.name)}.*.partial")):
        if not path.is_dir() or path.is_symlink():
            continue
        if is_empty_dir(path):  # killed before its marker: nothing to lose (rmdir removes only empty ones)
            with contextlib.suppress(OSError):
                path.rmdir()
                removed.append(path)
            continue
        try:
            stamp = json.loads((path / RENDERING).read_text())["writer"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not provably ours (no marker): left alone
        if not stamp_alive(stamp) and not _foreign_files(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    for path in sorted(root.parent.glob(f".{glob.escape(root.name)}.*.old")):
        if path.is_dir() and not path.is_symlink() and marker_state(path) and not _foreign_files(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def render_dataset(
    root: str | Path = "data/synthetic_noodles",
    images_per_class: int = 300,
    image_size: int = 128,
    seed: int = 0,
    val_fraction: float = 0.0,
    test_fraction: float = 0.2,
    overwrite: bool = False,
    dishes: str = "by_class",
) -> Path:
    """Render (or reuse, if already complete with the same parameters) an ImageFolder tree under `root`.

    root/<split>/<class>/<stem>_<index>.jpg are the photos (`image_size` px square, JPEG quality 90);
    root/masks/<split>/<class>/<stem>_<index>.png their evidence masks (see `mask_path`, `load_mask`).
    dishes: "by_class" or "any" (see the module docstring).

    A `root` that exists is replaced only when it is empty or carries the marker (SYNTHETIC.json, whole or
    cut short) and holds nothing but what the renderer writes; anything else raises NotSynthetic and is
    left as it is. The render goes to a sibling `.partial` folder (with a RENDERING marker naming this
    process) that is renamed into place when complete; leftovers of killed renders are cleaned first.
    """
    root = Path(root).expanduser()
    meta = _metadata(images_per_class, image_size, seed, val_fraction, test_fraction, dishes)
    counts = {split: per_class[CLASS_NAMES[0]] for split, per_class in meta["counts"].items()}
    if not overwrite and _read_marker(root) == meta:
        return root
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    clean_interrupted_renders(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    try:
        (tmp / RENDERING).write_text(json.dumps({"writer": process_stamp(), "meta": meta}) + "\n")
        os.chmod(tmp, 0o755)
        for c, cls in enumerate(CLASS_NAMES):
            start, stem = 0, cls.split("_", 1)[1]
            for split, k in counts.items():
                (tmp / split / cls).mkdir(parents=True)
                (tmp / MASKS / split / cls).mkdir(parents=True)
                for i in range(start, start + k):  # global index: file names stay unique across splits
                    out = tmp / split / cls / f"{stem}_{i:05d}.jpg"
                    photo, mask = _render(c, i, seed, image_size, dishes)
                    photo.save(out, quality=90)
                    mask.save(mask_path(tmp, out))
                start += k
        (tmp / RENDERING).unlink()
        (tmp / MARKER).write_text(json.dumps(meta, indent=2) + "\n")  # written last = completeness marker
        _move_into_place(tmp, root, None if overwrite else meta)
    finally:
        if tmp.is_dir():  # ours: this process made it and rendered into it
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _move_into_place(tmp: Path, root: Path, meta: dict | None) -> None:
    """Rename the finished render `tmp` to `root`: straight over a missing or empty root; an old render is
    first renamed aside (`.<name>.<id>.old`) and removed once the new one is in place. meta: a render of
    these parameters that another process put there meanwhile is kept (None: replaced too)."""
    aside = []
    for _ in range(3):
        try:
            os.rename(tmp, root)  # fails on a non-empty root (ENOTEMPTY/EEXIST) instead of replacing it
            break
        except OSError:
            if meta is not None and _read_marker(root) == meta:
                break  # a concurrent render of the same dataset finished first; keep theirs
            _check_replaceable(root)  # checked again: it may have changed while this one rendered
            old = root.parent / f".{root.name}.{uuid.uuid4().hex[:8]}.old"
            with contextlib.suppress(FileNotFoundError):
                os.rename(root, old)
                aside.append(old)
    else:
        raise OSError(f"could not move the new render into {root}: another process keeps replacing it")
    for old in aside:  # renders of ours, checked before they were moved aside
        shutil.rmtree(old, ignore_errors=True)


def mask_path(root: str | Path, image_path: str | Path) -> Path:
    """The evidence mask of a photo of the dataset at `root`: root/masks/<split>/<class>/<stem>.png.

    image_path: the photo, absolute or relative to `root` (root/<split>/<class>/<stem>.jpg).
    """
    root, image_path = Path(root), Path(image_path)
    if image_path.is_relative_to(root):
        rel = image_path.relative_to(root)
    elif image_path.is_absolute() and image_path.resolve().is_relative_to(root.resolve()):
        rel = image_path.resolve().relative_to(root.resolve())  # e.g. a relative root, an absolute photo
    else:
        rel = image_path
    if len(rel.parts) != 3 or rel.parts[0] not in _SPLITS:
        raise ValueError(f"{image_path} is not a photo <split>/<class>/<file> of the dataset at {root}")
    return root / MASKS / rel.with_suffix(".png")


def load_mask(path: str | Path, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """A mask file as a boolean array (H, W): True where the class evidence is (pixel value >= 128).

    size: a side or (width, height) in px to resize to first, e.g. the model's input size (as the eval
    transform resizes the photo); a box filter averages, so a pixel is evidence when at least half of what
    it covers is. None keeps the file's size.
    """
    with Image.open(path) as im:
        im = im.convert("L")
        if size is not None:
            wh = (size, size) if isinstance(size, int) else tuple(size)
            if im.size != wh:
                im = im.resize(wh, Image.Resampling.BOX)
        return np.asarray(im) >= 128


def main(argv: list[str] | None = None) -> None:
    """CLI: render the synthetic dataset."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", default="data/synthetic_noodles")
    p.add_argument("--images-per-class", type=int, default=300)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.0)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--dishes", choices=DISHES, default="by_class", help="each class on its own dish, or any")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="render again over a complete render (only ever a folder with this module's SYNTHETIC.json)",
    )
    a = p.parse_args(argv)
    params = (a.images_per_class, a.image_size, a.seed, a.val_fraction, a.test_fraction)
    meta = _metadata(*params, a.dishes)
    reused = not a.overwrite and _read_marker(Path(a.root)) == meta
    t0 = time.perf_counter()
    try:
        root = render_dataset(a.root, *params, overwrite=a.overwrite, dishes=a.dishes)
    except NotSynthetic as e:
        p.exit(2, f"error: {e}\n")
    done = "already complete at" if reused else f"wrote in {time.perf_counter() - t0:.1f}s to"
    print(f"synthetic noodles {done} {root.resolve()}")
    for split, per_class in meta["counts"].items():
        print(f"  {split}: " + ", ".join(f"{c}={k}" for c, k in per_class.items()))


if __name__ == "__main__":
    main()

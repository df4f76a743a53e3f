"""Procedural noodle "photos" (spaghetti / ramen / udon): embedded default data, no download needed."""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASS_NAMES: tuple[str, ...] = ("0_spaghetti", "1_ramen", "2_udon")
GENERATOR_VERSION = 1  # bump whenever rendering changes: stale datasets then re-render
MARKER = "SYNTHETIC.json"
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
    draw: ImageDraw.ImageDraw,
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


def _onions(draw: ImageDraw.ImageDraw, rng: np.random.Generator, c: Pt, r: Pt, sz: float) -> None:
    for _ in range(rng.integers(8, 22)):
        t, d = rng.uniform(0, 2 * np.pi), math.sqrt(rng.uniform(0, 1))
        x, y, q = c[0] + r[0] * d * math.cos(t), c[1] + r[1] * d * math.sin(t), sz * rng.uniform(0.7, 1.3)
        draw.ellipse((x - q, y - q, x + q, y + q), fill=_col(rng, (90, 170, 60), 15))
        draw.ellipse((x - q / 2, y - q / 2, x + q / 2, y + q / 2), fill=_col(rng, (190, 225, 150), 10))


def _render_image(class_idx: int, index: int, seed: int, size: int) -> Image.Image:
    """Render one image; depends only on (seed, class, index) so order/parallelism never matters."""
    rng = np.random.default_rng([seed, class_idx, index])
    s = size * _SS
    u = s / 256  # geometry unit: 1 at 128 px output (sizes below were tuned there)

    cx, cy = s * (0.5 + rng.uniform(-0.15, 0.15)), s * (0.5 + rng.uniform(-0.15, 0.15))
    rx = s * rng.uniform(0.25, 0.45)
    ry = rx * rng.uniform(0.8, 1.0)  # mild perspective squash
    y, x = _grid(size)  # smooth table + shadow need no supersampling: build at output size, upscale
    bg = _background(rng, x, y)
    sx, sy = (x - (cx + 0.04 * rx) / s) * (s / 1.05 / rx), (y - (cy + 0.08 * ry) / s) * (s / 1.05 / ry)
    sh = sx * sx + sy * sy
    bg *= (1 - 0.35 * np.clip((1.25 - sh) / 0.5, 0, 1))[..., None]  # soft drop shadow under the dish
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8)).resize((s, s), Image.Resampling.BILINEAR)
    d = ImageDraw.Draw(img)

    def ell(f: float, fill: tuple[int, ...], dx: float = 0.0, dy: float = 0.0) -> None:
        d.ellipse((cx + dx - f * rx, cy + dy - f * ry, cx + dx + f * rx, cy + dy + f * ry), fill=fill)

    if class_idx == 0:  # plate: flat, light, with a shallow well
        plate = _col(rng, (240, 240, 235) if rng.random() < 0.7 else (200, 215, 230), 8)
        ell(1.0, plate)
        ell(0.72, tuple(int(v * 0.93) for v in plate))
        food = (0.6 * rx, 0.6 * ry)
    else:  # bowl: coloured outside, rim, broth surface
        bowl = _col(rng, [(235, 235, 230), (30, 30, 32), (150, 40, 35), (40, 60, 110)][rng.integers(4)], 10)
        ell(1.0, bowl)
        ell(0.9, tuple(min(255, int(v * 1.15 + 15)) for v in bowl))
        broth = _col(rng, (165, 100, 45) if class_idx == 1 else (228, 198, 140), 12)
        ell(0.84, broth, dy=0.02 * ry)
        if class_idx == 1:  # fat droplets on tonkotsu/shoyu broth
            for _ in range(rng.integers(5, 15)):
                t, q, rd = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 0.8), rng.uniform(1.5, 4) * u
                ox, oy = cx + q * rx * math.cos(t), cy + q * ry * math.sin(t)
                d.ellipse((ox - rd, oy - rd, ox + rd, oy + rd), fill=_col(rng, (200, 140, 60), 10))
        food = (0.72 * rx, 0.72 * ry)
    fc: Pt = (cx, cy)

    # Noodle style per class: (base colour, width @128px, #strands, steps, step len, turn sd, curl, crinkle)
    b = rng.uniform(0.85, 1.1)  # per-image brightness jitter of the noodles
    if class_idx == 0:
        base, wid, ns = (235, 205, 125), rng.uniform(1, 2), rng.integers(30, 45)
        steps, step, tsd, curl, crk = rng.integers(35, 60), 4 * u, 0.35, 0.12, 0.0
    elif class_idx == 1:
        base, wid, ns = (228, 185, 70), rng.uniform(2, 3), rng.integers(22, 32)
        steps, step, tsd, curl, crk = rng.integers(25, 40), 4 * u, 0.12, 0.0, 1.2 * u
    else:
        base, wid, ns = (246, 238, 212), rng.uniform(4, 7), rng.integers(12, 18)
        steps, step, tsd, curl, crk = rng.integers(16, 26), 8 * u, 0.06, 0.0, 0.0
    base = tuple(v * b for v in base)
    w = max(1, round(wid * s / 128))  # `wid` is in output px at 128 px
    lead = rng.uniform(0, 2 * np.pi)  # ramen/udon strands loosely share a direction, spaghetti is a tangle
    if class_idx == 0:
        a0, cv = rng.uniform(0, 2 * np.pi, ns), curl * rng.uniform(0.5, 1.5, ns) * rng.choice([-1, 1], ns)
    else:
        a0, cv = lead + rng.normal(0, 0.5, ns), rng.normal(0, 0.05 if class_idx == 1 else 0.12, ns)
    strands = _strands(rng, fc, food, int(steps), step, tsd, cv, a0, crk)

    def draw_strands(group: list[list[Pt]]) -> None:
        for pts in group:
            col = _col(rng, base, 6)
            for fill, lw in ((tuple(int(v * 0.72) for v in col), w + max(1, round(u))), (col, w)):
                d.line(pts, fill=fill, width=lw)
                if lw >= 8:  # round joints: wide segments otherwise show notches (cheaper than joint="curve")
                    r = lw / 2 - 0.5
                    for x, y in pts:
                        d.ellipse((x - r, y - r, x + r, y + r), fill=fill)
            if w >= 6:  # glossy highlight makes thick strands read as round noodles, not flat ribbons
                d.line(pts, fill=tuple(min(255, v + 22) for v in col), width=w // 3)

    if class_idx == 0:
        split = int(len(strands) * 0.7)
        draw_strands(strands[:split])
        if rng.random() < 0.9:  # tomato sauce, then a few strands on top so it sits *in* the pasta
            for _ in range(rng.integers(1, 3)):
                sx, sy = cx + rng.normal(0, 0.15) * rx, cy + rng.normal(0, 0.15) * ry
                _blob(d, rng, sx, sy, rx * rng.uniform(0.2, 0.32), _col(rng, (200, 55, 30), 12))
                if rng.random() < 0.5:  # meat crumbs
                    for _ in range(rng.integers(8, 20)):
                        mx, my = sx + rng.normal(0, 0.12) * rx, sy + rng.normal(0, 0.12) * ry
                        q = rng.uniform(2, 4) * u
                        d.ellipse((mx - q, my - q, mx + q, my + q), fill=_col(rng, (110, 60, 35), 12))
        draw_strands(strands[split:])
        if rng.random() < 0.4:  # basil leaf
            lx, ly = cx + rng.normal(0, 0.2) * rx, cy + rng.normal(0, 0.2) * ry
            la, ll = rng.uniform(0, 2 * np.pi), 0.18 * rx
            t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            px, py = ll * np.cos(t), 0.45 * ll * np.sin(t) * (1 - 0.6 * np.abs(np.cos(t)))  # pointed ends
            ca, sa = math.cos(la), math.sin(la)
            leaf = zip((lx + ca * px - sa * py).tolist(), (ly + sa * px + ca * py).tolist(), strict=True)
            d.polygon(list(leaf), fill=_col(rng, (55, 130, 45), 12))
        return _finish(img, rng, size)

    draw_strands(strands)
    tops = [k for k in range(5) if rng.random() < 0.5] or [int(rng.integers(5))]
    slots = rng.permutation(8)  # spread toppings around the bowl at distinct angles
    for j, kind in enumerate(tops):
        t, q = slots[j] * np.pi / 4 + rng.normal(0, 0.2), rng.uniform(0.35, 0.6)
        tx, ty, r = cx + q * rx * math.cos(t), cy + q * ry * math.sin(t), rx
        if class_idx == 1 and kind == 0:  # halved soft-boiled egg
            d.polygon(_poly_ellipse(tx, ty, 0.2 * r, 0.15 * r, t), fill=_col(rng, (245, 242, 230), 6))
            d.polygon(_poly_ellipse(tx, ty, 0.11 * r, 0.08 * r, t), fill=_col(rng, (240, 145, 30), 12))
        elif class_idx == 1 and kind == 1:  # naruto: white disc, pink swirl
            rn = 0.14 * r
            d.ellipse((tx - rn, ty - rn, tx + rn, ty + rn), fill=_col(rng, (248, 245, 240), 5))
            sp = np.linspace(0, 4 * np.pi, 40)
            rs = 0.8 * rn * sp / sp[-1]
            swirl = zip((tx + rs * np.cos(sp)).tolist(), (ty + rs * np.sin(sp)).tolist(), strict=True)
            d.line(list(swirl), fill=_col(rng, (230, 90, 140), 10), width=max(1, round(1.5 * u)))
        elif class_idx == 1 and kind == 2:  # chashu pork slice
            rc = 0.2 * r
            d.ellipse((tx - rc, ty - rc, tx + rc, ty + rc), fill=_col(rng, (115, 65, 40), 10))
            rc *= 0.8  # lighter meat inside a darker rind
            d.ellipse((tx - rc, ty - rc, tx + rc, ty + rc), fill=_col(rng, (170, 110, 75), 10))
        elif class_idx == 1 and kind == 3:  # nori sheet
            d.polygon(_poly_ellipse(tx, ty, 0.25 * r, 0.35 * r, t, n=4), fill=_col(rng, (25, 45, 30), 6))
        elif class_idx == 2 and kind in (0, 1):  # tempura: golden bumpy blob with crunchy specks
            _blob(d, rng, tx, ty, 0.25 * r, _col(rng, (215, 165, 70), 10), n=9)
            for _ in range(12):
                mx, my, m = tx + rng.normal(0, 0.1) * r, ty + rng.normal(0, 0.1) * r, rng.uniform(1.5, 3) * u
                d.ellipse((mx - m, my - m, mx + m, my + m), fill=_col(rng, (175, 115, 40), 12))
        elif class_idx == 2 and kind == 2:  # kamaboko: pink-edged fish-cake slice
            rk = 0.15 * r
            d.polygon(_poly_ellipse(tx, ty, rk, 0.7 * rk, t), fill=_col(rng, (235, 110, 145), 10))
            inner = _poly_ellipse(tx + 0.15 * rk, ty + 0.15 * rk, 0.85 * rk, 0.55 * rk, t)
            d.polygon(inner, fill=(246, 242, 236))
        else:  # green onions (both soups)
            _onions(d, rng, (tx, ty), (0.25 * rx, 0.25 * ry), 2.5 * u)
    return _finish(img, rng, size)


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
    images_per_class: int, image_size: int, seed: int, val_fraction: float, test_fraction: float
) -> dict:
    """The SYNTHETIC.json content for these parameters (validates them)."""
    if seed < 0 or image_size < 16:
        raise ValueError("seed must be >= 0 and image_size >= 16")
    counts = _split_counts(images_per_class, val_fraction, test_fraction)
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "images_per_class": images_per_class,
        "image_size": image_size,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "classes": list(CLASS_NAMES),
        "counts": {split: dict.fromkeys(CLASS_NAMES, k) for split, k in counts.items()},
    }


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def render_dataset(
    root: str | Path = "data/synthetic_noodles",
    images_per_class: int = 300,
    image_size: int = 128,
    seed: int = 0,
    val_fraction: float = 0.0,
    test_fraction: float = 0.2,
    overwrite: bool = False,
) -> Path:
    """Render (or reuse, if already complete with the same parameters) an ImageFolder tree under `root`."""
    root = Path(root)
    meta = _metadata(images_per_class, image_size, seed, val_fraction, test_fraction)
    counts = {split: per_class[CLASS_NAMES[0]] for split, per_class in meta["counts"].items()}
    if not overwrite and _read_marker(root) == meta:
        return root
    if root.exists() and (root.is_file() or any(p.name not in (*_SPLITS, MARKER) for p in root.iterdir())):
        # refuse to delete a directory that does not look like one of ours
        raise FileExistsError(f"{root} is not a synthetic noodle dataset; remove it or pick another root")
    root.parent.mkdir(parents=True, exist_ok=True)
    # render into a sibling temp dir and rename it into place: an interrupted run never looks complete
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    try:
        os.chmod(tmp, 0o755)
        for c, cls in enumerate(CLASS_NAMES):
            start, stem = 0, cls.split("_", 1)[1]
            for split, k in counts.items():
                (tmp / split / cls).mkdir(parents=True)
                for i in range(start, start + k):  # global index: file names stay unique across splits
                    out = tmp / split / cls / f"{stem}_{i:05d}.jpg"
                    _render_image(c, i, seed, image_size).save(out, quality=90)
                start += k
        (tmp / MARKER).write_text(json.dumps(meta, indent=2) + "\n")  # written last = completeness marker
        if root.exists():
            shutil.rmtree(root)
        try:
            os.replace(tmp, root)
        except OSError:
            if _read_marker(root) != meta:
                raise
            # a concurrent process finished the same dataset first; keep theirs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def main(argv: list[str] | None = None) -> None:
    """CLI: render the synthetic dataset."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", default="data/synthetic_noodles")
    p.add_argument("--images-per-class", type=int, default=300)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.0)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    params = (a.images_per_class, a.image_size, a.seed, a.val_fraction, a.test_fraction)
    meta = _metadata(*params)
    reused = not a.overwrite and _read_marker(Path(a.root)) == meta
    t0 = time.perf_counter()
    root = render_dataset(a.root, *params, overwrite=a.overwrite)
    done = "already complete at" if reused else f"wrote in {time.perf_counter() - t0:.1f}s to"
    print(f"synthetic noodles {done} {root.resolve()}")
    for split, per_class in meta["counts"].items():
        print(f"  {split}: " + ", ".join(f"{c}={k}" for c, k in per_class.items()))


if __name__ == "__main__":
    main()

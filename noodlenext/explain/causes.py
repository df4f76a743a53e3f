"""What made the model decide, found by changing the photo and rerunning the classifier.

A heatmap says where the network's features are active; it does not say what the prediction rests on,
and at a small input it cannot even point at a corner (ConvNeXt's last stage is 2x2 at 64 px). Changing
the photo can: a tag in a corner is found by hiding the corner, a colour cast by taking the colour away.

- `occlusion_scan`: the photo hidden one square at a time (a quarter of the side, on a 7x7 grid of
  places, finer than the 3x3 region words; filled in from its surroundings, `hidden`):
  the square whose hiding moves the predicted class most is the `CausalRegion`, with what it looks like,
  the colours of it that the true class's training photos rarely show, and how much of the map's heat
  lies in it.
- `whole_photo_changes`: the prediction under changes of the whole photo that a shortcut would survive
  in no other way (`WHOLE_PHOTO_CHANGES`): grayscale, a quarter of the resolution, JPEG re-compression,
  a warmer and a cooler tint, a mirror, the border cropped, the surroundings (outside a central circle)
  hidden.

Both are plain forward passes in eval mode without gradients: 49 squares and 4 edge strips, 8 changes
and one per colour on at least 15% of the photo.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from noodlenext.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from noodlenext.explain.appearance import COLOURS, MIN_COLOUR_SHARE, colour_bins, colour_names
from noodlenext.explain.base import eval_mode
from noodlenext.explain.evidence import CausalRegion, GlobalChange
from noodlenext.explain.facts import REGIONS
from noodlenext.explain.layers import unwrap

__all__ = [
    "RARE_BIN",
    "hidden",
    "hide_box",
    "STEPS",
    "WHOLE_PHOTO_CHANGES",
    "WINDOW",
    "contrast_part",
    "normalisation",
    "occlusion_scan",
    "whole_photo_changes",
]

# The hidden square's side, as a share of the photo's side, and how many places per axis it takes.
WINDOW = 0.25
STEPS = 7
# A colour bin (appearance.colour_bins) is rare for a class when it holds less than this share of the
# pixels of the class's training photos; a colour of the causal square is unusual when at least
# appearance.MIN_COLOUR_SHARE of the square is of that colour in rare bins.
RARE_BIN = 0.001
# What a warmer (cooler) tint multiplies red, green and blue by: about 2000 K of white balance.
WARM_GAINS = (1.15, 1.0, 0.75)
COOL_GAINS = (0.8, 1.0, 1.25)
JPEG_QUALITY = 10
SCALE = 4  # the lower resolution: a quarter of the side
BORDER = 0.12  # the share of each side the border crop takes away
# Parts whose drop of the predicted class (mistakes beyond reference) is within this of the largest are
# as good: the smallest of them is named (a corner square rather than the strip that holds it).
DROP_TOLERANCE = 0.1
CENTRE = 0.35  # the radius of the central circle kept when the surroundings are hidden, of the side

Batch = Callable[[Tensor, Tensor, Tensor], Tensor]  # (rgb 0..1, mean, std) -> rgb 0..1


def normalisation(model: nn.Module) -> tuple[Tensor, Tensor]:
    """The mean and std (3,) the model's inputs are normalised with: a NoodleClassifier's own, else
    ImageNet's (what timm's ConvNeXt and ViT expect)."""
    hp = getattr(model, "hparams", None)
    mean = getattr(hp, "mean", None) if hp is not None else None
    std = getattr(hp, "std", None) if hp is not None else None
    if mean is None or std is None:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return torch.tensor(list(mean), dtype=torch.float32), torch.tensor(list(std), dtype=torch.float32)


def _grayscale(rgb: Tensor) -> Tensor:
    luma = (rgb * torch.tensor([0.299, 0.587, 0.114], device=rgb.device)[:, None, None]).sum(0, keepdim=True)
    return luma.expand_as(rgb)


def _quarter_resolution(rgb: Tensor) -> Tensor:
    h, w = rgb.shape[-2:]
    small = F.interpolate(rgb[None], size=(max(1, h // SCALE), max(1, w // SCALE)), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]


def _jpeg(rgb: Tensor) -> Tensor:
    array = (rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=JPEG_QUALITY)
    back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(back).permute(2, 0, 1).to(rgb.device)


def _tint(gains: tuple[float, float, float]) -> Callable[[Tensor], Tensor]:
    def tint(rgb: Tensor) -> Tensor:
        return (rgb * torch.tensor(gains, device=rgb.device)[:, None, None]).clamp(0, 1)

    return tint


def _border_crop(rgb: Tensor) -> Tensor:
    h, w = rgb.shape[-2:]
    dy, dx = round(BORDER * h), round(BORDER * w)
    inner = rgb[:, dy : h - dy, dx : w - dx]
    return F.interpolate(inner[None], size=(h, w), mode="bilinear", align_corners=False)[0]


def _surroundings(rgb: Tensor) -> Tensor:
    """Everything outside a central circle (radius CENTRE of the side) hidden with ImageNet's mean colour
    (the occlusion's fill for a model normalised with it): where a dish photo's background, table and
    corners are."""
    h, w = rgb.shape[-2:]
    y = (torch.arange(h, device=rgb.device, dtype=torch.float32) + 0.5) / h - 0.5
    x = (torch.arange(w, device=rgb.device, dtype=torch.float32) + 0.5) / w - 0.5
    outside = (y[:, None] ** 2 + x[None, :] ** 2) > CENTRE**2
    fill = torch.tensor(IMAGENET_MEAN, device=rgb.device)[:, None, None].expand_as(rgb)
    return torch.where(outside, fill, rgb)


# The share of the photo's pixels each change touches (GlobalChange.area; a removed colour: its share).
AREAS = {"border_crop": 1 - (1 - 2 * BORDER) ** 2, "surroundings": 1 - math.pi * CENTRE**2}

# The colours a removal takes out, by index in appearance.COLOURS: the chromatic ones (turning white, grey
# or black to grey changes nothing a reader could name).
REMOVABLE = [i for i, name in enumerate(COLOURS) if name not in ("white", "grey", "black")]

# The one number of a change that has one, as GlobalChange.setting.
SETTINGS = {"jpeg": float(JPEG_QUALITY), "border_crop": BORDER, "quarter_resolution": 1 / SCALE}

# Each change of the whole photo, on one RGB image (3, H, W) in 0..1.
WHOLE_PHOTO_CHANGES: dict[str, Callable[[Tensor], Tensor]] = {
    "grayscale": _grayscale,
    "quarter_resolution": _quarter_resolution,
    "jpeg": _jpeg,
    "warmer": _tint(WARM_GAINS),
    "cooler": _tint(COOL_GAINS),
    "mirror": lambda rgb: rgb.flip(-1),
    "border_crop": _border_crop,
    "surroundings": _surroundings,
}


def _device(net: nn.Module, fallback: torch.device) -> torch.device:
    param = next(net.parameters(), None)
    return param.device if param is not None else fallback


def _probabilities(net: nn.Module, x: Tensor, temperature: float, batch: int = 64) -> np.ndarray:
    out = []
    with eval_mode(net), torch.inference_mode():
        for i in range(0, len(x), batch):
            out.append((net(x[i : i + batch]).float() / temperature).softmax(-1).cpu())
    return torch.cat(out).numpy().astype(np.float64)


def _boxes(h: int, w: int) -> list[tuple[int, int, int, int]]:
    """The hidden squares in pixels (top, left, bottom, right): WINDOW of each side, STEPS places per axis
    from edge to edge."""
    sh, sw = max(1, round(WINDOW * h)), max(1, round(WINDOW * w))
    tops = np.linspace(0, h - sh, STEPS).round().astype(int)
    lefts = np.linspace(0, w - sw, STEPS).round().astype(int)
    return [
        (int(t), int(lf), int(t) + sh, int(lf) + sw)
        for t in dict.fromkeys(tops)
        for lf in dict.fromkeys(lefts)
    ]


def _strips(h: int, w: int) -> list[tuple[tuple[int, int, int, int], str]]:
    """The four edge strips (WINDOW of the side deep, the whole width or height), in pixels, with their
    names: where a caption, a watermark or a border runs along the photo."""
    sh, sw = max(1, round(WINDOW * h)), max(1, round(WINDOW * w))
    return [
        ((0, 0, sh, w), "top strip"),
        ((h - sh, 0, h, w), "bottom strip"),
        ((0, 0, h, sw), "left strip"),
        ((0, w - sw, h, w), "right strip"),
    ]


def _region(box: tuple[int, int, int, int], h: int, w: int) -> str:
    """The 3x3 region word of the square's centre."""
    cy, cx = (box[0] + box[2]) / 2 / h, (box[1] + box[3]) / 2 / w
    return REGIONS[min(2, int(cy * 3)) * 3 + min(2, int(cx * 3))]


def _unusual(
    square: np.ndarray, training: np.ndarray | None
) -> tuple[tuple[str, ...], tuple[tuple[str, float], ...]]:
    """The square's colour names (at least MIN_COLOUR_SHARE of its pixels, most first; the most common
    always), and those of them that are unusual: at least MIN_COLOUR_SHARE of the square's pixels are of
    that name and in colour bins (`appearance.colour_bins`) that hold less than RARE_BIN of the true
    class's training pixels (`training`: their mean histogram). Each unusual name comes with the share of
    the training pixels in those bins."""
    pixels = square.reshape(-1, 3)
    names = list(COLOURS)
    index = colour_names(pixels)
    shares = np.bincount(index, minlength=len(names)) / max(1, len(index))
    order = [i for i in np.argsort(-shares, kind="stable") if shares[i] >= MIN_COLOUR_SHARE][:3]
    colours = tuple(names[i] for i in order) or (names[int(shares.argmax())],)
    if training is None or len(index) == 0:
        return colours, ()
    bins = colour_bins(pixels)
    rare = training[bins] < RARE_BIN
    out = []
    for i in np.argsort(-np.bincount(index[rare], minlength=len(names)), kind="stable"):
        mine = rare & (index == i)
        if mine.mean() < MIN_COLOUR_SHARE:
            break
        out.append((names[i], float(training[np.unique(bins[mine])].sum())))
    return colours, tuple(out[:2])


def occlusion_scan(
    model: nn.Module,
    images: Tensor,
    photos: Sequence[np.ndarray],
    predicted: Sequence[int],
    truths: Sequence[int | None],
    class_names: Sequence[str],
    *,
    cams: np.ndarray | None = None,
    method: str | None = None,
    training_colours: dict[str, np.ndarray] | None = None,
    temperature: float = 1.0,
) -> list[CausalRegion]:
    """Per image, the part whose hiding (filled in from its surroundings, `hidden`) matters most: the square
    that moves the predicted class's probability most (ties: the earlier place, top left first), unless
    it leaves the prediction as it was and hiding one of the four edge strips (a quarter of the photo
    deep, along a whole side) changes it: then the strip that does (the one that moves it most). The
    smallest part that changes the prediction is the one named.

    images: (B, 3, H, W) as the model takes them; photos: the same as (H, W, 3) uint8 RGB; predicted and
    truths: class indices (None: not known); cams: (B, H, W) maps of the predicted class (of `method`),
    for the share of heat in the square; training_colours: per class name, the mean colour histogram of
    its training photos (`FeatureIndex.class_colours`), for the square's unusual colours; temperature: the
    model's calibration.
    """
    net = unwrap(model)
    b, _, h, w = images.shape
    squares = _boxes(h, w)
    strips = _strips(h, w)
    boxes = squares + [box for box, _ in strips]
    out = []
    for i, probs in enumerate(_part_probabilities(net, images, boxes, temperature)):
        p, truth = int(predicted[i]), truths[i]
        drops = probs[0, p] - probs[1:, p]
        flips = probs[1:].argmax(1) != p
        j = int(np.argmax(drops[: len(squares)]))  # the square that matters most
        if not flips[j] and flips[len(squares) :].any():  # no square flips it, but an edge strip does
            k = np.flatnonzero(flips[len(squares) :])
            j = len(squares) + int(k[np.argmax(drops[len(squares) + k])])
        t, lf, bt, rt = boxes[j]
        after = probs[1 + j]
        strip = strips[j - len(squares)][1] if j >= len(squares) else None
        heat = None
        if cams is not None:
            cam = np.clip(np.nan_to_num(np.asarray(cams[i], dtype=np.float64)), 0, None)
            total = cam.sum()
            heat = float(cam[t:bt, lf:rt].sum() / total) if total > 0 else 0.0
        truth_name = class_names[truth] if truth is not None else None
        training = training_colours.get(truth_name) if training_colours and truth_name else None
        colours, unusual = _unusual(np.asarray(photos[i])[t:bt, lf:rt, :3], training)
        out.append(
            CausalRegion(
                region=_region(boxes[j], h, w) if strip is None else strip,
                box=(t / h, lf / w, bt / h, rt / w),
                **_outcome(probs[0], after, p, truth, class_names),
                truth_before=float(probs[0, truth]) if truth is not None else None,
                colours=colours,
                unusual=unusual,
                heat=heat,
                map=method if heat is not None else None,
                places=len(squares),
                strips=len(strips),
            )
        )
    return out


def _blur(x: Tensor, sigma: float) -> Tensor:
    """A separable Gaussian blur with zero padding (what lies outside the photo weighs nothing)."""
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, device=x.device, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, r), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(r, 0), groups=c)


def hidden(image: Tensor, boxes: Sequence[tuple[int, int, int, int]]) -> Tensor:
    """The image (3, H, W), and a copy with each box (pixels: top, left, bottom, right) hidden: (1 + boxes,
    3, H, W). A box is filled in from its surroundings (normalised convolution: a Gaussian-weighted mean of
    the pixels around it, sigma half the box's shorter side), so a hidden corner looks like the table next
    to it. The mean colour (the trust check's way to hide pixels) leaves a grey square or a grey band,
    which a model that learned a tag in the corner or a caption along the bottom takes for one: on
    bench/shortcuts.py, hiding the tag's corner that way turned at most 1 of 8 mistakes back, filled in all 8
    (docs/shortcuts.md)."""
    x = image[None].float()
    _, _, h, w = x.shape
    keep = torch.ones(len(boxes), 1, h, w, device=x.device)
    for j, (t, lf, bt, rt) in enumerate(boxes):
        keep[j, :, t:bt, lf:rt] = 0.0
    edited = x.repeat(len(boxes), 1, 1, 1)
    sigmas = [max(1.0, min(bt - t, rt - lf) / 2) for t, lf, bt, rt in boxes]
    for sigma in dict.fromkeys(sigmas):  # one blur per size of box: all of them in one batch
        rows = [j for j, s in enumerate(sigmas) if s == sigma]
        m = keep[rows]
        both = torch.cat([x * m, m], 1)  # (n, 4, H, W): the kept pixels, and their weight
        f = max(1, int(sigma // 2))  # the fill is smooth: blurred at 1/f of the side, then scaled back up
        if f > 1 and h % f == 0 and w % f == 0:
            small = _blur(F.avg_pool2d(both, f), sigma / f)
            both = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
        else:
            both = _blur(both, sigma)
        fill = both[:, :3] / both[:, 3:].clamp_min(1e-6)
        edited[rows] = x * m + fill * (1 - m)
    return torch.cat([x, edited])


def _part_probabilities(
    net: nn.Module, images: Tensor, boxes: Sequence[tuple[int, int, int, int]], temperature: float
) -> list[np.ndarray]:
    """Per image, the class probabilities untouched (row 0) and with each box hidden (rows 1..)."""
    x = images.to(_device(net, images.device), torch.float32)
    return [_probabilities(net, hidden(x[i], boxes), temperature) for i in range(len(x))]


def contrast_part(
    model: nn.Module,
    mistakes: Tensor,
    predicted: int,
    truth: int,
    reference: Tensor,
    *,
    temperature: float = 1.0,
) -> tuple[tuple[float, float, float, float], str] | None:
    """The part of a group's photos whose hiding (each square and edge strip of `occlusion_scan`, in
    every photo) turns the most of its `mistakes` (taken for `predicted`, truly `truth`) back to the
    true class, beyond the share of the `reference` photos (of `predicted`, got right) it turns into
    that class: a part that any photo of the class needs (the food) is no cause of these mistakes, a
    tag that only the mistakes lean on is. Of the parts that tie, the one whose hiding drops the
    predicted class most in the mistakes beyond its drop in the reference: a mistake that is one by a
    hair flips when any bit of it is hidden, which says nothing of its cause. The smallest part within
    DROP_TOLERANCE of that drop is named (then the larger drop, then the earlier place). As (box as
    shares of the side: top, left, bottom, right; its name: a region word or a strip's); None when
    hiding no part turns any mistake back, or there are no mistakes."""
    if len(mistakes) == 0:
        return None
    net = unwrap(model)
    h, w = mistakes.shape[-2:]
    strips = _strips(h, w)
    boxes = _boxes(h, w) + [box for box, _ in strips]
    names = [_region(box, h, w) for box in boxes[: -len(strips)]] + [name for _, name in strips]

    def rates(images: Tensor) -> tuple[np.ndarray, np.ndarray]:
        if len(images) == 0:
            return np.zeros(len(boxes)), np.zeros(len(boxes))
        probs = np.stack(_part_probabilities(net, images, boxes, temperature))  # (B, 1 + P, C)
        back = (probs[:, 1:].argmax(-1) == truth).mean(0)
        drop = (probs[:, :1, predicted] - probs[:, 1:, predicted]).mean(0)
        return back, drop

    back, drop = rates(mistakes)
    ref_back, ref_drop = rates(reference)
    if not back.any():
        return None
    area = np.array([(bt - t) * (rt - lf) / (h * w) for t, lf, bt, rt in boxes])
    share = np.round(back - ref_back, 6)
    best = np.flatnonzero(share == share.max())
    move = drop[best] - ref_drop[best]
    near = best[move >= move.max() - DROP_TOLERANCE]
    j = int(min(near, key=lambda i: (round(area[i], 6), -(drop[i] - ref_drop[i]), i)))
    if back[j] == 0:
        return None
    t, lf, bt, rt = boxes[j]
    return (t / h, lf / w, bt / h, rt / w), names[j]


def _outcome(
    before: np.ndarray, after: np.ndarray, p: int, truth: int | None, class_names: Sequence[str]
) -> dict[str, Any]:
    """What an edit did, from the probabilities before and after (per class): the predicted class's two
    probabilities, the prediction after, and the true class's probability after (when known)."""
    return {
        "predicted": class_names[p],
        "before": float(before[p]),
        "after": float(after[p]),
        "becomes": class_names[int(after.argmax())],
        "truth": class_names[truth] if truth is not None else None,
        "truth_after": float(after[truth]) if truth is not None else None,
    }


def hide_box(
    model: nn.Module,
    images: Tensor,
    box: tuple[float, float, float, float],
    region: str,
    predicted: Sequence[int],
    truths: Sequence[int | None],
    class_names: Sequence[str],
    *,
    temperature: float = 1.0,
) -> list[CausalRegion]:
    """Per image, the prediction with one given part hidden (`box`: top, left, bottom, right as shares of
    the side; `region` its name), as a CausalRegion: the same edit on other photos (a group's reference
    photos get the part that mattered most in its mistakes)."""
    net = unwrap(model)
    device = _device(net, images.device)
    x = images.to(device, torch.float32)
    h, w = x.shape[-2:]
    pixels = (round(box[0] * h), round(box[1] * w), round(box[2] * h), round(box[3] * w))
    edited = torch.stack([hidden(image, [pixels])[1] for image in x])
    probs = _probabilities(net, torch.cat([x, edited]), temperature)
    b = len(x)
    out = []
    for i in range(b):
        p, truth = int(predicted[i]), truths[i]
        before, after = probs[i], probs[b + i]
        out.append(
            CausalRegion(
                region=region,
                box=box,
                **_outcome(before, after, p, truth, class_names),
                truth_before=float(before[truth]) if truth is not None else None,
            )
        )
    return out


def _change(
    name: str,
    before: np.ndarray,
    after: np.ndarray,
    p: int,
    truth: int | None,
    class_names: Sequence[str],
    setting: float | None,
    colour: str | None = None,
) -> GlobalChange:
    return GlobalChange(
        change=name,
        **_outcome(before, after, p, truth, class_names),
        setting=setting,
        colour=colour,
        area=setting if name == "remove_colour" and setting is not None else AREAS.get(name, 1.0),
    )


def whole_photo_changes(
    model: nn.Module,
    images: Tensor,
    predicted: Sequence[int],
    truths: Sequence[int | None],
    class_names: Sequence[str],
    *,
    temperature: float = 1.0,
    changes: Sequence[str] = tuple(WHOLE_PHOTO_CHANGES),
    remove_colours: bool = True,
    colours: Sequence[str] | None = None,
) -> list[list[GlobalChange]]:
    """Per image, the prediction under each change of the whole photo (`WHOLE_PHOTO_CHANGES`, in order),
    then, with remove_colours, the colour whose removal (its pixels turned grey) moves the predicted class
    most, of those on at least MIN_COLOUR_SHARE of the photo (change "remove_colour"; its colour, and its
    share of the photo as the setting): one forward pass per change and per such colour. colours: take
    out exactly these colour names instead, each reported (a group's reference photos get the colours
    its mistakes named).

    images: (B, 3, H, W) as the model takes them (normalised with `normalisation(model)`); predicted and
    truths: class indices (None: not known); temperature: the model's calibration.
    """
    unknown = [c for c in changes if c not in WHOLE_PHOTO_CHANGES]
    if unknown:
        raise ValueError(f"unknown whole-photo changes {unknown}: choose from {list(WHOLE_PHOTO_CHANGES)}")
    net = unwrap(model)
    device = _device(net, images.device)
    mean, std = (v.to(device)[:, None, None] for v in normalisation(model))
    x = images.to(device, torch.float32)
    rgb = (x * std + mean).clamp(0, 1)
    edited = [x]
    for name in changes:
        edited.append((torch.stack([WHOLE_PHOTO_CHANGES[name](im) for im in rgb]) - mean) / std)
    # One colour at a time taken out (its pixels turned grey): each colour name on at least
    # MIN_COLOUR_SHARE of the photo's pixels (appearance.colour_names, on the photo as the model takes it).
    names = list(COLOURS)
    unnamed = [c for c in colours or () if c not in names]
    if unnamed:
        raise ValueError(f"unknown colours {unnamed}: choose from {names}")
    taken: list[list[tuple[str, float]]] = []
    for im in rgb if remove_colours else []:
        pixels = (im * 255).round().byte().permute(1, 2, 0).reshape(-1, 3).cpu().numpy()
        index = torch.from_numpy(colour_names(pixels)).to(device).reshape(im.shape[-2:])
        present = []
        tried = [names.index(n) for n in colours] if colours is not None else REMOVABLE
        for c in tried:
            share = float((index == c).float().mean())
            if colours is not None or share >= MIN_COLOUR_SHARE:
                edited.append(((_grayscale(im) * (index == c) + im * (index != c))[None] - mean) / std)
                present.append((names[c], share))
        taken.append(present)
    probs = _probabilities(net, torch.cat(edited), temperature)
    b = len(x)
    out = []
    row_of = len(changes) * b + b  # where each image's colour removals start
    for i in range(b):
        p, truth = int(predicted[i]), truths[i]
        before = probs[i]
        row = [
            _change(name, before, probs[k * b + i], p, truth, class_names, SETTINGS.get(name))
            for k, name in enumerate(changes, 1)
        ]
        if remove_colours and taken[i]:
            removals = probs[row_of : row_of + len(taken[i])]
            row_of += len(taken[i])
            # Every colour asked for, else the one whose removal matters most.
            chosen = (
                range(len(taken[i])) if colours is not None else [int(np.argmax(before[p] - removals[:, p]))]
            )
            for j in chosen:
                name, share = taken[i][j]
                row.append(_change("remove_colour", before, removals[j], p, truth, class_names, share, name))
        out.append(row)
    return out

"""Deletion and insertion AUC (Petsiuk et al. 2018, RISE): does a heatmap point at what the model uses?

Deletion removes the hottest pixels first: if the map is faithful the target probability falls fast, so
a LOWER deletion AUC is better. Insertion starts from a baseline image and puts the hottest pixels back
first: the probability should rise fast, so a HIGHER insertion AUC is better. Both AUCs are the
trapezoid mean of the probability curve over the fraction of pixels changed, so they lie in 0..1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.v2.functional import gaussian_blur

BASELINES = ("blur", "zero")


def blurred(images: Tensor) -> Tensor:
    """Gaussian blur with sigma = max(H, W) / 45, i.e. RISE's sigma of 5 px at 224 px, at any size.

    The kernel sums to 1, so blurring commutes with per-channel normalisation: blurring normalised
    images is the same as normalising blurred ones.
    """
    sigma = max(images.shape[-2:]) / 45
    size = 2 * max(1, math.ceil(2 * sigma)) + 1
    # Reflect padding (torchvision's) needs the image to be larger than the kernel's radius.
    size = min(size, 2 * (min(images.shape[-2:]) - 1) + 1)
    if size < 3:
        return images.clone()
    return gaussian_blur(images, kernel_size=[size, size], sigma=[sigma, sigma])


def removed(images: Tensor, baseline: str) -> Tensor:
    """What removed pixels become: a blurred copy ("blur", RISE's insertion) or zero in normalised space,
    the mean colour ("zero", RISE's deletion)."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    return blurred(images) if baseline == "blur" else torch.zeros_like(images)


def random_maps(
    batch: int, height: int, width: int, seed: int = 0, grid: int | tuple[int, int] | None = None
) -> np.ndarray:
    """Seeded random heatmaps (batch, height, width), float32 in [0, 1].

    grid: None for independent uniform noise per pixel; a side or (rows, cols) for uniform noise on that
    coarse grid, upsampled bilinearly and min-max scaled, so the random map is as smooth as a CAM of a
    layer with that many cells (the fair comparison: a pixel-noise map deletes scattered pixels, which
    hurts any model less than deleting a blob). The same seed gives the same maps.
    """
    rng = np.random.default_rng(seed)
    if grid is None:
        return rng.random((batch, height, width), dtype=np.float32)
    gh, gw = (grid, grid) if isinstance(grid, int) else grid
    cells = torch.from_numpy(rng.random((batch, 1, gh, gw), dtype=np.float32))
    up = F.interpolate(cells, size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    up = up - up.amin(dim=(1, 2), keepdim=True)
    return (up / up.amax(dim=(1, 2), keepdim=True).clamp(min=1e-12)).numpy()


def deletion_insertion(
    model: nn.Module,
    images: Tensor,
    cams: Tensor | np.ndarray,
    targets: Sequence[int] | Tensor,
    steps: int = 20,
    baseline: str = "blur",
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Per-image deletion AUC (lower is better) and insertion AUC (higher is better), with their curves.

    images: (B, 3, H, W) as the model takes them (normalised). cams: (B, H, W), or (B, 1, H, W); resized
    bilinearly to H x W if they differ. baseline: what a removed pixel becomes, for both metrics — "blur"
    (a blurred copy, as RISE's insertion) or "zero" (zero in normalised space, i.e. the mean colour, as
    RISE's deletion). Pixels go in order of decreasing heat, ties in reading order, in `steps` equal
    chunks; curve[k] is the softmax probability of the target after k chunks, so curves have steps + 1
    points: curves_deletion[:, 0] is the original image's score and [:, -1] the baseline's; insertion
    runs the other way. Forward passes are batched across images and steps, under inference_mode, with
    the model in eval mode; every submodule's train/eval mode is restored afterwards.
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else images.device
    images = images.to(device)
    b, _, h, w = images.shape
    cams = torch.as_tensor(cams, device=device, dtype=torch.float32)
    if cams.ndim not in (3, 4) or cams.numel() != cams.shape[0] * cams.shape[-2] * cams.shape[-1]:
        raise ValueError(f"cams must be (B, H, W) or (B, 1, H, W), got {tuple(cams.shape)}")
    cams = cams.reshape(cams.shape[0], 1, *cams.shape[-2:])
    if cams.shape[0] != b:
        raise ValueError(f"{b} images but {cams.shape[0]} cams")
    if cams.shape[-2:] != (h, w):
        cams = F.interpolate(cams, size=(h, w), mode="bilinear", align_corners=False)
    t = torch.as_tensor(targets, dtype=torch.long, device=device).reshape(-1)
    if t.numel() != b:
        raise ValueError(f"{b} images but {t.numel()} targets")

    n = h * w
    # Stable descending sort: equal heat goes in reading order, so results never depend on the sort kernel.
    order = torch.argsort(torch.nan_to_num(cams.reshape(b, n)), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=device).expand(b, n))
    counts = torch.tensor([k * n // steps for k in range(steps + 1)], device=device)
    # Jobs (image, step, is_insertion). Deletion at step 0 / steps IS the original / baseline image, which
    # are also insertion's end points, so each is scored once: equal end points and two fewer passes each.
    img_idx = torch.arange(b, device=device)
    del_idx, del_k = img_idx.repeat_interleave(steps + 1), torch.arange(steps + 1, device=device).repeat(b)
    ins_idx, ins_k = img_idx.repeat_interleave(steps - 1), torch.arange(1, steps, device=device).repeat(b)
    job_idx, job_k = torch.cat([del_idx, ins_idx]), torch.cat([del_k, ins_k])
    job_ins = torch.cat(
        [torch.zeros_like(del_idx, dtype=torch.bool), torch.ones_like(ins_idx, dtype=torch.bool)]
    )

    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.inference_mode():
            base = removed(images, baseline)
            scores = []
            for s in range(0, job_idx.numel(), batch_size):
                chunk = slice(s, s + batch_size)
                i, k, ins = job_idx[chunk], job_k[chunk], job_ins[chunk]
                changed = rank[i] < counts[k][:, None]  # (chunk, n): the pixels of the k hottest chunks
                # Deletion puts the baseline into changed pixels; insertion the original.
                take_base = (changed ^ ins[:, None]).view(-1, 1, h, w)
                probs = model(torch.where(take_base, base[i], images[i])).float().softmax(-1)
                scores.append(probs.gather(1, t[i][:, None])[:, 0])
            scores = torch.cat(scores).cpu().numpy().astype(np.float64)
    finally:
        # Exact restore, frozen-BN style mixes included: modules() is parents first, so a parent's
        # recursive train() is corrected by its children's entries that come after it.
        for m, mode in modes.items():
            if m.training != mode:
                m.train(mode)

    deletion = scores[: del_idx.numel()].reshape(b, steps + 1)
    insertion = np.empty_like(deletion)
    insertion[:, 1:-1] = scores[del_idx.numel() :].reshape(b, steps - 1)
    insertion[:, 0], insertion[:, -1] = deletion[:, -1], deletion[:, 0]
    return {
        "deletion": _auc(deletion),
        "insertion": _auc(insertion),
        "curves_deletion": deletion,
        "curves_insertion": insertion,
    }


def _auc(curves: np.ndarray) -> np.ndarray:
    """Trapezoid mean of each row over evenly spaced points on 0..1."""
    return (curves[:, :-1] + curves[:, 1:]).sum(1) / (2 * (curves.shape[1] - 1))


def compare_methods(
    model: nn.Module,
    images: Tensor,
    cams_by_method: dict[str, Tensor | np.ndarray],
    targets: Sequence[int] | Tensor,
    steps: int = 20,
    baseline: str = "blur",
    batch_size: int = 64,
) -> dict[str, dict[str, float]]:
    """{method: {"deletion": mean AUC (lower is better), "insertion": mean AUC (higher is better)}}."""
    out = {}
    for method, cams in cams_by_method.items():
        r = deletion_insertion(
            model, images, cams, targets, steps=steps, baseline=baseline, batch_size=batch_size
        )
        out[method] = {"deletion": float(r["deletion"].mean()), "insertion": float(r["insertion"].mean())}
    return out

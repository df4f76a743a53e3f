"""Explainer checks with ground truth: is a heatmap on the evidence, better than a random map, and about
the model at all?

Given maps (B, H, W) from any registered method (`create_cam`), the images they explain, and boolean
masks (B, H, W) of where the class evidence is (the synthetic dataset draws them: `data.synthetic`):

- relevance mass (Arras et al. 2022, CLEVR-XAI): the share of a map's heat inside the mask (0..1;
  chance = the mask's area share, what a uniform map gets);
- pointing game (Zhang et al. 2018): is the map's maximum inside the mask (chance = the mask's area);
- deletion / insertion AUC (Petsiuk et al. 2018, `faithfulness.deletion_insertion`) of the map and of a
  seeded random map on the same image: a faithful map deletes faster (lower) and inserts faster (higher);
- model-parameter randomisation (Adebayo et al. 2018): the top layers of a copy of the model are
  randomised, cascading down from the head, and each method's maps are compared before and after by
  Spearman rank correlation and SSIM. A method whose maps barely change (an edge detector would not
  change at all) does not explain the model; it passes when the mean correlation is below `PASS_BELOW`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from timm.models.convnext import ConvNeXt
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from noodlenext.explain.faithfulness import deletion_insertion, random_maps
from noodlenext.explain.layers import target_layer_path, unwrap
from noodlenext.explain.registry import create_cam, parse_methods
from noodlenext.explain.settings import HeatmapSettings

PASS_BELOW = 0.5  # randomisation check: a method's maps "changed" when the mean Spearman r is below this

ArrayLike = Tensor | np.ndarray


def _stack(x: ArrayLike, what: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3:
        raise ValueError(f"{what} must be (B, H, W), got {a.shape}")
    return a


def _maps_and_masks(maps: ArrayLike, masks: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    m, k = _stack(maps, "maps").astype(np.float64), _stack(masks, "masks").astype(bool)
    if m.shape != k.shape:
        raise ValueError(f"maps {m.shape} and masks {k.shape} differ: resize the masks to the maps' size")
    return m, k


def relevance_mass(maps: ArrayLike, masks: ArrayLike) -> np.ndarray:
    """Per image: the share (0..1) of the map's heat that lies inside the mask (Arras et al. 2022).

    maps: (B, H, W) heat, negative values count as none; masks: (B, H, W) bool, True = evidence. A map
    with no heat at all is taken as uniform, so it scores chance: the mask's area share.
    """
    heat, masks = _maps_and_masks(maps, masks)
    heat = heat.clip(min=0)
    total = heat.sum(axis=(1, 2))
    inside = (heat * masks).sum(axis=(1, 2))
    flat = total <= 0
    return np.where(flat, masks.mean(axis=(1, 2)), inside / np.where(flat, 1.0, total))


def pointing_game(maps: ArrayLike, masks: ArrayLike) -> np.ndarray:
    """Per image: 1.0 when the map's maximum is inside the mask, 0.0 when not (Zhang et al. 2018).

    maps: (B, H, W); masks: (B, H, W) bool. When several pixels share the maximum (a flat or plateaued
    map) the score is the share of them inside the mask: the chance that a tie broken at random hits, so
    a flat map scores the mask's area share, not a free hit. The mean over images is the accuracy.
    """
    maps, masks = _maps_and_masks(maps, masks)
    peak = maps.max(axis=(1, 2), keepdims=True)
    top = maps >= peak - 1e-6 * np.maximum(np.abs(peak), 1e-12)  # float32 maps: exact ties, a hair's slack
    return (top & masks).sum(axis=(1, 2)) / top.sum(axis=(1, 2))


def faithfulness_vs_random(
    model: nn.Module,
    images: Tensor,
    maps: ArrayLike,
    targets: Sequence[int] | Tensor,
    seed: int = 0,
    grid: int | tuple[int, int] | None = None,
    steps: int = 20,
    baseline: str = "blur",
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Per image: deletion and insertion AUC (0..1) of `maps` and of a seeded random map on the same image.

    model: a timm model or `NoodleClassifier`; images: (B, 3, H, W), normalised as the model takes them;
    maps: (B, H, W); targets: one class per image. seed, grid: the random maps (`random_maps`; the same
    for every method given the same images). steps, baseline, batch_size: as `deletion_insertion`.
    Returns `deletion`, `insertion`, `random_deletion`, `random_insertion`: a map beats random when its
    deletion is lower and its insertion higher.
    """
    b, _, h, w = images.shape
    rand = random_maps(b, h, w, seed, grid)
    kwargs = {"steps": steps, "baseline": baseline, "batch_size": batch_size}
    ours = deletion_insertion(model, images, maps, targets, **kwargs)
    chance = deletion_insertion(model, images, rand, targets, **kwargs)
    return {
        "deletion": ours["deletion"],
        "insertion": ours["insertion"],
        "random_deletion": chance["deletion"],
        "random_insertion": chance["insertion"],
    }


def evaluate_maps(
    model: nn.Module,
    images: Tensor,
    maps: ArrayLike,
    targets: Sequence[int] | Tensor,
    masks: ArrayLike,
    seed: int = 0,
    grid: int | tuple[int, int] | None = None,
    steps: int = 20,
    baseline: str = "blur",
) -> dict[str, np.ndarray]:
    """Every per-image ground-truth and faithfulness number of one method's maps (see the functions).

    Returns `relevance_mass`, `pointing`, `mask_area` (the chance level of both), `deletion`,
    `insertion`, `random_deletion`, `random_insertion`, each of shape (B,).
    """
    mass, masks_np = relevance_mass(maps, masks), _stack(masks, "masks").astype(bool)
    out = {
        "relevance_mass": mass,
        "pointing": pointing_game(maps, masks_np),
        "mask_area": masks_np.mean(axis=(1, 2)),
    }
    out.update(faithfulness_vs_random(model, images, maps, targets, seed, grid, steps, baseline))
    return out


def compute_maps(
    method: str,
    model: nn.Module,
    images: Tensor,
    targets: Sequence[int] | Tensor,
    settings: HeatmapSettings | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """The maps (B, H, W), float32 in [0, 1], of the registered `method` for `model`, `batch_size` images
    per call (ScoreCAM's masked batches grow with the number of images)."""
    cam = create_cam(method, model, settings)
    targets = torch.as_tensor(targets).reshape(-1).tolist()
    chunks = [
        cam(images[i : i + batch_size], targets[i : i + batch_size])
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks).numpy().astype(np.float32)


# ---------------------------------------------------------------------------- randomisation check
def randomisation_cascade(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The model's layer groups from the head down, in the order the cascade randomises them.

    ConvNeXt: head (norm_pre + head), stages.3, stages.2, ..., stem. ViT: head (norm, fc_norm, head),
    blocks.11, blocks.10, ..., patch_embed. Other models: their top-level children with parameters,
    last first. Names are dotted paths into the timm model (`NoodleClassifier.net`).
    """
    net = unwrap(model)
    if isinstance(net, ConvNeXt):
        groups = [("head", [net.norm_pre, net.head])]
        groups += [(f"stages.{i}", [net.stages[i]]) for i in reversed(range(len(net.stages)))]
        groups.append(("stem", [net.stem]))
    elif isinstance(net, VisionTransformer):
        groups = [("head", [net.norm, net.fc_norm, net.head])]
        groups += [(f"blocks.{i}", [net.blocks[i]]) for i in reversed(range(len(net.blocks)))]
        groups.append(("patch_embed", [net.patch_embed]))
    else:
        groups = [(name, [child]) for name, child in reversed(list(net.named_children()))]
    return [(name, mods) for name, mods in groups if any(p.numel() for m in mods for p in m.parameters())]


def default_depth(model: nn.Module) -> int:
    """How many cascade groups the check randomises by default: ConvNeXt the head and the last stage (2);
    a ViT the head and the last quarter of its blocks (12 blocks: 1 + 3); other models the top two."""
    net = unwrap(model)
    if isinstance(net, VisionTransformer):
        return 1 + max(1, len(net.blocks) // 4)
    return 2


def randomised_copy(model: nn.Module, depth: int | None = None, seed: int = 0) -> tuple[nn.Module, list[str]]:
    """A deep copy of the timm network of `model` with its top `depth` cascade groups randomised.

    Each parameter tensor of those groups is redrawn as Gaussian noise with that tensor's own mean and
    standard deviation (seeded by `seed`): the scale survives, what was learned does not. The original
    model is not touched. depth: groups from the head down (`randomisation_cascade`); None for
    `default_depth`. Returns the copy (in eval mode) and the names of the randomised groups.
    """
    net = copy.deepcopy(unwrap(model))
    groups = randomisation_cascade(net)
    depth = default_depth(net) if depth is None else depth
    if not 1 <= depth <= len(groups):
        raise ValueError(f"depth={depth}: the model has {len(groups)} cascade groups ({groups[0][0]}, ...)")
    generator = torch.Generator().manual_seed(seed)
    done: set[int] = set()
    with torch.no_grad():
        for _, modules in groups[:depth]:
            for module in modules:
                for p in module.parameters():
                    if id(p) in done:
                        continue
                    done.add(id(p))
                    values = p.detach().float().cpu()
                    noise = torch.randn(p.shape, generator=generator)
                    p.copy_((values.mean() + values.std(unbiased=False) * noise).to(p.dtype))
    return net.eval(), [name for name, _ in groups[:depth]]


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of a 1-D array, ties given their mean rank (as scipy's rankdata, minus one)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + ends - 1) / 2)[inverse]


def spearman(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """Per image: Spearman rank correlation (-1..1) between two stacks of maps (B, H, W).

    Two constant maps correlate 1 when equal (0 otherwise); one constant map and one that is not: 0 (the
    structure is gone, which is what the randomisation check looks for).
    """
    a, b = _stack(a, "maps").astype(np.float64), _stack(b, "maps").astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps {a.shape} and {b.shape} differ")
    out = np.empty(len(a))
    for i, (x, y) in enumerate(zip(a.reshape(len(a), -1), b.reshape(len(b), -1), strict=True)):
        flat_x, flat_y = np.ptp(x) == 0, np.ptp(y) == 0
        if flat_x or flat_y:
            out[i] = float(flat_x and flat_y and np.array_equal(x, y))
            continue
        out[i] = np.corrcoef(_ranks(x), _ranks(y))[0, 1]
    return out


def _gaussian_blur(x: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """Separable Gaussian over the last two axes of (B, H, W), reflecting at the edges."""
    t = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    x = np.pad(x, ((0, 0), (radius, radius), (radius, radius)), mode="symmetric")
    x = np.lib.stride_tricks.sliding_window_view(x, 2 * radius + 1, axis=2) @ kernel
    return np.lib.stride_tricks.sliding_window_view(x, 2 * radius + 1, axis=1) @ kernel


def ssim(a: ArrayLike, b: ArrayLike, data_range: float = 1.0, sigma: float = 1.5) -> np.ndarray:
    """Per image: mean structural similarity (Wang et al. 2004) of two stacks of maps (B, H, W).

    An 11 x 11 Gaussian window (sigma 1.5 px), K1 = 0.01, K2 = 0.03, as the paper and scikit-image's
    `gaussian_weights=True`; data_range: the maps' value range (CAMs: 0..1). 1 for identical maps.
    """
    a, b = _stack(a, "maps").astype(np.float64), _stack(b, "maps").astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps {a.shape} and {b.shape} differ")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    radius = int(3.5 * sigma + 0.5)

    def blur(x: np.ndarray) -> np.ndarray:
        return _gaussian_blur(x, sigma, radius)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(axis=(1, 2))


@dataclass(frozen=True)
class RandomisationCheck:
    """The model-parameter randomisation check of some methods on some images.

    layers: the randomised cascade groups, from the head down; spearman, ssim: per method, one value per
    image between the maps of the trained and of the randomised model (high = the maps did not change).
    """

    layers: tuple[str, ...]
    spearman: dict[str, np.ndarray]
    ssim: dict[str, np.ndarray]

    def passed(self, method: str, threshold: float = PASS_BELOW) -> bool:
        """True when `method`'s maps changed: mean Spearman r below `threshold`."""
        return bool(np.mean(self.spearman[method]) < threshold)


def randomisation_check(
    model: nn.Module,
    methods: str | Sequence[str],
    images: Tensor,
    targets: Sequence[int] | Tensor,
    settings: HeatmapSettings | None = None,
    maps: dict[str, ArrayLike] | None = None,
    depth: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
) -> RandomisationCheck:
    """Adebayo et al.'s check: each method's maps for `model` vs for a copy with its top layers randomised.

    model: a timm model or `NoodleClassifier`; methods: registered names (`parse_methods`: `all`, a list);
    images: (B, 3, H, W) normalised; targets: one class per image, the same for both models. settings:
    for `create_cam` (the target layer is found in the copy by the same path). maps: the trained model's
    maps by method when already computed (computed here otherwise). depth, seed: `randomised_copy`.
    """
    settings = HeatmapSettings.of(settings)
    # The copy is a bare timm network: name the trained model's layer so that both explain the same one.
    settings = replace(settings, target_layer=target_layer_path(model, settings.target_layer))
    names = parse_methods(methods)
    randomised, layers = randomised_copy(model, depth, seed)
    rho, sim = {}, {}
    for name in names:
        before = (
            maps[name]
            if maps and name in maps
            else compute_maps(name, model, images, targets, settings, batch_size)
        )
        after = compute_maps(name, randomised, images, targets, settings, batch_size)
        rho[name], sim[name] = spearman(before, after), ssim(before, after)
    return RandomisationCheck(tuple(layers), rho, sim)

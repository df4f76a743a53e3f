"""Explainer sanity checks with ground truth: each metric on maps and models whose answer is known."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noodlenext.data.synthetic import _render
from noodlenext.data.transforms import eval_transform
from noodlenext.explain.base import _REGISTRY, BaseCAM, normalise, register_cam
from noodlenext.explain.sanity import (
    default_depth,
    evaluate_maps,
    faithfulness_vs_random,
    pointing_game,
    random_maps,
    randomisation_cascade,
    randomisation_check,
    randomised_copy,
    relevance_mass,
    spearman,
    ssim,
)
from noodlenext.explain.settings import HeatmapSettings

STAGE2 = HeatmapSettings(target_layer="stages.2.blocks.-1.conv_dw")  # a 4x4 map at 64 px


def _disc_masks(n: int = 3, size: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    centres = [(10, 12), (20, 16), (16, 22)]
    return np.stack([(y - cy) ** 2 + (x - cx) ** 2 < 36 for cy, cx in centres[:n]])


def test_a_map_equal_to_the_mask_scores_one_and_its_inverse_zero() -> None:
    masks = _disc_masks()
    assert np.allclose(relevance_mass(masks.astype(np.float32), masks), 1.0)
    assert np.allclose(pointing_game(masks.astype(np.float32), masks), 1.0)
    inverted = (~masks).astype(np.float32)
    assert np.allclose(relevance_mass(inverted, masks), 0.0)
    assert np.allclose(pointing_game(inverted, masks), 0.0)
    # torch maps and (B, 1, H, W) work too
    assert np.allclose(relevance_mass(torch.from_numpy(masks[:, None].astype(np.float32)), masks), 1.0)


def test_flat_and_partial_maps_score_chance_or_their_share() -> None:
    masks = _disc_masks()
    area = masks.mean(axis=(1, 2))
    for flat in (np.zeros(masks.shape), np.full(masks.shape, 0.3)):  # no heat, or the same heat everywhere
        assert np.allclose(relevance_mass(flat, masks), area)
        assert np.allclose(pointing_game(flat, masks), area)  # a tie broken at random: no free hit
    ratio = masks.sum(axis=(1, 2), keepdims=True) / (~masks).sum(axis=(1, 2), keepdims=True)
    half = np.where(masks, 1.0, ratio)
    assert np.allclose(relevance_mass(half, masks), 0.5)  # as much heat inside as outside
    peak = np.zeros(masks.shape)
    peak[:, 0, 0] = 1.0  # a single hottest pixel, on the table
    assert np.allclose(pointing_game(peak, masks), 0.0)
    assert np.allclose(relevance_mass(-np.ones(masks.shape), masks), area)  # negative heat is no heat
    with pytest.raises(ValueError, match="resize the masks"):
        relevance_mass(np.ones((3, 16, 16)), masks)


def test_random_maps_are_seeded_in_range_and_as_smooth_as_their_grid() -> None:
    a, b = random_maps(4, 32, 32, seed=1), random_maps(4, 32, 32, seed=1)
    assert a.shape == (4, 32, 32) and a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, random_maps(4, 32, 32, seed=2))
    coarse = random_maps(4, 32, 32, seed=1, grid=2)
    assert coarse.min() == 0 and np.allclose(coarse.max(axis=(1, 2)), 1)
    # bilinear from 2x2: every row is monotone between the two cell centres, unlike pixel noise
    steps = np.diff(coarse[:, :, 8:24], axis=2)
    assert np.all((steps >= -1e-6).all(axis=2) | (steps <= 1e-6).all(axis=2))


def test_spearman_matches_scipy_and_handles_flat_maps() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, (3, 6, 6)).astype(np.float32)  # many ties
    b = a + rng.normal(0, 2, a.shape)
    expected = [stats.spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b, strict=True)]
    assert np.allclose(spearman(a, b), expected)
    assert np.allclose(spearman(a, a), 1) and np.allclose(spearman(a, -a), -1)
    flat = np.zeros_like(a)
    assert np.allclose(spearman(flat, flat), 1) and np.allclose(spearman(a, flat), 0)


def test_ssim_is_one_for_equal_maps_and_the_luminance_term_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((2, 20, 20))
    assert np.allclose(ssim(a, a), 1)
    assert (ssim(a, rng.random((2, 20, 20))) < 0.3).all()
    c1 = 0.01**2
    expected = (2 * 0.5 * 0.7 + c1) / (0.5**2 + 0.7**2 + c1)  # constant maps: only luminance differs
    assert np.allclose(ssim(np.full((1, 8, 8), 0.5), np.full((1, 8, 8), 0.7)), expected)


class RegionModel(nn.Module):
    """Class 0's logit is 3x the mean of channel 0 inside `region`; class 1's is 0. Evidence is there only."""

    def __init__(self, region: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("region", torch.from_numpy(region.astype(np.float32)))
        self.scale = nn.Parameter(torch.tensor(3.0))

    def forward(self, x: Tensor) -> Tensor:
        evidence = (x[:, 0] * self.region).sum((1, 2)) / self.region.sum()
        return torch.stack([self.scale * evidence, torch.zeros_like(evidence)], dim=1)


def test_a_map_on_the_evidence_beats_random_at_deletion_and_insertion() -> None:
    region = _disc_masks(1)[0]
    model, images = RegionModel(region), torch.ones(2, 3, 32, 32)
    maps = np.stack([region, region]).astype(np.float32)
    out = faithfulness_vs_random(model, images, maps, [0, 0], baseline="zero", grid=4)
    assert (out["deletion"] < out["random_deletion"] - 0.05).all()
    assert (out["insertion"] > out["random_insertion"] + 0.05).all()
    again = faithfulness_vs_random(model, images, 1 - maps, [0, 0], baseline="zero", grid=4)
    assert np.array_equal(again["random_deletion"], out["random_deletion"])  # the same random map
    assert (again["deletion"] > out["random_deletion"]).all()  # the inverse map is worse than random
    every = evaluate_maps(model, images, maps, [0, 0], np.stack([region, region]), baseline="zero")
    assert set(every) == {
        "relevance_mass",
        "pointing",
        "mask_area",
        "deletion",
        "insertion",
        "random_deletion",
        "random_insertion",
    }
    assert np.allclose(every["relevance_mass"], 1) and np.allclose(every["mask_area"], region.mean())


@pytest.fixture(scope="module")
def atto() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("convnext_atto", num_classes=3).eval()


@pytest.fixture(scope="module")
def noodles() -> tuple[Tensor, list[int]]:
    tf = eval_transform(64, (0.5,) * 3, (0.5,) * 3)
    images = [tf(_render(c, i, 0, 64)[0]) for c in range(3) for i in range(3)]
    return torch.stack(images), [c for c in range(3) for _ in range(3)]


def test_randomised_copy_changes_only_the_top_of_a_copy(atto: nn.Module) -> None:
    assert [name for name, _ in randomisation_cascade(atto)] == [
        "head",
        "stages.3",
        "stages.2",
        "stages.1",
        "stages.0",
        "stem",
    ]
    assert default_depth(atto) == 2
    before = {k: v.clone() for k, v in atto.state_dict().items()}
    copy, layers = randomised_copy(atto, seed=3)
    assert layers == ["head", "stages.3"]
    assert all(torch.equal(v, atto.state_dict()[k]) for k, v in before.items())  # the original is untouched
    after = copy.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    # constant tensors (a fresh model's norms and biases) stay constant: noise of their std 0
    top = {k for k in before if k.startswith(("head.", "stages.3.")) and before[k].float().std() > 0}
    assert top and top <= changed and all(k.startswith(("head.", "stages.3.")) for k in changed)
    w = before["stages.3.blocks.0.mlp.fc1.weight"]
    assert abs(after["stages.3.blocks.0.mlp.fc1.weight"].std() - w.std()) < 0.1 * w.std()  # scale kept
    again, _ = randomised_copy(atto, seed=3)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in after.items())  # seeded
    with pytest.raises(ValueError, match="cascade groups"):
        randomised_copy(atto, depth=7)


def test_randomised_copy_of_a_classifier_and_a_vit() -> None:
    from noodlenext.models.classifier import NoodleClassifier

    classifier = NoodleClassifier("convnext_atto", 3, ["a", "b", "c"], image_size=32, pretrained=False)
    net, layers = randomised_copy(classifier, depth=1)
    assert layers == ["head"] and net is not classifier.net
    assert not torch.equal(net.head.fc.weight, classifier.net.head.fc.weight)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, depth=4)
    assert default_depth(vit) == 2 and randomised_copy(vit)[1] == ["head", "blocks.3"]


@pytest.fixture
def edges() -> Iterator[str]:
    """A 'method' that ignores the model: the image's Sobel edge magnitude."""

    @register_cam
    class EdgeMap(BaseCAM):
        name = "test_edges"

        def compute(self, images: Tensor, targets: Sequence[int] | Tensor | None) -> Tensor:
            grey = images.mean(dim=1, keepdim=True).float().cpu()
            kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])[None, None]
            gx, gy = F.conv2d(grey, kx, padding=1), F.conv2d(grey, kx.transpose(2, 3), padding=1)
            return normalise((gx**2 + gy**2).sqrt()[:, 0])

    try:
        yield EdgeMap.name
    finally:
        _REGISTRY.pop(EdgeMap.name)


def test_randomisation_fails_a_model_blind_method_and_passes_gradcam(
    atto: nn.Module, noodles: tuple[Tensor, list[int]], edges: str
) -> None:
    images, targets = noodles
    check = randomisation_check(atto, ["gradcam", edges], images, targets, STAGE2, seed=0)
    assert check.layers == ("head", "stages.3")
    assert np.allclose(check.spearman[edges], 1) and np.allclose(check.ssim[edges], 1)
    assert not check.passed(edges)
    assert np.mean(check.spearman["gradcam"]) < 0.5 and check.passed("gradcam")
    assert np.mean(check.ssim["gradcam"]) < 0.7
    assert check.spearman["gradcam"].shape == (len(images),)

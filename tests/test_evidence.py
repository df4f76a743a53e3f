"""Evidence the model itself produces, proven on models whose behaviour is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import Tensor, nn
from toy_models import NAMES, QUADRANTS, SIZE, QuadrantModel, images, quadrant_map

from noodlenext.data.datamodule import NoodleImages
from noodlenext.data.transforms import eval_transform
from noodlenext.explain.appearance import COLOURS, appearance, colour_names, describe_region
from noodlenext.explain.counterfactuals import (
    contrastive_maps,
    counterfactuals,
    map_agreement,
    trust_check,
)
from noodlenext.explain.evidence import (
    Appearance,
    Counterfactual,
    Evidence,
    MapTrust,
    Neighbour,
    RegionLook,
)
from noodlenext.explain.facts import HeatmapFacts, heatmap_facts
from noodlenext.explain.faithfulness import random_maps
from noodlenext.explain.gather import gather_evidence
from noodlenext.explain.heatmaps import explain_batch
from noodlenext.explain.neighbours import FeatureIndex
from noodlenext.models.classifier import NoodleClassifier

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def ramps(n: int, size: int = SIZE) -> tuple[Tensor, Tensor]:
    """Smooth maps hottest at the top-left corner, and at the bottom-right (no ties to break)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    good = (2 * size - yy - xx).float().expand(n, size, size) / (2 * size)
    return good, good.flip(-1, -2)


def flags(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


# --- counterfactuals ----------------------------------------------------------------------------------


def test_hiding_the_hot_region_drops_the_class_and_keeping_it_keeps_it() -> None:
    model, x = QuadrantModel().train(), images()
    before = flags(model)
    out = counterfactuals(model, x, quadrant_map(3, "top-left"), [0, 0, 0], NAMES)
    assert flags(model) == before
    for cf in out:
        assert cf.predicted == "ramen" and cf.hot_area == pytest.approx(0.25)
        assert cf.original["ramen"] > 0.9
        assert cf.drop == pytest.approx(cf.original["ramen"] - cf.hidden["ramen"])
        assert cf.drop > 0.3  # blurring the top-left away removes most of ramen's energy
        assert cf.kept["ramen"] == pytest.approx(cf.original["ramen"], abs=0.02)  # ramen looks only there
        assert cf.kept_prediction == "ramen"
        assert sum(cf.hidden.values()) == pytest.approx(1.0)


def test_hiding_a_region_the_class_does_not_use_does_not_drop_it() -> None:
    out = counterfactuals(QuadrantModel(), images(), quadrant_map(3, "bottom-right"), [0, 0, 0], NAMES)
    # Blurring the bottom-right lowers udon's energy, so ramen rises: a negative drop.
    assert all(cf.drop < 0 for cf in out)


def test_an_empty_map_has_no_hot_region() -> None:
    (cf,) = counterfactuals(QuadrantModel(), images(1), torch.zeros(1, 8, 8), [0], NAMES)
    assert cf.hot_area == 0.0 and cf.hidden == pytest.approx(cf.original)


def test_counterfactual_maps_are_resized_to_the_images() -> None:
    small = quadrant_map(2, "top-left", size=8)  # as a CAM at its native resolution
    out = counterfactuals(QuadrantModel(), images(2), small.numpy(), torch.tensor([0, 0]), NAMES)
    assert [cf.hot_area for cf in out] == pytest.approx([0.25, 0.25], abs=0.05)


# --- trust --------------------------------------------------------------------------------------------


def test_a_map_on_the_evidence_beats_a_random_map_and_one_elsewhere_does_not() -> None:
    model, x = QuadrantModel(), images()
    good, bad = ramps(3)
    out = trust_check(model, x, {"good": good, "bad": bad}, [0, 0, 0], steps=10)
    for per_image in out:
        assert per_image["good"].informative
        assert not per_image["bad"].informative
        assert per_image["good"].random_deletion == per_image["bad"].random_deletion  # the same chance
        assert per_image["good"].deletion < per_image["good"].random_deletion


def test_the_random_map_is_seeded_smooth_and_in_range() -> None:
    a, b = random_maps(2, 32, 32, seed=3, grid=(4, 4)), random_maps(2, 32, 32, seed=3, grid=(4, 4))
    assert np.array_equal(a, b) and a.shape == (2, 32, 32)
    assert 0 <= a.min() and a.max() <= 1
    assert np.abs(a[:, 1:] - a[:, :-1]).max() < 0.2  # neighbours differ little: smooth, not pixel noise


def test_map_agreement_is_pearson_r() -> None:
    good, bad = ramps(1)
    assert map_agreement(good[0], good[0] * 3 + 1) == pytest.approx(1.0)
    assert map_agreement(good[0].numpy(), bad[0].numpy()) == pytest.approx(-1.0)
    assert map_agreement(good[0], torch.ones(SIZE, SIZE)) == 0.0
    rng = np.random.default_rng(0)
    a, b = rng.random((8, 8)), rng.random((8, 8))
    assert map_agreement(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# --- contrastive maps ---------------------------------------------------------------------------------


def heat_in_upper_left(facts: HeatmapFacts) -> bool:
    top = max(facts.region_shares, key=facts.region_shares.__getitem__)
    return top == "upper left" and max(facts.centroid_xy) < 0.5


def test_the_contrastive_map_points_at_the_evidence_for_one_class_over_the_other() -> None:
    model, x = QuadrantModel().train(), images(2, top_left=1.0)
    x[:, :, :8, :8] *= 3  # the most energy in the top-left corner, the most in the bottom-right one
    x[:, :, -8:, -8:] *= 3
    before, grads = flags(model), [p.grad for p in model.parameters()]
    ramen_over_udon = contrastive_maps(model, x, [0, 0], [1, 1], QUADRANTS)
    udon_over_ramen = contrastive_maps(model, x, torch.tensor([1, 1]), torch.tensor([0, 0]), QUADRANTS)
    assert flags(model) == before and [p.grad for p in model.parameters()] == grads
    assert ramen_over_udon.shape == (2, SIZE, SIZE)
    h = SIZE // 2
    for i in range(2):
        assert heatmap_facts(ramen_over_udon[i]).peak_region == "upper left"
        assert heatmap_facts(udon_over_ramen[i]).peak_region == "lower right"
        # Bilinear upsampling of the 4x4 grid spreads heat half a cell (4 px) past the quadrant, no further.
        assert ramen_over_udon[i, h + 4 :, :].max() == 0 and ramen_over_udon[i, :, h + 4 :].max() == 0
        assert udon_over_ramen[i, : h - 4, :].max() == 0 and udon_over_ramen[i, :, : h - 4].max() == 0


def test_a_class_is_not_contrasted_with_itself() -> None:
    with pytest.raises(ValueError, match="itself"):
        contrastive_maps(QuadrantModel(), images(1), [0], [0], QUADRANTS)


def _convnext() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("convnext_atto", pretrained=False, num_classes=3)


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=SIZE)


def _noodle() -> nn.Module:
    torch.manual_seed(0)
    return NoodleClassifier("convnext_atto", 3, NAMES, image_size=SIZE, pretrained=False)


@pytest.mark.parametrize("build", [_convnext, _vit, _noodle], ids=["convnext", "vit", "noodle_classifier"])
def test_contrastive_maps_work_on_real_architectures(build) -> None:
    model = build().eval()
    maps = contrastive_maps(model, images(2), [0, 2], [1, 0])
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == torch.float32
    assert 0 <= maps.min() and maps.max() <= 1
    assert not model.training


# --- appearance ---------------------------------------------------------------------------------------

BEIGE, DARK_BROWN, BROWN = (215, 190, 145), (75, 45, 25), (150, 110, 60)


def noodle_photo(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A dark brown smooth background with a beige patch of wavy strands; and the patch's mask."""
    photo = np.empty((size, size, 3), np.uint8)
    photo[:] = DARK_BROWN
    yy, xx = np.mgrid[:size, :size]
    strands = np.sin((xx + 3 * np.sin(yy / 5)) * 2 * np.pi / 6) > -0.3  # mostly strand, thin gaps
    patch = np.zeros((size, size), bool)
    patch[8:40, 8:40] = True
    photo[patch & strands] = BEIGE
    photo[patch & ~strands] = BROWN
    return photo, patch


def test_the_hot_region_and_the_rest_are_described_as_they_look() -> None:
    photo, patch = noodle_photo()
    cam = np.where(patch, 1.0, 0.1).astype(np.float32)
    look = appearance(Image.fromarray(photo), cam)
    assert look.hot.colours[0] in ("beige", "cream", "white")
    assert look.hot.texture == "strand-like edges"
    assert look.rest.colours == ["dark brown"] and look.rest.texture == "smooth surface"
    assert look.hot.brightness > look.rest.brightness + 0.3
    assert look.hot.edge_density > 0.1 > look.rest.edge_density
    # A cam at its native resolution is resized to the photo; the same region comes out.
    assert appearance(photo, cam[::4, ::4]).hot.colours[0] == look.hot.colours[0]


def test_noise_is_not_strands_and_an_empty_region_is_said_to_be_empty() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (48, 48, 3)).astype(np.uint8)
    assert describe_region(noise, np.ones((48, 48), bool)).texture == "mixed"
    empty = describe_region(noise, np.zeros((48, 48), bool))
    assert empty.colours == [] and empty.texture == "none"


def test_every_colour_prototype_gets_its_own_name() -> None:
    names = colour_names(np.array(list(COLOURS.values())))
    assert [list(COLOURS)[i] for i in names] == list(COLOURS)


# --- neighbours ---------------------------------------------------------------------------------------

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _flat(path: Path, colour: tuple[int, int, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    arr = np.clip(rng.normal(colour, 3, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_the_nearest_training_photos_of_a_red_photo_are_the_red_ones(tmp_path: Path) -> None:
    red, blue = (200, 30, 30), (40, 60, 200)
    samples = [(_flat(tmp_path / "red" / f"{i}.png", red, i), 0) for i in range(3)]
    samples += [(_flat(tmp_path / "blue" / f"{i}.png", blue, 10 + i), 1) for i in range(3)]
    transform = eval_transform(SIZE, MEAN, STD)
    dataset = NoodleImages(samples, transform)
    model = _convnext().train()
    index = FeatureIndex.build(model, dataset, batch_size=4, class_names=["red", "blue"])
    assert model.training and index.features.shape == (6, 320)
    assert np.linalg.norm(index.features, axis=1) == pytest.approx(np.ones(6), abs=1e-5)

    query = transform(Image.open(_flat(tmp_path / "query.png", red, 99))).unsqueeze(0)
    (found,) = index.nearest(query, k=4)
    assert [n.label for n in found[:3]] == ["red"] * 3 and found[3].label == "blue"
    assert all(n.similarity > 0.99 for n in found[:3]) and found[3].similarity < found[2].similarity
    assert {n.file for n in found[:3]} == {str(p) for p, _ in samples[:3]}

    own = torch.stack([dataset[0][0]])  # a training photo is not its own neighbour
    (found,) = index.nearest(own, k=2, files=[str(samples[0][0])])
    assert str(samples[0][0]) not in [n.file for n in found] and [n.label for n in found] == ["red"] * 2

    index.save(tmp_path / "index.npz")
    again = FeatureIndex.load(tmp_path / "index.npz", model)
    assert again.files == index.files and again.labels == index.labels
    assert np.array_equal(again.features, index.features)


# --- Evidence: lines and round trip -------------------------------------------------------------------


def full_evidence() -> Evidence:
    cam = np.zeros((9, 9))
    cam[:3, 6:] = 1.0  # upper right
    facts = heatmap_facts(cam)
    return Evidence(
        file="bowl.jpg",
        class_names=NAMES,
        probabilities={"ramen": 0.42, "udon": 0.40, "soba": 0.18},
        predicted="ramen",
        true_label="udon",
        contrast_class="udon",
        facts={"gradcam": facts, "scorecam": facts},
        contrastive=heatmap_facts(cam.T),
        counterfactual=Counterfactual(
            original={"ramen": 0.42, "udon": 0.40, "soba": 0.18},
            hidden={"ramen": 0.12, "udon": 0.70, "soba": 0.18},
            kept={"ramen": 0.55, "udon": 0.30, "soba": 0.15},
            predicted="ramen",
            drop=0.30,
            hot_area=0.23,
        ),
        appearance=Appearance(
            RegionLook(["beige", "white"], 0.7, 0.3, "strand-like edges"),
            RegionLook(["dark brown"], 0.2, 0.01, "smooth surface"),
        ),
        neighbours=[
            Neighbour(f"train/{c}/{i}.jpg", c, 0.91 - 0.02 * i)
            for i, c in enumerate(["udon", "udon", "udon", "ramen", "udon"])
        ],
        trust={
            "scorecam": MapTrust("scorecam", 0.21, 0.62, 0.35, 0.40),
            "gradcam": MapTrust("gradcam", 0.30, 0.45, 0.28, 0.40),
        },
        agreement=0.71,
    )


def test_lines_are_numbered_and_say_what_the_evidence_says() -> None:
    lines = full_evidence().lines()
    assert len(lines) == 10  # prediction, 2 maps, contrastive, hidden, kept, look, neighbours, trust, r
    for i, line in enumerate(lines, 1):
        assert line.startswith(f"{i}. ")
    assert "predicted ramen with 42% confidence" in lines[0] and "udon (wrong)" in lines[0]
    assert lines[1].startswith("2. ScoreCAM:") and "upper right" in lines[1]
    assert lines[2].startswith("3. GradCAM:") and "uninformative" in lines[2]
    assert "uninformative" not in lines[1]
    assert "ramen over udon" in lines[3] and "lower left" in lines[3]
    assert "(23% of the image) drops ramen from 42% to 12%; the prediction becomes udon" in lines[4]
    assert "Keeping only the hot region gives ramen 55%" in lines[5]
    assert (
        "beige and white, bright, with strand-like edges" in lines[6]
        and "dark brown, dark, smooth" in lines[6]
    )
    assert "4 of 5 are udon, 1 ramen" in lines[7] and "disagree" in lines[7] and "0.91\u20130.83" in lines[7]
    beats = "ScoreCAM beats a random map (deletion 0.210 vs 0.350, insertion 0.620 vs 0.400): informative"
    assert beats in lines[8]
    assert "GradCAM does not beat a random map" in lines[8] and "uninformative" in lines[8]
    assert lines[9] == "10. ScoreCAM and GradCAM agree (r = 0.71)."


def test_missing_evidence_has_no_line() -> None:
    e = full_evidence()
    bare = Evidence(
        e.file, e.class_names, e.probabilities, "ramen", None, "udon", {"scorecam": e.facts["scorecam"]}
    )
    lines = bare.lines()
    assert [line[:3] for line in lines] == ["1. ", "2. "]
    assert "the true label is not known" in lines[0]


def test_evidence_round_trips_through_json() -> None:
    e = full_evidence()
    d = json.loads(json.dumps(e.to_dict()))
    assert d["trust"]["gradcam"]["informative"] is False and d["trust"]["scorecam"]["informative"] is True
    assert Evidence.from_dict(d) == e
    assert Evidence.from_dict(json.loads(json.dumps(Evidence.from_dict(d).to_dict()))).lines() == e.lines()


# --- gather_evidence ----------------------------------------------------------------------------------


def test_gather_evidence_collects_what_the_model_does(tmp_path: Path) -> None:
    model = QuadrantModel()
    x = images(2)
    pred = model.eval()(x).argmax(1).tolist()
    assert pred == [0, 0]
    photos = [Image.fromarray(np.full((SIZE, SIZE, 3), BEIGE, np.uint8)) for _ in range(2)]
    heatmaps = explain_batch(model, x, pred, "both", QUADRANTS)
    samples = [(tmp_path / f"{i}.png", i % 2) for i in range(4)]
    for i, (path, _) in enumerate(samples):
        Image.fromarray(np.full((SIZE, SIZE, 3), 40 * i, np.uint8)).save(path)
    dataset = NoodleImages(samples, eval_transform(SIZE, MEAN, STD))
    index = FeatureIndex.build(model, dataset, batch_size=2, class_names=NAMES)

    files = ["a.jpg", "b.jpg"]
    out = gather_evidence(
        model,
        x,
        photos,
        pred,
        [1, None],
        heatmaps,
        index=index,
        settings=QUADRANTS,
        files=files,
        class_names=NAMES,
    )
    wrong, unknown = out
    assert wrong.file == "a.jpg" and wrong.predicted == "ramen" and wrong.verdict == "wrong"
    assert wrong.contrast_class == "udon"  # the true class, as the prediction is wrong
    assert unknown.true_label is None and unknown.contrast_class == "udon"  # the runner-up
    for e in out:
        assert e.contrastive is not None and heat_in_upper_left(e.contrastive)
        assert e.counterfactual is not None and e.counterfactual.drop > 0.3
        assert e.appearance is not None and e.appearance.hot.colours == ["beige"]
        assert set(e.trust) == {"scorecam", "gradcam"} and e.trust["scorecam"].informative
        assert e.agreement is not None and e.agreement > 0.5
        assert len(e.neighbours) == 4 and {n.label for n in e.neighbours} == {"ramen", "udon"}
        assert Evidence.from_dict(json.loads(json.dumps(e.to_dict()))) == e
        assert e.lines()[0].startswith("1. The classifier predicted ramen")

"""What made the model decide, found by changing the photo: proven on models with a planted shortcut whose
cause is known (a tag in a corner, a colour cast, a frame), through the evidence's lines, a group's
summary, the templates and the grounding gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from toy_models import NAMES, QUADRANTS, SIZE, QuadrantModel, identity_conv, images

from noodlenext.callbacks.mistake_groups import confusion_groups, examine
from noodlenext.callbacks.samples import Sample
from noodlenext.data.datamodule import NoodleImages
from noodlenext.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from noodlenext.explain.appearance import colour_histogram
from noodlenext.explain.causes import contrast_part, hide_box, occlusion_scan, whole_photo_changes
from noodlenext.explain.evidence import CAUSE_KINDS, CausalRegion, Evidence, GlobalChange
from noodlenext.explain.facts import heatmap_facts
from noodlenext.explain.gather import gather_evidence
from noodlenext.explain.groups import Reference, group_evidence
from noodlenext.explain.heatmaps import explain_batch
from noodlenext.explain.neighbours import FeatureIndex
from noodlenext.explain.probes import PhotoProbe
from noodlenext.explain.settings import HeatmapSettings
from noodlenext.explain.templates import group_template, photo_template
from noodlenext.llm.grounding import check_explanation

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

CLASSES = ["spaghetti", "ramen", "udon"]
BEIGE, MAGENTA, BLUE, YELLOW = (215, 190, 145), (255, 0, 200), (40, 80, 255), (235, 200, 40)
MEAN = torch.tensor(IMAGENET_MEAN)[:, None, None]
STD = torch.tensor(IMAGENET_STD)[:, None, None]


class Shortcut(nn.Module):
    """Logits from one planted cue of the photo (RGB 0..1, undone from ImageNet's normalisation):
    spaghetti a constant, udon a gain times the cue; ramen never. A parameter, so it is a model."""

    GAINS = {"tag": 6.0, "cast": 12.0, "frame": 6.0, "caption": 12.0}

    def __init__(self, cue: str) -> None:
        super().__init__()
        self.cue, self.gain = cue, self.GAINS[cue]
        self.bias = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: Tensor) -> Tensor:
        rgb = x * STD + MEAN
        r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
        if self.cue == "tag":  # magenta in the lower right eighth of the side
            e = SIZE // 4
            cue = (r - g).clamp(min=0)[:, -e:, -e:].mean((1, 2))
        elif self.cue == "cast":  # the whole photo bluer than red
            cue = (b - r).mean((1, 2))
        elif self.cue == "caption":  # white along the bottom sixth, the whole width
            cue = (((r + g + b) / 3 - 0.9) / 0.05).clamp(0, 1)[:, -SIZE // 6 :, :].mean((1, 2)) - 0.2
        else:  # "frame": yellow in the outer 2 pixels
            ring = torch.ones(SIZE, SIZE, dtype=torch.bool)
            ring[2:-2, 2:-2] = False
            cue = ((r + g) / 2 - b).clamp(min=0)[:, ring].mean(1)
        udon = self.gain * cue
        return torch.stack([self.bias.expand_as(udon), torch.full_like(udon, -5.0), udon], 1)


def photo(plant: str | None = None, seed: int = 0) -> np.ndarray:
    """A beige noodle-ish photo (noisy), with a planted shortcut."""
    rng = np.random.default_rng(seed)
    a = np.clip(rng.normal(BEIGE, 6, (SIZE, SIZE, 3)), 0, 255)
    if plant == "tag":
        a[-6:, -6:] = MAGENTA
    elif plant == "cast":
        a = 0.4 * a + 0.6 * np.array(BLUE)
    elif plant == "caption":
        a[-5:] = (250, 250, 250)
    elif plant == "frame":
        a[:2], a[-2:], a[:, :2], a[:, -2:] = YELLOW, YELLOW, YELLOW, YELLOW
    return a.astype(np.uint8)


def batch(arrays: list[np.ndarray]) -> Tensor:
    tf = eval_transform(SIZE, IMAGENET_MEAN, IMAGENET_STD)
    return torch.stack([tf(Image.fromarray(a)) for a in arrays])


# --- hiding one part at a time ------------------------------------------------------------------------


def test_hiding_one_part_at_a_time_finds_a_corner_tag_and_that_its_colour_is_out_of_place() -> None:
    model = Shortcut("tag")
    arrays = [photo("tag", s) for s in range(2)]
    x = batch(arrays)
    assert model(x).argmax(1).tolist() == [2, 2]  # udon, from the tag alone
    elsewhere = np.zeros((2, SIZE, SIZE))
    elsewhere[:, :8, :8] = 1.0  # a map that is hot in the upper left, far from the tag
    spaghetti = colour_histogram(np.concatenate([photo(None, 10 + s).reshape(-1, 3) for s in range(3)]))
    found = occlusion_scan(
        model, x, arrays, [2, 2], [0, None], CLASSES, cams=elsewhere, method="scorecam",
        training_colours={"spaghetti": spaghetti},
    )  # fmt: skip
    tagged, unknown = found
    assert tagged.region == "lower right" and tagged.places == 49
    assert tagged.box[2] == pytest.approx(1.0) and tagged.box[3] == pytest.approx(1.0)  # the corner square
    assert tagged.becomes == "spaghetti" and tagged.turned_back and tagged.after < 0.5 < tagged.before
    assert tagged.truth_after is not None and tagged.truth_after > tagged.truth_before
    assert tagged.heat == 0.0 and tagged.map == "scorecam"  # the map puts none of its heat on the cause
    assert "pink" in tagged.colours and [c for c, _ in tagged.unusual] == ["pink"]
    assert tagged.unusual[0][1] < 0.001  # the spaghetti photos have (almost) no such pixel
    assert unknown.truth is None and not unknown.turned_back and unknown.unusual == ()


def test_hide_box_hides_the_same_part_in_other_photos() -> None:
    """What a group's reference photos get: the part that mattered in the mistakes, hidden in each."""
    model = Shortcut("tag")
    tagged, plain = photo("tag", 0), photo(None, 1)
    x = batch([tagged, plain])
    out = hide_box(model, x, (0.75, 0.75, 1.0, 1.0), "lower right", [2, 0], [0, 0], CLASSES)
    assert [c.region for c in out] == ["lower right"] * 2 and out[0].box == (0.75, 0.75, 1.0, 1.0)
    assert out[0].turned_back and out[0].after < 0.5 < out[0].before  # the tag is gone
    assert out[1].becomes == "spaghetti" and not out[1].turned_back  # nothing to undo


def test_a_caption_along_the_bottom_is_found_by_hiding_the_bottom_strip() -> None:
    model = Shortcut("caption")
    arrays = [photo("caption", 0)]
    x = batch(arrays)
    assert model(x).argmax(1).tolist() == [2]
    (found,) = occlusion_scan(model, x, arrays, [2], [0], CLASSES)
    # No square of a quarter of the side holds enough of the caption to change the prediction; the
    # bottom strip does, and it is named with the three regions it covers.
    assert found.region == "bottom strip" and found.turned_back and found.strips == 4
    assert found.regions == ("lower left", "lower center", "lower right") and found.area == pytest.approx(
        0.25
    )
    line = _evidence(causal=found).lines()[1]
    assert "the bottom strip (lower left, lower center and lower right) matters most" in line
    assert "hiding it (25% of the image)" in line


def test_a_photo_without_a_shortcut_has_no_part_that_matters() -> None:
    model = Shortcut("tag")
    arrays = [photo(None, 3)]
    (found,) = occlusion_scan(model, batch(arrays), arrays, [0], [0], CLASSES)
    assert found.before - found.after < 0.01 and found.becomes == "spaghetti"
    lines = _evidence(causal=found).lines()
    assert "no part matters much" in lines[1]


# --- changing the whole photo ---------------------------------------------------------------------------


def _by_change(changes: list[GlobalChange]) -> dict[str, GlobalChange]:
    return {c.change: c for c in changes}


def test_a_colour_cast_is_found_by_taking_the_colour_away_and_a_warmer_tint() -> None:
    model = Shortcut("cast")
    x = batch([photo("cast", 0)])
    (changes,) = whole_photo_changes(model, x, [2], [0], CLASSES)
    by = _by_change(changes)
    assert list(by) == [
        "grayscale", "quarter_resolution", "jpeg", "warmer", "cooler", "mirror",
        "border_crop", "surroundings",
        "remove_colour",
    ]  # fmt: skip
    for flips in ("grayscale", "warmer", "remove_colour"):
        assert by[flips].becomes == "spaghetti" and by[flips].turned_back and by[flips].notable, flips
    assert by["remove_colour"].colour == "blue" and by["remove_colour"].setting > 0.5
    for same in ("mirror", "quarter_resolution"):
        assert by[same].becomes == "udon" and not by[same].notable, same
    assert by["cooler"].after > by["cooler"].before  # bluer still


def test_a_frame_is_found_by_cropping_the_border_and_hiding_the_surroundings() -> None:
    model = Shortcut("frame")
    arrays = [photo("frame", 0)]
    x = batch(arrays)
    (changes,) = whole_photo_changes(model, x, [2], [0], CLASSES)
    by = _by_change(changes)
    assert by["border_crop"].turned_back and by["surroundings"].turned_back
    assert not by["mirror"].notable
    (part,) = occlusion_scan(model, x, arrays, [2], [0], CLASSES)
    assert not part.turned_back  # no one square holds the frame


def test_changes_are_rerun_in_eval_mode_and_unknown_changes_are_refused() -> None:
    model = QuadrantModel().train()
    x = images(2)
    (a, _) = whole_photo_changes(model, x, [0, 0], [None, None], NAMES, remove_colours=False)
    assert model.training and len(a) == 8 and all(c.truth is None and not c.turned_back for c in a)
    with pytest.raises(ValueError, match="unknown whole-photo changes \\['sepia'\\]"):
        whole_photo_changes(model, x, [0, 0], [None, None], NAMES, changes=["sepia"])


# --- claims, lines, templates and the gate --------------------------------------------------------------


def _evidence(causal: CausalRegion | None = None, changes: list[GlobalChange] | None = None) -> Evidence:
    cam = np.zeros((9, 9))
    cam[:3, :3] = 1.0  # the map: upper left
    return Evidence(
        file="plate.jpg",
        class_names=CLASSES,
        probabilities={"spaghetti": 0.02, "ramen": 0.01, "udon": 0.97},
        predicted="udon",
        true_label="spaghetti",
        contrast_class="spaghetti",
        facts={"scorecam": heatmap_facts(cam)},
        causal=causal,
        changes=changes or [],
    )


TAG = CausalRegion(
    region="lower right", box=(0.75, 0.75, 1.0, 1.0), predicted="udon", before=0.97, after=0.08,
    becomes="spaghetti", truth="spaghetti", truth_before=0.02, truth_after=0.9, colours=("pink", "beige"),
    unusual=(("pink", 0.0004),), heat=0.01, map="scorecam", places=49, strips=4,
)  # fmt: skip


def _change(name: str, after: float, becomes: str, **kw) -> GlobalChange:
    return GlobalChange(name, "udon", 0.97, after, becomes, "spaghetti", 1 - after, **kw)


CHANGES = [
    _change("grayscale", 0.95, "udon"),
    _change("border_crop", 0.30, "spaghetti", setting=0.12),
    _change("mirror", 0.97, "udon"),
    _change("remove_colour", 0.93, "udon", setting=0.2, colour="pink"),
]


def test_the_cause_leads_the_lines_and_the_map_follows() -> None:
    e = _evidence(TAG, CHANGES)
    lines = e.lines()
    assert lines[1] == (
        "2. Hiding one part at a time (49 squares and 4 edge strips), the lower right square matters most: "
        "hiding it (6% of the image) drops udon from 97% to 8% and raises spaghetti from 2% to 90%; the "
        "prediction becomes spaghetti; the ScoreCAM map puts 1% of its heat there."
    )
    assert lines[2] == (
        "3. The lower right square is mostly pink and beige; pink is rare in the spaghetti training photos "
        "(less than 1% of their pixels)."
    )
    # Only the changes that flip the prediction or move it by more than 10 points have a line.
    assert lines[3] == (
        "4. With the border cropped off (12% of each side), udon drops from 97% to 30%; the prediction "
        "becomes spaghetti."
    )
    assert lines[4].startswith("5. ScoreCAM:") and e.map_lines()[5][0] == "scorecam"
    assert [c.kind for c in e.claims()[1:4]] == ["occlusion", "occlusion_look", "whole_photo"]
    assert Evidence.from_dict(json.loads(json.dumps(e.to_dict()))) == e


def test_when_no_whole_photo_change_matters_one_line_says_so() -> None:
    quiet = [
        _change("grayscale", 0.95, "udon"),
        _change("remove_colour", 0.93, "udon", setting=0.2, colour="red"),
    ]
    lines = _evidence(changes=quiet).lines()
    assert lines[1] == (
        "2. Changing the whole photo (grayscale, the red taken out) moves udon by 4 points at most (the "
        "largest: the red taken out); none of these changes moves it by more than 10 points."
    )


def test_the_template_leads_with_the_cause_and_passes_the_gate() -> None:
    e = _evidence(TAG, CHANGES)
    text = photo_template(e)
    assert text.startswith(
        "The classifier took this spaghetti photo for udon, with 97% confidence [1]. Hiding the lower right "
        "of the photo drops udon from 97% to 8% and raises spaghetti from 2% to 90%, and the prediction "
        "becomes spaghetti [2]. That part looks pink and beige, and pink is a colour the spaghetti training "
        "photos rarely show [3]."
    )
    assert check_explanation(text, e).passed, check_explanation(text, e).reasons


@pytest.mark.parametrize(
    ("answer", "passes"),
    [
        (
            "The pink tag in the lower right made it udon: hiding it turns the photo into spaghetti [2, 3].",
            True,
        ),
        ("Cropping the border turns it into spaghetti [4].", True),
        ("Hiding the upper left turns it into spaghetti [2].", False),  # the wrong place
        ("Hiding the lower right drops udon to 40% [2].", False),  # a number no line gives
        ("The green garnish in the lower right made it udon [2, 3].", False),  # a colour nobody measured
        ("In grayscale the photo becomes spaghetti [4].", False),  # no line says so
    ],
)
def test_the_gate_holds_an_answer_about_the_cause_to_the_lines(answer: str, passes: bool) -> None:
    verdict = check_explanation(
        f"The classifier took this spaghetti photo for udon [1]. {answer}", _evidence(TAG, CHANGES)
    )
    assert verdict.passed is passes, verdict.reasons


def _photo_evidence(i: int, region: str, back: bool, grey_back: bool) -> Evidence:
    causal = CausalRegion(
        region=region, box=(0.75, 0.75, 1.0, 1.0), predicted="udon", before=0.9, after=0.2 if back else 0.8,
        becomes="spaghetti" if back else "udon", truth="spaghetti", truth_before=0.1, truth_after=0.7,
        colours=("pink",), places=49,
    )  # fmt: skip
    grey = _change("grayscale", 0.1 if grey_back else 0.9, "spaghetti" if grey_back else "udon")
    return _evidence(causal, [grey, _change("mirror", 0.97, "udon")])


def test_a_group_counts_what_each_change_turns_back_and_leads_with_the_most() -> None:
    photos = [
        _photo_evidence(0, "lower right", True, True),
        _photo_evidence(1, "lower right", True, False),
        _photo_evidence(2, "center", False, True),
    ]
    cams = [np.eye(9)] * 3
    group = group_evidence(photos, cams, count=3, method="scorecam")
    kinds = [c.kind for c in group.lead]
    assert kinds == ["group_occlusion", "group_whole_photo"] and all(k in CAUSE_KINDS for k in kinds)
    lines = group.lines()
    assert lines[1] == (
        "2. Hiding one part at a time, the part that matters most is the lower right in 2 of 3 (2 turned "
        "back), center in 1 of 3; hiding it turns 2 of 3 back to spaghetti."
    )
    assert (
        lines[2]
        == "3. In grayscale (the colour taken away), 2 of 3 become spaghetti; udon goes from 97% to 37% on "
        "average."
    )
    size = next(c for c in group.summary if c.kind == "group_size")
    assert size.fields["map_line"] == 4 and "line 4 their mean ScoreCAM map" in lines[4]
    text = group_template(group)
    assert "Hiding the lower right turns 2 of 3 back into spaghetti [2]." in text
    assert check_explanation(text, group).passed, check_explanation(text, group).reasons


def test_a_change_that_turns_the_photos_it_got_right_as_often_is_no_cause() -> None:
    """Grayscale turns 2 of 3 mistakes back, but also every udon photo the classifier got right into
    spaghetti: the model reads colour everywhere, not a shortcut of these mistakes. Hiding the lower right
    turns 2 of 3 back and none of the right ones: it leads."""
    photos = [
        _photo_evidence(0, "lower right", True, True),
        _photo_evidence(1, "lower right", True, False),
        _photo_evidence(2, "center", False, True),
    ]
    kept = CausalRegion("center", (0.4, 0.4, 0.6, 0.6), "udon", 0.9, 0.85, "udon", "spaghetti", 0.1, 0.12)
    grey = _change("grayscale", 0.1, "spaghetti")
    reference = Reference([kept] * 3, [[grey, _change("mirror", 0.97, "udon")]] * 3)
    group = group_evidence(photos, [np.eye(9)] * 3, count=3, method="scorecam", reference=reference)
    assert [c.kind for c in group.lead] == ["group_occlusion", "group_whole_photo"]
    lines = group.lines()
    assert lines[1].endswith(
        "hiding it turns 2 of 3 back to spaghetti (it turns none of the 3 udon photos it got right into "
        "spaghetti)."
    )
    assert "2 of 3 become spaghetti (it turns all 3 udon photos it got right into spaghetti)" in lines[2]
    # Without the reference, grayscale and the occlusion tie at 2 of 3; the smaller edit leads.
    alone = group_evidence(photos, [np.eye(9)] * 3, count=3, method="scorecam")
    assert [c.kind for c in alone.lead] == ["group_occlusion", "group_whole_photo"]
    text = group_template(group)
    assert check_explanation(text, group).passed, check_explanation(text, group).reasons


# --- where they come from: the feature index's colours and gather_evidence ------------------------------


def test_the_feature_index_keeps_each_training_photos_colours(tmp_path: Path) -> None:
    samples = []
    for i, (colour, label) in enumerate([(BEIGE, 0), (BEIGE, 0), (BLUE, 1)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((SIZE, SIZE, 3), colour, np.uint8)).save(path)
        samples.append((path, label))
    model = QuadrantModel()
    index = FeatureIndex.build(
        model, NoodleImages(samples, eval_transform(SIZE, IMAGENET_MEAN, IMAGENET_STD)), class_names=NAMES
    )
    colours = index.class_colours()
    assert set(colours) == {"ramen", "udon"}
    beige_bin = int(np.argmax(colour_histogram(np.array([BEIGE]))))
    assert colours["ramen"][beige_bin] == pytest.approx(1.0) and colours["udon"][beige_bin] == 0.0
    index.save(tmp_path / "index.npz")
    assert np.array_equal(FeatureIndex.load(tmp_path / "index.npz", model).colours, index.colours)
    # An index saved before colours were kept still loads, without them.
    np.savez(
        tmp_path / "old.npz",
        features=index.features,
        files=np.array(index.files),
        labels=np.array(index.labels),
    )
    old = FeatureIndex.load(tmp_path / "old.npz", model)
    assert old.colours is None and old.class_colours() == {} and old.labels == index.labels


def test_gather_evidence_runs_the_causes_unless_asked_not_to() -> None:
    model = QuadrantModel()
    x = images(2)
    pred = model.eval()(x).argmax(1).tolist()
    rgb = ((x * STD + MEAN).clamp(0, 1) * 255).byte().permute(0, 2, 3, 1).numpy()
    photos = [Image.fromarray(a) for a in rgb]
    heatmaps = explain_batch(model, x, pred, "gradcam", QUADRANTS)
    args = (model, x, photos, pred, [1, None], heatmaps)
    found = gather_evidence(*args, settings=QUADRANTS, class_names=NAMES)
    for e in found:
        assert e.causal is not None and e.causal.region in (
            "upper left",
            "upper center",
            "middle left",
            "center",
        )
        assert e.causal.drop > 0 and e.causal.map == "gradcam" and e.causal.heat is not None
        assert [c.change for c in e.changes][:8] == [
            "grayscale", "quarter_resolution", "jpeg", "warmer", "cooler", "mirror",
        "border_crop", "surroundings",
        ]  # fmt: skip
        assert e.claims()[1].kind == "occlusion"
    assert found[0].causal.truth == "udon" and found[1].causal.truth is None
    bare = gather_evidence(*args, settings=QUADRANTS, class_names=NAMES, causes=False)
    assert all(e.causal is None and e.changes == [] for e in bare)
    assert [c.kind for c in bare[0].claims()][1] == "map"


def test_a_change_barely_more_common_in_the_mistakes_does_not_lead_the_paragraph() -> None:
    """A change that turns 2 of 3 mistakes back and 1 of 2 right photos over is a line of the evidence,
    not the cause a paragraph starts with (explain.templates.SPECIFIC_MARGIN)."""
    photos = [
        _photo_evidence(0, "center", False, True),
        _photo_evidence(1, "center", False, True),
        _photo_evidence(2, "center", False, False),
    ]
    kept = CausalRegion("center", (0.4, 0.4, 0.6, 0.6), "udon", 0.9, 0.85, "udon", "spaghetti", 0.1, 0.12)
    flipped, same = _change("grayscale", 0.1, "spaghetti"), _change("grayscale", 0.9, "udon")
    reference = Reference([kept] * 2, [[flipped], [same]])
    group = group_evidence(photos, [np.eye(9)] * 3, count=3, method="scorecam", reference=reference)
    assert group.lead[0].kind == "group_whole_photo" and "2 of 3 become spaghetti" in group.lines()[1]
    text = group_template(group)
    assert "grayscale" not in text.lower() and check_explanation(text, group).passed


# --- a part compared over a group: the shortcut, not the part any photo needs --------------------------


class Fragile(nn.Module):
    """A model that reads a white caption along the bottom and how bright the food in the centre is: the
    spaghetti photos with the caption are udon by a hair, so hiding the food flips them as surely as
    hiding the caption; it flips the udon photos it gets right (bright food, no caption) too. The
    identity 1x1 `stem` is the layer its maps explain."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = identity_conv()

    def forward(self, x: Tensor) -> Tensor:
        lum = (self.stem(x) * STD + MEAN).mean(1)  # (B, H, W)
        caption = (2 * ((lum[:, -SIZE // 6 :, :] - 0.93) / 0.05).clamp(0, 1).mean((1, 2))).clamp(max=1)
        food = ((lum[:, FOOD, FOOD] - 0.6) / 0.3).clamp(0, 1).mean((1, 2))
        udon = 4.5 * caption + 10 * food - 8
        return torch.stack([torch.zeros_like(udon), torch.full_like(udon, -5.0), udon], 1)


FOOD = slice(3 * SIZE // 8, 5 * SIZE // 8)  # the dish: the centre square of the 7x7 grid of hidden parts


def dish(food: tuple[int, int, int], caption: bool, seed: int) -> np.ndarray:
    """A dark table with a square of food in the centre, and a white caption along the bottom or not."""
    rng = np.random.default_rng(seed)
    a = np.clip(rng.normal((80, 75, 70), 4, (SIZE, SIZE, 3)), 0, 255)
    a[FOOD, FOOD] = np.clip(rng.normal(food, 4, (SIZE // 4, SIZE // 4, 3)), 0, 255)
    if caption:
        a[-5:] = (250, 250, 250)
    return a.astype(np.uint8)


def test_a_group_compares_every_part_against_the_photos_it_got_right_and_finds_the_caption(
    tmp_path: Path,
) -> None:
    """One photo at a time, hiding a square of the food flips a captioned spaghetti photo to spaghetti,
    and that square is what each photo's evidence names. Over the group, hiding the same square also
    turns every udon photo it got right into spaghetti, while hiding the bottom strip (the caption) turns
    the mistakes back and none of them: the group (`examine`, as the mistakes report runs it) leads with
    the caption."""
    model = Fragile().eval()
    arrays = [dish(BEIGE, True, s) for s in range(3)] + [
        dish((235, 230, 225), False, 10 + s) for s in range(3)
    ]
    files = []
    for i, a in enumerate(arrays):
        path = tmp_path / ("spaghetti" if i < 3 else "udon") / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(a).save(path)
        files.append((path, 0 if i < 3 else 2))
    dataset = NoodleImages(files, eval_transform(SIZE, IMAGENET_MEAN, IMAGENET_STD))
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        probs = model(x).softmax(1)
    samples = [Sample(i, t, int(probs[i].argmax()), float(-probs[i, t].log()), probs[i].tolist())
               for i, (_, t) in enumerate(files)]  # fmt: skip
    assert [s.pred for s in samples] == [2] * 6  # udon, the spaghetti photos from the caption by a hair
    photos = occlusion_scan(model, x[:3], arrays[:3], [2] * 3, [0] * 3, CLASSES)
    assert {p.region for p in photos} == {"center"} and all(p.turned_back for p in photos)

    [group] = confusion_groups(samples, CLASSES, max_per_group=3)
    examine(
        [group], dataset, model, CLASSES, methods="gradcam", settings=HeatmapSettings(target_layer="stem")
    )
    assert group.errors == [] and len(group.references) == 3
    assert [p.evidence.causal.region for p in group.examined] == ["center"] * 3
    assert group.evidence.lead[0].kind == "group_occlusion"
    assert group.evidence.lines()[1] == (
        "2. Hiding each of 53 parts in every photo, the bottom strip turns the most back beyond the photos "
        "it got right: hiding it turns all 3 back to spaghetti (it turns none of the 3 udon photos it got "
        "right into spaghetti)."
    )
    # Each photo's own part, the food, turns its mistake back too, and every udon photo it got right:
    # that claim stays, last.
    assert group.evidence.lines()[4] == (
        "5. Hiding one part at a time, the part that matters most is the center in all 3 (3 turned back); "
        "hiding it turns all 3 back to spaghetti (it turns all 3 udon photos it got right into spaghetti)."
    )
    text = group_template(group.evidence)
    assert "Hiding the bottom strip turns all 3 back into spaghetti" in text and "center" not in text
    assert check_explanation(text, group.evidence).passed, check_explanation(text, group.evidence).reasons
    # An answer in other words that keeps to line 2 passes; one that moves the part or the count fails.
    head = "The classifier took 3 spaghetti photos for udon [1]. "
    for answer, passes in [
        ("When the strip along the bottom is hidden, every one of the 3 goes back to spaghetti [2].", True),
        ("When the upper left is hidden, all 3 go back to spaghetti [2].", False),
        ("When the bottom strip is hidden, 2 of the 3 go back to spaghetti [2].", False),
    ]:
        verdict = check_explanation(head + answer, group.evidence)
        assert verdict.passed is passes, (answer, verdict.reasons)
    # Directly: the caption's strip; with no photos it got right to compare, a part that turns the
    # mistakes back still comes out; when hiding no part turns any back, none does.
    assert contrast_part(model, x[:3], 2, 0, x[3:]) == (pytest.approx((0.75, 0.0, 1.0, 1.0)), "bottom strip")
    assert contrast_part(model, x[:3], 2, 0, x[:0]) is not None
    assert contrast_part(model, x[3:], 2, 1, x[3:]) is None


def test_a_part_compared_over_the_group_that_is_every_photos_own_part_is_one_line() -> None:
    photos = [_photo_evidence(i, "lower right", True, False) for i in range(3)]
    tag = CausalRegion(
        "lower right", (0.75, 0.75, 1.0, 1.0), "udon", 0.9, 0.2, "spaghetti", "spaghetti", 0.1, 0.7
    )
    kept = CausalRegion(
        "lower right", (0.75, 0.75, 1.0, 1.0), "udon", 0.9, 0.85, "udon", "spaghetti", 0.1, 0.1
    )
    reference = Reference([kept] * 3, [[_change("mirror", 0.97, "udon")]] * 3, [tag] * 3, [kept] * 3, 53)
    group = group_evidence(photos, [np.eye(9)] * 3, count=3, method="scorecam", reference=reference)
    parts = [c for c in group.lead if c.kind == "group_occlusion"]
    assert len(parts) == 1 and parts[0].fields["compared"] == 53
    # A photo whose own part is elsewhere keeps both lines.
    other = [*photos[:2], _photo_evidence(2, "center", False, False)]
    group = group_evidence(other, [np.eye(9)] * 3, count=3, method="scorecam", reference=reference)
    assert [bool(c.fields.get("compared")) for c in group.lead if c.kind == "group_occlusion"] == [
        True,
        False,
    ]


# --- hiding by filling in: a grey square is a tag too --------------------------------------------------


class OddCorner(nn.Module):
    """Udon from anything in the lower right ninth that is not the beige of the dish: a tag, or a grey
    square where a part was hidden with the mean colour. The identity 1x1 `stem` is the maps' layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = identity_conv()

    def forward(self, x: Tensor) -> Tensor:
        rgb = self.stem(x) * STD + MEAN
        beige = torch.tensor(BEIGE, dtype=rgb.dtype)[:, None, None] / 255
        e = SIZE // 3
        odd = (rgb[:, :, -e:, -e:] - beige).abs().mean((1, 2, 3))
        udon = 40 * odd - 3
        return torch.stack([torch.zeros_like(udon), torch.full_like(udon, -5.0), udon], 1)


def test_a_hidden_part_is_filled_in_so_a_tag_is_not_replaced_by_a_grey_one() -> None:
    """Hidden with the mean colour, the corner would still be "odd" and stay udon; filled in from the
    dish around it, it is beige and the prediction becomes spaghetti: in the evidence's scan and in the
    chat's which_part alike."""
    model = OddCorner().eval()
    arrays = [photo("tag", 0)]
    x = batch(arrays)
    assert model(x).argmax(1).tolist() == [2]
    grey = x.clone()
    grey[:, :, -SIZE // 3 :, -SIZE // 3 :] = 0.0  # the mean colour, as the evidence used to hide a part
    assert model(grey).argmax(1).tolist() == [2]  # a grey corner is as odd as the tag
    (found,) = occlusion_scan(model, x, arrays, [2], [0], CLASSES)
    assert found.region == "lower right" and found.turned_back
    heatmaps = explain_batch(model, x, [2], "scorecam", HeatmapSettings(target_layer="stem"))
    (evidence,) = gather_evidence(
        model, x, [Image.fromarray(arrays[0])], [2], [0], heatmaps,
        settings=HeatmapSettings(target_layer="stem"), class_names=CLASSES,
    )  # fmt: skip
    probe = PhotoProbe(model, x, Image.fromarray(arrays[0]), evidence, heatmaps[0]["scorecam"].cam)
    f = probe.run("which_part").finding
    assert (
        max(f.data["drops"], key=f.data["drops"].get) == "lower right"
        and f.data["drops"]["lower right"] > 0.5
    )

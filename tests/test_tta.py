"""Test-time augmentation: the views, their averaged probabilities, and eval and predict using them on
a model that only looks at the left half of the image (so a flip changes its answer predictably)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from known_models import LEFT_HALF
from PIL import Image

from noodlenext.eval import evaluate
from noodlenext.models.classifier import NoodleClassifier
from noodlenext.models.tta import check_tta, five_crops, mean_log_probs, tta_probabilities, tta_views
from noodlenext.predict import predict

SIZE = 16
BRIGHT, DIM = 255, 64  # pixel values of the two halves; normalised with mean = std = 0.5


def normalised(v: int) -> float:
    return 2 * v / 255 - 1


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


# ------------------------------------------------------------------------------ the views
def test_views_of_each_mode() -> None:
    x = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).reshape(2, 3, 10, 10)
    assert len(tta_views(x, "none")) == 1 and tta_views(x, None)[0] is x
    flip = tta_views(x, "flip")
    assert len(flip) == 2 and torch.equal(flip[1], x.flip(-1))
    views = tta_views(x, "flip_crops")
    assert len(views) == 7 and all(v.shape == x.shape for v in views)


def test_five_crops_are_the_corners_and_the_centre_resized_back() -> None:
    # An image whose value is its column: each crop spans 90% of the columns from its own left edge.
    x = torch.arange(20, dtype=torch.float32).expand(1, 1, 20, 20).contiguous()
    tl, tr, bl, br, centre = five_crops(x)
    assert tl[..., 0].mean() < centre[..., 0].mean() < tr[..., 0].mean()
    assert torch.allclose(tl, bl) and torch.allclose(tr, br)
    assert tl.min() >= 0 and tl.max() <= 18 and tr.min() >= 2 and tr.max() <= 19


def test_averaged_probabilities() -> None:
    logits = torch.randn(3, 4, 5)  # 3 views, 4 images, 5 classes
    expected = logits.softmax(-1).mean(0)
    assert torch.allclose(mean_log_probs(logits).exp(), expected, atol=1e-6)
    assert torch.allclose(mean_log_probs(logits, 2.0).exp(), (logits / 2).softmax(-1).mean(0), atol=1e-6)
    assert torch.allclose(mean_log_probs(logits[:1]), logits[0].log_softmax(-1), atol=1e-6)
    probe = lambda x: torch.stack([x.mean(dim=(1, 2, 3)), -x.mean(dim=(1, 2, 3))], 1)  # noqa: E731
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(tta_probabilities(probe, x, "flip"), probe(x).softmax(-1), atol=1e-6)


def test_an_unknown_tta_names_the_option() -> None:
    with pytest.raises(ValueError, match="tta='tencrop'.*none, flip.*flip_crops"):
        check_tta("tencrop")


# ------------------------------------------------------------------------------ eval and predict
@pytest.fixture
def left_half(tmp_path: Path) -> tuple[Path, Path]:
    """A left-half probe's checkpoint, and a test/ tree: `left` images are bright on the left and dim
    on the right, `right` images the mirror. Without TTA the probe gets them all right; a flip shows it
    the dim (left images) or bright (right images) half: it calls everything `left`."""
    model = NoodleClassifier(
        LEFT_HALF, 2, ["left", "right"], image_size=SIZE, mean=(0.5,) * 3, std=(0.5,) * 3, pretrained=False
    )
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)  # what Lightning's checkpoint holds of ours, T = 1
    ckpt = tmp_path / "probe.ckpt"
    torch.save(checkpoint, ckpt)
    root = tmp_path / "data"
    for folder, (left, right) in (("0_left", (BRIGHT, DIM)), ("1_right", (DIM, BRIGHT))):
        (root / "test" / folder).mkdir(parents=True)
        for i in range(3):
            arr = np.full((SIZE, SIZE, 3), right, np.uint8)
            arr[:, : SIZE // 2] = left
            Image.fromarray(arr).save(root / "test" / folder / f"{i}.png")
    return ckpt, root


@pytest.mark.slow
def test_eval_with_each_tta(left_half: tuple[Path, Path], compose_cfg) -> None:  # noqa: ANN001
    ckpt, root = left_half
    acc = {}
    for tta in ("none", "flip", "flip_crops"):
        cfg = compose_cfg("eval", [
            f"ckpt_path={ckpt}", f"data.root={root}", "data.num_workers=0", "data.batch_size=4",
            "trainer=cpu", f"tta={tta}",
        ])  # fmt: skip
        metrics = evaluate(cfg)
        written = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
        assert written["tta"] == tta and written["test/acc"] == pytest.approx(metrics["test/acc"])
        acc[tta] = metrics["test/acc"]
    # flip: `right` images look left half the time and lose; the five crops all keep the left half.
    assert acc == {"none": 1.0, "flip": 0.5, "flip_crops": 1.0}


@pytest.mark.slow
def test_predict_averages_the_probabilities_of_the_views(left_half: tuple[Path, Path], compose_cfg) -> None:  # noqa: ANN001
    ckpt, root = left_half
    bright, dim = normalised(BRIGHT), normalised(DIM)
    p_left = {}
    for tta in ("none", "flip", "flip_crops"):
        out = Path(compose_cfg("predict").paths.output_dir) / f"{tta}.csv"
        cfg = compose_cfg(
            "predict", [f"ckpt_path={ckpt}", f"input={root / 'test'}", f"output={out}", f"tta={tta}"]
        )
        predict(cfg)
        rows = list(csv.DictReader(out.open()))
        assert len(rows) == 6
        p_left[tta] = {Path(r["file"]).parent.name: float(r["prob_left"]) for r in rows}
    # logits (a, -a), a the left half's mean: p(left) = sigmoid(2a).
    assert p_left["none"]["0_left"] == pytest.approx(sigmoid(2 * bright), abs=1e-5)
    assert p_left["none"]["1_right"] == pytest.approx(sigmoid(2 * dim), abs=1e-5)
    both = (sigmoid(2 * bright) + sigmoid(2 * dim)) / 2  # the image and its mirror, either way round
    assert p_left["flip"] == pytest.approx({"0_left": both, "1_right": both}, abs=1e-5)
    # The crops keep (almost only) the left half, so they pull back towards the untransformed answer.
    assert p_left["flip"]["0_left"] < p_left["flip_crops"]["0_left"] < p_left["none"]["0_left"]
    assert p_left["none"]["1_right"] < p_left["flip_crops"]["1_right"] < 0.5

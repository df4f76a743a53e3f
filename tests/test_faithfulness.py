"""Deletion and insertion AUC on a model whose evidence sits in a known place."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from noodlenext.explain.faithfulness import blurred, compare_methods, deletion_insertion

SIZE = 32


class TopLeftModel(nn.Module):
    """Class 0's logit is the pixel energy (mean x**2) of the top-left quadrant; classes 1 and 2 are 0."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(5.0))
        self.drop = nn.Dropout(0.5)  # only there to show the model runs in eval mode

    def forward(self, x: Tensor) -> Tensor:
        energy = self.drop(x[:, :, : SIZE // 2, : SIZE // 2] ** 2).mean((1, 2, 3))
        return torch.stack([self.scale * energy, torch.zeros_like(energy), torch.zeros_like(energy)], 1)


def images(n: int = 3) -> Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def ramp_cams(n: int = 3) -> tuple[Tensor, Tensor]:
    """(informative, uninformative): hottest at the top-left corner, and its mirror image."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    good = (2 * SIZE - yy - xx).float().expand(n, SIZE, SIZE)
    return good, good.flip(-1, -2)


def probs(model: nn.Module, x: Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).softmax(-1)[:, 0].numpy()


@pytest.mark.parametrize("baseline", ["blur", "zero"])
def test_informative_cam_beats_uninformative_on_both_metrics(baseline: str) -> None:
    model, x = TopLeftModel(), images()
    good, bad = ramp_cams()
    g = deletion_insertion(model, x, good, [0, 0, 0], steps=16, baseline=baseline)
    b = deletion_insertion(model, x, bad.numpy(), [0, 0, 0], steps=16, baseline=baseline)
    assert (g["deletion"] < b["deletion"] - 0.1).all()  # lower is better
    assert (g["insertion"] > b["insertion"] + 0.1).all()  # higher is better
    assert g["curves_deletion"].shape == g["curves_insertion"].shape == (3, 17)
    assert ((g["deletion"] >= 0) & (g["insertion"] <= 1)).all()


@pytest.mark.parametrize("baseline", ["blur", "zero"])
def test_curves_run_between_the_original_and_baseline_scores(baseline: str) -> None:
    model, x = TopLeftModel(), images()
    r = deletion_insertion(model, x, ramp_cams()[0], [0, 1, 2], steps=5, baseline=baseline)
    base = blurred(x) if baseline == "blur" else torch.zeros_like(x)
    full = model.eval()(x).softmax(-1).gather(1, torch.tensor([[0], [1], [2]]))[:, 0].detach().numpy()
    empty = model(base).softmax(-1).gather(1, torch.tensor([[0], [1], [2]]))[:, 0].detach().numpy()
    assert r["curves_deletion"][:, 0] == pytest.approx(full)
    assert r["curves_deletion"][:, -1] == pytest.approx(empty)
    assert r["curves_insertion"][:, 0] == pytest.approx(empty)
    assert r["curves_insertion"][:, -1] == pytest.approx(full)
    mean = lambda c: (c[:, :-1] + c[:, 1:]).sum(1) / 10  # noqa: E731 - trapezoid mean, 5 steps
    assert r["deletion"] == pytest.approx(mean(r["curves_deletion"]))
    assert r["insertion"] == pytest.approx(mean(r["curves_insertion"]))


def test_steps_remove_exactly_the_hottest_chunks() -> None:
    model, x = TopLeftModel(), images(2)
    cam = torch.rand(2, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 0.5
    cam[:, : SIZE // 2, : SIZE // 2] += 1.0  # the top-left quadrant is exactly the hottest quarter
    r = deletion_insertion(model, x, cam, [0, 0], steps=4, baseline="zero")
    # After one step of four the whole quadrant is zero (all logits 0) or is all that is left.
    assert r["curves_deletion"][:, 1] == pytest.approx([1 / 3, 1 / 3])
    assert r["curves_insertion"][:, 1] == pytest.approx(probs(model, x))
    assert r["curves_deletion"][:, 2:] == pytest.approx(np.full((2, 3), 1 / 3))


def test_batching_ties_and_cam_resolution_do_not_change_results() -> None:
    model, x = TopLeftModel(), images()
    flat = torch.ones(3, SIZE, SIZE)  # all ties: reading order, the same on every call
    a = deletion_insertion(model, x, flat, [0, 1, 0], steps=4, batch_size=1)
    b = deletion_insertion(model, x, flat, [0, 1, 0], steps=4, batch_size=1000)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)
    small = torch.zeros(3, 1, 4, 4)  # (B, 1, h, w) at a lower resolution is upsampled
    small[:, :, 0, 0] = 1.0
    top_left = deletion_insertion(model, x, small, [0, 0, 0], steps=8)
    bottom_right = deletion_insertion(model, x, small.flip(-1, -2), [0, 0, 0], steps=8)
    assert (top_left["deletion"] < bottom_right["deletion"]).all()


def test_model_modes_are_restored_exactly() -> None:
    model = TopLeftModel().train()
    model.drop.eval()  # a mixed state, like a frozen BatchNorm inside a training model
    deletion_insertion(model, images(1), ramp_cams(1)[0], [0], steps=2)
    assert model.training and not model.drop.training
    model.eval()
    deletion_insertion(model, images(1), ramp_cams(1)[0], [0], steps=2)
    assert not model.training and not model.drop.training


def test_bad_arguments_are_clear_errors() -> None:
    model, x = TopLeftModel(), images(2)
    with pytest.raises(ValueError, match="baseline"):
        deletion_insertion(model, x, ramp_cams(2)[0], [0, 0], baseline="noise")
    with pytest.raises(ValueError, match="targets"):
        deletion_insertion(model, x, ramp_cams(2)[0], [0])
    with pytest.raises(ValueError, match="cams"):
        deletion_insertion(model, x, ramp_cams(3)[0], [0, 0])
    with pytest.raises(ValueError, match="cams must be"):
        deletion_insertion(model, x, torch.zeros(2, 3, SIZE, SIZE), [0, 0])


def test_compare_methods_reports_both_metrics_per_method() -> None:
    model, x = TopLeftModel(), images()
    good, bad = ramp_cams()
    out = compare_methods(model, x, {"scorecam": good, "gradcam": bad}, [0, 0, 0], steps=8)
    assert list(out) == ["scorecam", "gradcam"]
    assert all(
        set(m) == {"deletion", "insertion"} and all(isinstance(v, float) for v in m.values())
        for m in out.values()
    )
    assert out["scorecam"]["deletion"] < out["gradcam"]["deletion"]
    assert out["scorecam"]["insertion"] > out["gradcam"]["insertion"]


def test_a_batchnorm_cnn_in_training_mode_is_scored_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).train()
    x, cams = images(2), np.random.default_rng(0).random((2, SIZE, SIZE)).astype(np.float32)
    stats = model[1].running_mean.clone()
    # Batch statistics would make scores depend on what shares a batch; running statistics do not.
    a = deletion_insertion(model, x, cams, [0, 2], steps=4, batch_size=3)
    b = deletion_insertion(model, x, cams, [0, 2], steps=4, batch_size=64)
    np.testing.assert_allclose(a["curves_deletion"], b["curves_deletion"], rtol=1e-5)
    assert ((a["deletion"] >= 0) & (a["insertion"] <= 1)).all()
    assert model.training and torch.equal(model[1].running_mean, stats)

"""Calibration: ECE/MCE, reliability bins, temperature scaling fitted on val, saved in the checkpoint,
reported at test end and used for the probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from known_models import MEAN_COLOUR
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from noodlenext.callbacks.test_report import TestReport, per_class_scores, results_table, top_confusions
from noodlenext.explain.folder import explain_files
from noodlenext.explain.gather import gather_evidence
from noodlenext.explain.heatmaps import explain_batch
from noodlenext.explain.photo import PhotoExplainer
from noodlenext.models.calibration import (
    TEMPERATURE_BOUNDS,
    calibration_errors,
    check_calibration,
    fit_temperature,
    nll,
    reliability_bins,
    rescale_probabilities,
)
from noodlenext.models.classifier import CHECKPOINT_KEY, NoodleClassifier, load_classifier

NAMES = ["spaghetti", "ramen", "udon"]


def honest(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits z and labels drawn from softmax(z): softmax(z) is calibrated by construction."""
    g = torch.Generator().manual_seed(seed)
    z = 1.5 * torch.randn(n, 3, generator=g)
    return z, torch.multinomial(z.softmax(dim=1), 1, generator=g).squeeze(1)


# ------------------------------------------------------------------------------ the maths
def test_temperature_scaling_undoes_logits_scaled_by_20() -> None:
    z, y = honest(4000, seed=0)
    logits = 20 * z  # deliberately over-confident
    t = fit_temperature(logits, y)
    assert t == pytest.approx(20, rel=0.15)
    before = calibration_errors(logits.softmax(dim=1), y)
    after = calibration_errors((logits / t).softmax(dim=1), y)
    assert before["ece"] > 0.2 and after["ece"] < before["ece"] / 4
    assert after["mce"] < before["mce"]
    assert nll(logits, y, t) < nll(logits, y)


def test_temperature_of_an_honest_model_stays_near_1_and_works_under_inference_mode() -> None:
    z, y = honest(4000, seed=1)
    with torch.inference_mode():  # as in Lightning's validation loop
        t = fit_temperature(z, y)
    assert t == pytest.approx(1.0, abs=0.1)


def test_temperature_without_samples_or_with_a_perfect_val_set_is_bounded() -> None:
    assert fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 1.0
    y = torch.arange(3).repeat(10)
    perfect = torch.nn.functional.one_hot(y, 3).float() * 4  # every val image right: NLL falls as T -> 0
    assert TEMPERATURE_BOUNDS[0] <= fit_temperature(perfect, y) < 1


def test_ece_and_mce_by_hand() -> None:
    # Two at confidence 0.9 (one right), two at 0.65 (both right): bins [0.867, 0.933), [0.6, 0.667).
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.35, 0.65], [0.65, 0.35]])
    targets = torch.tensor([0, 1, 1, 0])
    errors = calibration_errors(probs, targets)
    assert errors["ece"] == pytest.approx(0.5 * 0.4 + 0.5 * 0.35)
    assert errors["mce"] == pytest.approx(0.4)
    bins = reliability_bins(probs, targets)
    assert sum(bins["count"]) == 4 and len(bins["count"]) == 15
    full = {i: (bins["accuracy"][i], bins["confidence"][i]) for i, c in enumerate(bins["count"]) if c}
    assert full == {9: (1.0, pytest.approx(0.65)), 13: (0.5, pytest.approx(0.9))}


def test_reliability_puts_a_certain_prediction_in_the_last_bin() -> None:
    bins = reliability_bins(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), n_bins=10)
    assert bins["count"][-1] == 1 and bins["upper"][-1] == 1.0


def test_rescaled_probabilities_are_the_softmax_of_the_scaled_logits() -> None:
    logits = torch.randn(5, 4, dtype=torch.float64)
    expected = (logits / 2.5).softmax(dim=1)
    assert torch.allclose(rescale_probabilities(logits.softmax(dim=1), 2.5), expected, atol=1e-10)


def test_an_unknown_calibration_names_the_option() -> None:
    with pytest.raises(ValueError, match="calibration='platt'.*temperature.*none"):
        check_calibration("platt")


def test_per_class_precision_recall_f1_and_top_confusions() -> None:
    confusion = [[5, 3, 0], [1, 4, 0], [0, 0, 0]]  # udon never appears nor is predicted
    scores = per_class_scores(confusion, NAMES)
    assert set(scores) == {"spaghetti", "ramen"}
    assert scores["spaghetti"]["precision"] == pytest.approx(5 / 6)
    assert scores["spaghetti"]["recall"] == pytest.approx(5 / 8)
    assert scores["ramen"]["precision"] == pytest.approx(4 / 7) and scores["ramen"][
        "recall"
    ] == pytest.approx(4 / 5)
    p, r = 4 / 7, 4 / 5
    assert scores["ramen"]["f1"] == pytest.approx(2 * p * r / (p + r))
    assert top_confusions(confusion, NAMES) == [
        {"true": "spaghetti", "predicted": "ramen", "count": 3},
        {"true": "ramen", "predicted": "spaghetti", "count": 1},
    ]
    assert top_confusions(confusion, NAMES, k=1)[0]["count"] == 3
    table = results_table({"acc": 0.69, "f1": 0.7, "confusion": confusion, "per_class": {
        "spaghetti": {"accuracy": 5 / 8, "count": 8}, "ramen": {"accuracy": 0.8, "count": 5}}})  # fmt: skip
    assert [c.header for c in table.columns] == ["class", "accuracy", "precision", "F1", "count"]


# ------------------------------------------------------------------------------ through Lightning
def colour_images(n: int, seed: int) -> TensorDataset:
    """Flat 8x8 images whose mean colour m is the logits of an honest model: labels ~ softmax(m)."""
    m, y = honest(n, seed)
    return TensorDataset(m[:, :, None, None].expand(n, 3, 8, 8).contiguous(), y)


def trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, **kwargs,
    )  # fmt: skip


@pytest.mark.slow
def test_an_over_confident_model_is_calibrated_by_its_best_checkpoint(tmp_path: Path) -> None:
    model = NoodleClassifier(MEAN_COLOUR, 3, NAMES, image_size=8, pretrained=False, label_smoothing=0.0)
    with torch.no_grad():
        model.net.scale.fill_(20.0)  # logits 20x what an honest model's would be
    val, test = colour_images(1500, seed=2), colour_images(1500, seed=3)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="val/acc", mode="max")
    fit = trainer(tmp_path, max_epochs=1, limit_train_batches=1, callbacks=[checkpoints])
    fit.fit(model, DataLoader(val, batch_size=64), DataLoader(val, batch_size=256))

    # The best checkpoint holds the temperature fitted on its own epoch's validation logits, as a plain
    # float that loads with weights_only=True.
    meta = torch.load(checkpoints.best_model_path, map_location="cpu", weights_only=True)[CHECKPOINT_KEY]
    assert isinstance(meta["temperature"], float) and meta["temperature"] > 10
    best = load_classifier(checkpoints.best_model_path)
    assert best.temperature == meta["temperature"]
    x_val, y_val = val.tensors
    with torch.no_grad():
        refit = fit_temperature(best(x_val), y_val)
    assert best.temperature == pytest.approx(refit, rel=1e-3)

    # Probabilities: softmax(logits / T) by default, the raw softmax with calibration=none.
    x = test.tensors[0][:4]
    with torch.no_grad():
        logits = best(x)
        assert torch.allclose(best.predict_proba(x), (logits / best.temperature).softmax(1), atol=1e-6)
        assert torch.allclose(best.probabilities(logits), (logits / best.temperature).softmax(1), atol=1e-6)
        raw = best.use(calibration="none").predict_proba(x)
        assert torch.allclose(raw, logits.softmax(1), atol=1e-6)
    best.use(calibration="temperature")

    # Test end: ECE high before, much lower after, in metrics.json, the table and reliability.png.
    out = tmp_path / "report"
    trainer(tmp_path, callbacks=[TestReport(out)]).test(best, DataLoader(test, batch_size=256))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test/temperature"] == best.temperature > 1
    assert metrics["test/ece"] > 0.2 and metrics["test/ece_calibrated"] < metrics["test/ece"] / 3
    assert metrics["test/mce_calibrated"] < metrics["test/mce"]
    assert metrics["test/nll_calibrated"] < metrics["test/nll"]
    assert sum(metrics["test/reliability"]["raw"]["count"]) == 1500
    assert (out / "reliability.png").stat().st_size > 5000
    assert set(metrics["test/precision_per_class"]) == set(NAMES) == set(metrics["test/f1_per_class"])
    assert metrics["test/recall_per_class"] == pytest.approx(metrics["test/acc_per_class"])
    confusion = metrics["confusion_matrix"]["rows_true_cols_pred"]
    worst = max(n for i, row in enumerate(confusion) for j, n in enumerate(row) if i != j)
    assert len(metrics["test/top_confusions"]) == 5 and metrics["test/top_confusions"][0]["count"] == worst


def test_a_checkpoint_made_before_calibration_loads_with_temperature_1(tmp_path: Path) -> None:
    model = NoodleClassifier(MEAN_COLOUR, 3, NAMES, image_size=8, pretrained=False)
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    del checkpoint[CHECKPOINT_KEY]["temperature"]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    assert load_classifier(tmp_path / "old.ckpt").temperature == 1.0


@pytest.mark.slow
def test_the_photo_explainer_and_explain_report_the_calibrated_probabilities(tmp_path: Path) -> None:
    model = NoodleClassifier("convnext_atto", 3, NAMES, image_size=32, pretrained=False)
    with torch.no_grad():
        model.net.head.fc.weight.mul_(3)  # logits far enough apart that T = 3 visibly softens them
    model.temperature = 3.0
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    ckpt = tmp_path / "t3.ckpt"
    torch.save(checkpoint, ckpt)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))

    explainer = PhotoExplainer(ckpt, device="cpu")
    analysis = explainer(photo)
    with torch.no_grad():
        logits = explainer.model(explainer.transform(photo)[None])[0]
    calibrated = dict(zip(NAMES, (logits / 3).softmax(0).tolist(), strict=True))
    assert analysis.probabilities == pytest.approx(calibrated, abs=1e-5)
    assert max(calibrated.values()) < max(logits.softmax(0).tolist()) - 0.01
    # The evidence the LLM reads states the same numbers, its counterfactuals on the same scale.
    evidence = analysis.evidence
    assert evidence.probabilities == analysis.probabilities
    assert evidence.counterfactual.original == pytest.approx(analysis.probabilities, abs=1e-5)
    cf = evidence.counterfactual
    assert cf.drop == pytest.approx(cf.original[cf.predicted] - cf.hidden[cf.predicted])

    raw = PhotoExplainer(ckpt, device="cpu", evidence=False, calibration="none")(photo)
    softmax = dict(zip(NAMES, logits.softmax(0).tolist(), strict=True))
    assert raw.probabilities == pytest.approx(softmax, abs=1e-5)

    photo.save(tmp_path / "photo.png")
    (record,) = explain_files(load_classifier(ckpt), [tmp_path / "photo.png"], tmp_path / "out", "scorecam")
    assert record["probabilities"] == pytest.approx(calibrated, abs=1e-5)


def test_the_training_callbacks_evidence_states_the_calibrated_probabilities() -> None:
    """gather_evidence, as the heatmap gallery, the LLM explanations and the mistake groups call it on the
    trained module: the photo's probabilities and its counterfactuals' on the model's calibrated scale,
    the numbers predictions.csv and the gallery's titles give (a quickstart once said 61% where they
    said 83%)."""
    torch.manual_seed(0)
    model = NoodleClassifier("convnext_atto", 3, NAMES, image_size=32, pretrained=False).eval()
    with torch.no_grad():
        model.net.head.fc.weight.mul_(3)  # logits far enough apart that T = 3 visibly softens them
    model.temperature = 3.0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(1).tolist()
    photos = [Image.fromarray(np.zeros((32, 32, 3), np.uint8))] * 2
    heatmaps = explain_batch(model, x, pred, "gradcam")
    for calibration, expected in (("temperature", (logits / 3).softmax(1)), ("none", logits.softmax(1))):
        model.use(calibration=calibration)
        for e, p in zip(gather_evidence(model, x, photos, pred, None, heatmaps), expected, strict=True):
            assert list(e.probabilities.values()) == pytest.approx(p.tolist(), abs=1e-5)
            cf = e.counterfactual
            assert cf.original == pytest.approx(e.probabilities, abs=1e-5)
            assert cf.drop == pytest.approx(cf.original[cf.predicted] - cf.hidden[cf.predicted])
    assert max((logits / 3).softmax(1).max(1).values - logits.softmax(1).max(1).values) < -0.01

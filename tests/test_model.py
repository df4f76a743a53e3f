"""NoodleClassifier: loss options, and checkpoints that rebuild exactly the trained model."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from noodlenext.models.classifier import NoodleClassifier, load_classifier

NAMES = ["spaghetti", "ramen", "udon"]


def tiny(**kwargs) -> NoodleClassifier:
    return NoodleClassifier("convnext_atto", 3, NAMES, image_size=32, pretrained=False, **kwargs)


def test_label_smoothing_is_applied() -> None:
    assert tiny(label_smoothing=0.2).criterion.label_smoothing == 0.2


def test_class_weighted_loss_weighs_rare_classes_up() -> None:
    weight = tiny(class_weighted_loss=True, class_counts=[300, 600, 1000]).criterion.weight
    assert weight[0] > weight[1] > weight[2]
    assert weight.tolist() == pytest.approx([1900 / 900, 1900 / 1800, 1900 / 3000])
    assert tiny().criterion.weight is None


def test_class_weighted_loss_without_counts_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="class_weighted_loss"):
        tiny(class_weighted_loss=True)


def test_checkpoint_rebuilds_the_same_model(tmp_path: Path) -> None:
    model = tiny(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    model.run_config = {"model": {"name": "convnext_atto"}}
    data = TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 3, (16,)))
    trainer = L.Trainer(
        max_steps=1,  # one optimizer step moves every weight: the checkpoint holds trained weights
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        limit_val_batches=0,
    )
    trainer.fit(model, DataLoader(data, batch_size=8))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_classifier(path)
    assert loaded.class_names == NAMES and not loaded.training
    assert list(loaded.hparams.mean) == [0.5, 0.5, 0.5] and loaded.hparams.image_size == 32
    assert loaded.run_config == {"model": {"name": "convnext_atto"}} and loaded.pretrained_loaded is False
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model.eval()(x), atol=1e-6)


def test_loading_a_missing_checkpoint_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ckpt_path=.*missing.ckpt"):
        load_classifier(tmp_path / "missing.ckpt")


def test_loading_a_foreign_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a noodlenext checkpoint"):
        load_classifier(tmp_path / "other.ckpt")
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_classifier(tmp_path / "junk.ckpt")

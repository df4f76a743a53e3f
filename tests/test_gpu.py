"""On a CUDA GPU: bf16 mixed precision and channels_last, through the real Trainer (not run by CI)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from noodlenext.core.devices import resolve_precision
from noodlenext.models.classifier import NoodleClassifier

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_uses_bf16_and_channels_last(tmp_path) -> None:
    assert resolve_precision("auto") == "bf16-mixed"
    model = NoodleClassifier("convnext_atto", 3, ["a", "b", "c"], image_size=64, pretrained=False)
    data = TensorDataset(torch.randn(32, 3, 64, 64), torch.randint(0, 3, (32,)))
    trainer = L.Trainer(
        max_steps=4,
        accelerator="gpu",
        devices=1,
        precision=resolve_precision("auto"),
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        limit_val_batches=0,
    )
    trainer.fit(model, DataLoader(data, batch_size=8))
    assert model.net.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(next(model.parameters())).all()

"""The optimizer's groups carry the configured rates and decay, and the schedule has the write-up's shape."""

from __future__ import annotations

import lightning as L
import pytest
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

from noodlenext.models.classifier import NoodleClassifier
from noodlenext.models.optim import build_optimizer, param_groups, warmup_cosine

OPTIM = {"head_lr": 1e-4, "backbone_lr": 1e-5, "weight_decay": 0.03, "layer_decay": None, "warmup_frac": 0.15}


def by_name(groups: list[dict]) -> dict[str, dict]:
    return {g["name"]: g for g in groups}


@pytest.mark.parametrize("arch", ["convnext_atto", "vit_tiny_patch16_224"])
def test_head_and_backbone_get_their_own_rates(arch: str) -> None:
    model = timm.create_model(
        arch, pretrained=False, num_classes=3, **({"img_size": 32} if "vit" in arch else {})
    )
    groups = by_name(param_groups(model, head_lr=1e-4, backbone_lr=1e-5, weight_decay=0.03))
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    for name, group in groups.items():
        assert group["lr"] == (1e-4 if name.startswith("head") else 1e-5)
        assert all((id(p) in head_ids) == name.startswith("head") for p in group["params"])
    covered = sum(p.numel() for g in groups.values() for p in g["params"])
    assert covered == sum(p.numel() for p in model.parameters())  # every parameter, once


def test_norms_biases_and_position_embeddings_get_no_weight_decay() -> None:
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in param_groups(model, 1e-4, 1e-5, 0.03):
        for p in group["params"]:
            exempt = p.ndim <= 1 or names[id(p)] in ("pos_embed", "cls_token")
            assert group["weight_decay"] == (0.0 if exempt else 0.03), names[id(p)]


def test_layer_decay_scales_backbone_rates_by_depth() -> None:
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=3)
    groups = param_groups(model, head_lr=1e-4, backbone_lr=1e-5, weight_decay=0.03, layer_decay=0.5)
    stem = model.stem[0].weight
    stem_lr = next(g["lr"] for g in groups if any(p is stem for p in g["params"]))
    backbone_lrs = sorted({g["lr"] for g in groups if g["name"].startswith("backbone")})
    assert stem_lr == min(backbone_lrs) < 1e-5 * 0.5**3  # the earliest layer learns slowest
    assert max(backbone_lrs) <= 1e-5
    assert {g["lr"] for g in groups if g["name"].startswith("head")} == {1e-4}
    assert len({g["name"] for g in groups}) == len(groups)  # LearningRateMonitor refuses duplicate names


def test_schedule_warms_up_linearly_over_15_percent_then_decays_to_zero() -> None:
    factor = warmup_cosine(total_steps=100, warmup_frac=0.15)
    assert factor(0) == pytest.approx(1 / 15) and factor(14) == pytest.approx(1.0)
    assert [factor(s) for s in range(15)] == sorted(factor(s) for s in range(15))
    assert factor(15) == pytest.approx(1.0) and factor(57) == pytest.approx(0.5, abs=0.02)
    assert factor(99) < 0.01 and factor(100) == pytest.approx(0.0)


def test_build_optimizer_is_adamw_with_a_per_step_schedule() -> None:
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=3)
    optimizer, scheduler = build_optimizer(model, OPTIM, total_steps=20)
    assert isinstance(optimizer, torch.optim.AdamW)
    # step 0 of a 3-step warm-up (15% of 20 steps)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx([1e-5 / 3, 1e-4 / 3])
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx([1e-5, 1e-4])


@pytest.mark.slow
def test_trainer_steps_the_configured_rates(tmp_path) -> None:
    """Through a real Trainer: the module's optimizer carries head/backbone rates, stepped per batch."""
    model = NoodleClassifier(
        "convnext_atto", 3, ["a", "b", "c"], image_size=32, pretrained=False, optim=OPTIM
    )
    data = TensorDataset(torch.randn(40, 3, 32, 32), torch.randint(0, 3, (40,)))
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        limit_val_batches=0,
    )
    trainer.fit(model, DataLoader(data, batch_size=8))
    (optimizer,) = trainer.optimizers
    scheduler = trainer.lr_scheduler_configs[0]
    assert scheduler.interval == "step" and scheduler.scheduler.last_epoch == 10
    assert {g["initial_lr"] for g in optimizer.param_groups} == {1e-4, 1e-5}
    assert all(g["lr"] == pytest.approx(0.0, abs=1e-12) for g in optimizer.param_groups)  # cosine ends at 0

"""AdamW parameter groups (head vs backbone rates, no decay on norms and biases) and the lr schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn


def param_groups(
    model: nn.Module,
    head_lr: float,
    backbone_lr: float,
    weight_decay: float,
    layer_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Groups for a timm model: the classifier at head_lr, the rest at backbone_lr.

    Norms, biases and the model's own no-decay parameters (position embeddings, tokens) get no weight
    decay. With layer_decay, backbone layer i gets backbone_lr * layer_decay**(depth - i) (timm's
    layer map); the rate is written into each group's lr because torch schedulers ignore lr_scale.
    """
    no_decay = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    if layer_decay is not None:
        groups = param_groups_layer_decay(
            model, weight_decay=weight_decay, no_weight_decay_list=no_decay, layer_decay=layer_decay
        )
    else:
        groups = param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=no_decay)
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    out = []
    for i, group in enumerate(groups):
        scale = group.get("lr_scale", 1.0)
        for is_head, lr in ((True, head_lr), (False, backbone_lr * scale)):
            params = [p for p in group["params"] if (id(p) in head_ids) == is_head]
            if params:
                decay = "decay" if group["weight_decay"] else "no_decay"
                name = f"{'head' if is_head else 'backbone'}_{decay}"
                if layer_decay is not None and not is_head:
                    name += f"_{i:02d}"  # one group per layer: names must differ (LearningRateMonitor)
                out.append({"params": params, "lr": lr, "weight_decay": group["weight_decay"], "name": name})
    return out


def warmup_cosine(total_steps: int, warmup_frac: float) -> Any:
    """lr factor per optimizer step: linear warm-up over warmup_frac of the steps, then cosine to 0."""
    warmup = max(1, round(total_steps * warmup_frac)) if warmup_frac > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(
    model: nn.Module, optim: dict[str, Any], total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over param_groups with a per-step warm-up + cosine LambdaLR."""
    groups = param_groups(
        model, optim["head_lr"], optim["backbone_lr"], optim["weight_decay"], optim.get("layer_decay")
    )
    optimizer = torch.optim.AdamW(groups, betas=tuple(optim.get("betas", (0.9, 0.999))))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, optim["warmup_frac"]))
    return optimizer, scheduler

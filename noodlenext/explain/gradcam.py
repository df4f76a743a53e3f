"""Grad-CAM through pytorch-grad-cam, without its side effects on the model."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

from noodlenext.explain.scorecam import eval_mode


def gradcam(
    model: nn.Module,
    target_layer: nn.Module,
    images: Tensor,
    targets: Sequence[int] | None = None,
    reshape_transform: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Grad-CAM maps (B, H, W) in [0, 1], float32 on CPU; targets default to the argmax class."""
    # GradCAM zeroes and fills .grad and leaves the model in eval mode: put both back afterwards.
    grads = [(p, p.grad) for p in model.parameters()]
    device = next(model.parameters()).device
    wanted = None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]
    maps = None
    try:
        with eval_mode(model), torch.enable_grad(), GradCAM(model, [target_layer], reshape_transform) as cam:
            maps = torch.from_numpy(cam(images.to(device), wanted))
    finally:
        for p, grad in grads:
            p.grad = grad
    if maps is None:  # GradCAM's __exit__ prints and swallows an IndexError
        raise IndexError(f"a Grad-CAM target in {list(targets or [])} is not a class of the model")
    return maps

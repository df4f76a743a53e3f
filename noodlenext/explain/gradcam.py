"""Grad-CAM through pytorch-grad-cam, without its side effects on the model."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pytorch_grad_cam import GradCAM as GradCamGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor

from noodlenext.explain.base import BaseCAM, register_cam


@register_cam
class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al. 2017): channels weighted by the mean gradient of the target logit.

    pytorch-grad-cam computes the map; this wrapper gives it BaseCAM's calling shape and undoes its side
    effects (it zeroes and fills parameters' `.grad`, and leaves the model in eval mode). One forward and
    one backward pass per batch, so it is the fast first look; ScoreCAM is the gradient-free check.
    """

    name = "gradcam"

    def compute(self, images: Tensor, targets: Sequence[int] | Tensor | None) -> Tensor:
        grads = [(p, p.grad) for p in self.model.parameters()]
        wanted = self.output_targets(targets)
        maps = None
        try:
            with (
                torch.inference_mode(False),
                torch.enable_grad(),
                GradCamGradCAM(self.model, [self.target_layer], self.reshape_transform) as cam,
            ):
                maps = torch.from_numpy(cam(images.to(self.device).clone(), wanted))
        finally:
            for p, grad in grads:
                p.grad = grad
        if maps is None:  # pytorch-grad-cam's __exit__ prints and swallows an IndexError
            raise IndexError(f"a Grad-CAM target in {list(targets or [])} is not a class of the model")
        return maps.float()

    def output_targets(
        self, targets: Sequence[int] | Tensor | None
    ) -> list[Callable[[Tensor], Tensor]] | None:
        """What is explained, per image: a function of its logits (C,) to a scalar (default: one class's
        logit); None explains the predicted class. Subclasses override it (a contrastive map explains a
        logit difference)."""
        return None if targets is None else [ClassifierOutputTarget(int(t)) for t in targets]

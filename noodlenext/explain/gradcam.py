"""Grad-CAM: pytorch-grad-cam's maps, from a backward pass that stops at the explained layer."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

from noodlenext.explain.base import BaseCAM, finish_maps, register_cam


@register_cam
class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al. 2017): channels weighted by the mean gradient of the target logit.

    The maps are pytorch-grad-cam's GradCAM's (r = 1.0000 in float32), but the backward pass runs only
    from the logits down to the explained layer: the layer's output is cut from the graph and made the
    one tensor that needs a gradient, so nothing before it keeps activations for a backward pass and no
    parameter gets a gradient. On 2 CPU cores that is 1.6 s instead of pytorch-grad-cam's 6.0 s for
    ConvNeXt-Base at 384 px (`bench/progressive.py`), so it is the fast first look at a photo; ScoreCAM
    is the gradient-free check. The model's parameters, `.grad` and train/eval flags are left as they were.
    """

    name = "gradcam"

    def compute(self, images: Tensor, targets: Sequence[int] | Tensor | None) -> Tensor:
        captured: list[Tensor] = []

        def cut(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            # The backward pass starts at the logits and ends here.
            output = output.detach().requires_grad_(True)
            captured.append(output)
            return output

        frozen = [p for p in self.model.parameters() if p.requires_grad]
        handle = self.target_layer.register_forward_hook(cut)
        try:
            for p in frozen:
                p.requires_grad_(False)
            with torch.inference_mode(False), torch.enable_grad():
                logits = self.model(images.to(self.device).clone())  # a clone: not an inference tensor
                if not captured:
                    raise ValueError("the target layer did not run in the model's forward pass")
                wanted = self.output_targets(targets)
                if wanted is None:  # the predicted class of each image
                    wanted = [ClassifierOutputTarget(int(c)) for c in logits.argmax(dim=1).tolist()]
                if len(wanted) != len(logits):
                    raise ValueError(f"{len(wanted)} targets for {len(logits)} images")
                score = sum(target(out) for target, out in zip(wanted, logits, strict=True))
                (grads,) = torch.autograd.grad(score, captured[0])
        finally:
            handle.remove()
            for p in frozen:
                p.requires_grad_(True)
        activations, grads = self.as_grid(captured[0].detach()).float(), self.as_grid(grads).float()
        weights = grads.mean(dim=(2, 3), keepdim=True)  # one weight per channel
        return finish_maps((weights * activations).sum(dim=1), images.shape[-2:])

    def output_targets(
        self, targets: Sequence[int] | Tensor | None
    ) -> list[Callable[[Tensor], Tensor]] | None:
        """What is explained, per image: a function of its logits (C,) to a scalar (default: one class's
        logit); None explains the predicted class. Subclasses override it (a contrastive map explains a
        logit difference)."""
        if targets is None:
            return None
        return [ClassifierOutputTarget(int(t)) for t in torch.as_tensor(targets).reshape(-1).tolist()]

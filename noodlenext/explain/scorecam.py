"""Score-CAM: the same maps as pytorch-grad-cam's ScoreCAM, from large mask batches built on the device."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# On CPU throughput falls once a batch outgrows the caches: on 2 cores ConvNeXt peaked near this many
# pixels per batch (8 images at 160 px, 2 at 384 px; pytorch-grad-cam's 16 are 1.5x slower at 384 px).
CPU_PIXELS_PER_BATCH = 2**18


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run `model` in eval mode, then give every submodule its own `training` flag back."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _normalise(x: Tensor) -> Tensor:
    """Per-map min-max to [0, 1] over the last two dims, as pytorch-grad-cam's `scale_cam_image`."""
    x = x - x.amin(dim=(-2, -1), keepdim=True)
    return x / (1e-7 + x.amax(dim=(-2, -1), keepdim=True))


class ScoreCAM:
    """Score-CAM (Wang et al. 2020): each channel weighs as the target logit of the image masked by it."""

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module,
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        batch_size: int | None = None,
        top_k: int | None = None,
        autocast: bool | None = None,
    ) -> None:
        for name, value in (("batch_size", batch_size), ("top_k", top_k)):
            if value is not None and value < 1:
                raise ValueError(f"explain {name}={value}: must be at least 1 (or None)")
        self.model = model
        self.target_layer = target_layer
        self.reshape_transform = reshape_transform
        self.batch_size = batch_size
        self.top_k = top_k  # Faster Score-CAM: score only the k channels of highest variance (approximate)
        self.device = next(model.parameters()).device
        self.autocast = self.device.type == "cuda" if autocast is None else autocast

    # Hooks live only inside a call, so there is nothing to release; `with` is for symmetry with grad-cam.
    def __enter__(self) -> ScoreCAM:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @torch.no_grad()
    def __call__(self, images: Tensor, targets: Sequence[int] | Tensor | None = None) -> Tensor:
        """Maps (B, H, W) in [0, 1], float32 on CPU, of images (B, 3, H, W); targets default to the argmax."""
        images = images.to(self.device, torch.float32)
        with eval_mode(self.model), torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
            activations, logits = self._activations(images)
            targets = logits.argmax(dim=1) if targets is None else self._checked(targets, logits)
            if self.top_k is not None and self.top_k < activations.shape[1]:
                channels = activations.flatten(2).var(dim=2).topk(self.top_k, dim=1).indices
                activations = activations[torch.arange(len(images), device=self.device)[:, None], channels]
            scores = self._scores(images, activations, targets)
        weights = scores.softmax(dim=1)  # over channels
        cam = torch.einsum("bc,bchw->bhw", weights, activations).clamp(min=0)
        # pytorch-grad-cam normalises, resizes (cv2 bilinear = half-pixel centres), then normalises again.
        cam = F.interpolate(_normalise(cam)[:, None], size=images.shape[-2:], mode="bilinear")[:, 0]
        return _normalise(cam.clamp(min=0)).cpu()

    def _checked(self, targets: Sequence[int] | Tensor, logits: Tensor) -> Tensor:
        """One class per image, checked here: out of range, `gather` would be a device-side assert on CUDA."""
        targets = torch.as_tensor(targets).reshape(-1)
        n_images, n_classes = logits.shape
        if len(targets) != n_images:
            raise ValueError(f"{len(targets)} targets for {n_images} images")
        if not all(0 <= t < n_classes for t in targets.tolist()):
            raise ValueError(f"targets {targets.tolist()} are not all classes 0..{n_classes - 1}")
        return targets.to(self.device)

    def _forward(self, x: Tensor) -> Tensor:
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)  # the convs follow the input's layout
        return self.model(x).float()

    def _activations(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """One forward pass: target-layer activations (B, C, h, w) float32, and the logits."""
        captured: list[Tensor] = []
        handle = self.target_layer.register_forward_hook(lambda module, args, output: captured.append(output))
        try:
            logits = self._forward(images)
        finally:
            handle.remove()
        activations = captured[0]
        if self.reshape_transform is not None:
            activations = self.reshape_transform(activations)
        if activations.ndim != 4:
            raise ValueError(
                f"target layer output {tuple(activations.shape)} is not (B, C, H, W): pass a "
                "reshape_transform (noodlenext.explain.reshape_transform(model) for a ViT)"
            )
        return activations.float(), logits

    def _scores(self, images: Tensor, activations: Tensor, targets: Tensor) -> Tensor:
        """Target logit of each image masked by each of its channels: (B, C), all kept on the device."""
        n_images, n_channels = activations.shape[:2]
        maps = activations.flatten(0, 1)[:, None]  # (B*C, 1, h, w)
        rows = torch.arange(n_images, device=self.device).repeat_interleave(n_channels)
        scores = torch.empty(n_images * n_channels, device=self.device)
        step = self.batch_size or self._auto_batch_size(images)
        for start in range(0, len(maps), step):  # chunks may span images, so batches stay full
            chunk = slice(start, start + step)
            # Min-max after upsampling, as pytorch-grad-cam: the upsampled grid can miss interior peaks.
            up = F.interpolate(maps[chunk], size=images.shape[-2:], mode="bilinear", align_corners=True)
            lo, hi = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
            logits = self._forward(images[rows[chunk]] * ((up - lo) / (hi - lo + 1e-8)))
            scores[chunk] = logits.gather(1, targets[rows[chunk], None])[:, 0]
        return scores.view(n_images, n_channels)

    def _auto_batch_size(self, images: Tensor) -> int:
        """Masked images per forward pass: cache-sized on CPU, on CUDA what half the free memory holds."""
        if self.device.type != "cuda":
            return max(2, min(64, CPU_PIXELS_PER_BATCH // images[0, 0].numel()))
        free, _ = torch.cuda.mem_get_info(self.device)
        # A timm CNN or ViT forward pass in bf16 peaks below ~32x its fp32 input per image.
        per_image = 32 * images[0].numel() * images.element_size()
        return int(max(8, min(1024, free // 2 // per_image)))

"""Score-CAM: the same maps as pytorch-grad-cam's ScoreCAM, from large mask batches built on the device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noodlenext.explain.base import AUTO, BaseCAM, Reshape, normalise, register_cam

if TYPE_CHECKING:
    from noodlenext.explain.settings import HeatmapSettings

# On CPU throughput falls once a batch outgrows the caches: on 2 cores ConvNeXt peaked near this many
# pixels per batch (8 images at 160 px, 2 at 384 px; pytorch-grad-cam's 16 are 1.5x slower at 384 px).
CPU_PIXELS_PER_BATCH = 2**18


@register_cam
class ScoreCAM(BaseCAM):
    """Score-CAM (Wang et al. 2020): each channel weighs as the target logit of the image masked by it.

    Gives the same maps as pytorch-grad-cam's ScoreCAM (r = 1.0000 in float32), from large mask batches
    built on the device. Besides BaseCAM's arguments:

    Args:
        batch_size: masked images per forward pass; None sizes it (a pixel budget on CPU, half the free
            memory on CUDA).
        top_k: score only the k channels of highest activation variance (Faster Score-CAM; approximate,
            about 5x faster at k=64); None scores every channel (exact).
        autocast: bf16 autocast; None turns it on for CUDA only (on AVX2 CPUs bf16 is ~10x slower).
    """

    name = "scorecam"

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | None = None,
        reshape_transform: Reshape | str | None = AUTO,
        batch_size: int | None = None,
        top_k: int | None = None,
        autocast: bool | None = None,
    ) -> None:
        for name, value in (("batch_size", batch_size), ("top_k", top_k)):
            if value is not None and value < 1:
                raise ValueError(f"explain {name}={value}: must be at least 1 (or None)")
        super().__init__(model, target_layer, reshape_transform)
        self.batch_size = batch_size
        self.top_k = top_k
        self.autocast = self.device.type == "cuda" if autocast is None else autocast

    @classmethod
    def from_settings(cls, model: nn.Module, settings: HeatmapSettings) -> ScoreCAM:
        return cls(model, settings.target_layer, batch_size=settings.mask_batch_size, top_k=settings.top_k)

    @torch.no_grad()
    def compute(self, images: Tensor, targets: Sequence[int] | Tensor | None) -> Tensor:
        images = images.to(self.device, torch.float32)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
            activations, logits = self._activations(images)
            targets = (
                logits.argmax(dim=1) if targets is None else self.checked_targets(targets, *logits.shape)
            )
            if self.top_k is not None and self.top_k < activations.shape[1]:
                channels = activations.flatten(2).var(dim=2).topk(self.top_k, dim=1).indices
                activations = activations[torch.arange(len(images), device=self.device)[:, None], channels]
            scores = self._scores(images, activations, targets)
        weights = scores.softmax(dim=1)  # over channels
        cam = torch.einsum("bc,bchw->bhw", weights, activations).clamp(min=0)
        # pytorch-grad-cam normalises, resizes (cv2 bilinear = half-pixel centres), then normalises again.
        cam = F.interpolate(normalise(cam)[:, None], size=images.shape[-2:], mode="bilinear")[:, 0]
        return normalise(cam.clamp(min=0)).cpu()

    def _forward(self, x: Tensor) -> Tensor:
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)  # the convs follow the input's layout
        return self.model(x).float()

    def _activations(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """One forward pass: target-layer activations (B, C, h, w) float32, and the logits."""
        with self.captured_activations() as captured:
            logits = self._forward(images)
        return self.as_grid(captured[0]).float(), logits

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

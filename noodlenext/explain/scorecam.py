"""Score-CAM: the same maps as pytorch-grad-cam's ScoreCAM, from large mask batches built on the device."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noodlenext.explain.base import AUTO, BaseCAM, Reshape, eval_mode, finish_maps, register_cam

if TYPE_CHECKING:
    from noodlenext.explain.settings import HeatmapSettings

# On CPU throughput falls once a batch outgrows the caches: on 2 cores ConvNeXt peaked near this many
# pixels per batch (8 images at 160 px, 2 at 384 px; pytorch-grad-cam's 16 are 1.5x slower at 384 px).
CPU_PIXELS_PER_BATCH = 2**18


@dataclass(frozen=True)
class CAMProgress:
    """How far a map computation is (`ScoreCAM.steps`): masked images scored of all, seconds spent
    computing so far (pauses of the caller between steps not counted), an estimate of the seconds left
    (None: none yet), and on the last step the maps (B, H, W)."""

    done: int
    total: int
    elapsed_s: float
    left_s: float | None
    maps: Tensor | None = None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


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

    def compute(self, images: Tensor, targets: Sequence[int] | Tensor | None) -> Tensor:
        *_, last = self.steps(images, targets)
        return last.maps

    def steps(self, images: Tensor, targets: Sequence[int] | Tensor | None = None) -> Iterator[CAMProgress]:
        """The maps of `__call__`, a mask batch at a time: a `CAMProgress` after the activations' pass
        (done = 0, with a first estimate), after every mask batch, and last with the maps.

        For a progress bar and a cancel button: stop iterating (or `close()`) and no forward pass runs
        after the current batch; the model's train/eval flags are restored either way. No grad or
        autocast mode is held between steps, so the caller's own code runs as it would without us.
        """
        started = time.perf_counter()
        with eval_mode(self.model):
            with self._inference():
                images = images.to(self.device, torch.float32)
                activations, logits = self._activations(images)
                targets = (
                    logits.argmax(dim=1) if targets is None else self.checked_targets(targets, *logits.shape)
                )
                if self.top_k is not None and self.top_k < activations.shape[1]:
                    channels = activations.flatten(2).var(dim=2).topk(self.top_k, dim=1).indices
                    rows = torch.arange(len(images), device=self.device)[:, None]
                    activations = activations[rows, channels]
            n_images, n_channels = activations.shape[:2]
            total = n_images * n_channels
            # Time is counted while this runs, not while the caller holds it between steps.
            first_pass = busy = time.perf_counter() - started
            # Until a mask batch is timed, a masked image costs what one image of the first pass did.
            yield CAMProgress(0, total, busy, first_pass / n_images * total)
            maps = activations.flatten(0, 1)[:, None]  # (B*C, 1, h, w)
            rows = torch.arange(n_images, device=self.device).repeat_interleave(n_channels)
            scores = torch.empty(total, device=self.device)
            step = self.batch_size or self._auto_batch_size(images)
            for start in range(0, total, step):  # chunks may span images, so batches stay full
                began, chunk = time.perf_counter(), slice(start, start + step)
                with self._inference():
                    scores[chunk] = self._masked_scores(images, maps[chunk], rows[chunk], targets)
                busy += time.perf_counter() - began
                done = min(start + step, total)
                if done < total:
                    yield CAMProgress(done, total, busy, (busy - first_pass) / done * (total - done))
            began = time.perf_counter()
            with torch.no_grad():  # in float32: the weighting is outside autocast
                weights = scores.view(n_images, n_channels).softmax(dim=1)  # over channels
                cam = finish_maps(torch.einsum("bc,bchw->bhw", weights, activations), images.shape[-2:])
        yield CAMProgress(total, total, busy + time.perf_counter() - began, 0.0, cam)

    @contextmanager
    def _inference(self) -> Iterator[None]:
        with torch.no_grad(), torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
            yield

    def _forward(self, x: Tensor) -> Tensor:
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)  # the convs follow the input's layout
        return self.model(x).float()

    def _activations(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """One forward pass: target-layer activations (B, C, h, w) float32, and the logits."""
        with self.captured_activations() as captured:
            logits = self._forward(images)
        return self.as_grid(captured[0]).float(), logits

    def _masked_scores(self, images: Tensor, maps: Tensor, rows: Tensor, targets: Tensor) -> Tensor:
        """Target logit of image `rows[i]` masked by channel map `maps[i]` (N, 1, h, w): (N,)."""
        # Min-max after upsampling, as pytorch-grad-cam: the upsampled grid can miss interior peaks.
        up = F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=True)
        lo, hi = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
        logits = self._forward(images[rows] * ((up - lo) / (hi - lo + 1e-8)))
        return logits.gather(1, targets[rows, None])[:, 0]

    def _auto_batch_size(self, images: Tensor) -> int:
        """Masked images per forward pass: cache-sized on CPU, on CUDA what half the free memory holds."""
        if self.device.type != "cuda":
            return max(2, min(64, CPU_PIXELS_PER_BATCH // images[0, 0].numel()))
        free, _ = torch.cuda.mem_get_info(self.device)
        # A timm CNN or ViT forward pass in bf16 peaks below ~32x its fp32 input per image.
        per_image = 32 * images[0].numel() * images.element_size()
        return int(max(8, min(1024, free // 2 // per_image)))

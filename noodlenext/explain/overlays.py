"""Heatmap overlays: a Score-CAM or Grad-CAM map in the jet colormap, blended onto its image."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image


def overlay(image: Image.Image | np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """`image` (RGB, uint8 or floats in [0, 1]) with `cam` (H, W in [0, 1]) blended on at weight `alpha`."""
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    if rgb.max() > 1.0:
        rgb = rgb / 255.0
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != rgb.shape[:2]:
        # Bilinear with half-pixel centres, as cv2.resize (pytorch-grad-cam's resize).
        cam = F.interpolate(torch.from_numpy(cam)[None, None], size=rgb.shape[:2], mode="bilinear")[
            0, 0
        ].numpy()
    heat = colormaps["jet"](np.clip(cam, 0.0, 1.0))[..., :3]
    blended = (1.0 - alpha) * rgb[..., :3] + alpha * heat
    return Image.fromarray(np.uint8(np.clip(blended, 0.0, 1.0) * 255 + 0.5))

"""Which layer of a timm model to explain, and how to turn its output into a (B, C, H, W) map."""

from __future__ import annotations

import math
from collections.abc import Callable

from timm.models.convnext import ConvNeXt
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn


def unwrap(model: nn.Module) -> nn.Module:
    """The timm model itself: `NoodleClassifier` keeps it in `.net`."""
    net = getattr(model, "net", None)
    return net if isinstance(net, nn.Module) else model


def _resolve(net: nn.Module, path: str) -> nn.Module | None:
    module = net
    for part in path.split("."):
        if isinstance(module, (nn.Sequential, nn.ModuleList)) and part.lstrip("-").isdigit():
            index = int(part)
            if not -len(module) <= index < len(module):
                return None
            module = module[index]  # negative indices too: stages.-1.blocks.-1
        elif isinstance(getattr(module, part, None), nn.Module):
            module = getattr(module, part)
        else:
            return None
    return module


def target_layer(model: nn.Module, path: str | None = None) -> nn.Module:
    """The layer to explain: a default for ConvNeXt and ViT, or `path`, e.g. `stages.3.blocks.2.conv_dw`."""
    net = unwrap(model)
    if path:
        layer = _resolve(net, path)
        if layer is None:
            names = [name for name, _ in net.named_modules() if name][-10:]
            raise ValueError(
                f"explain.target_layer={path!r} is not a module of {type(net).__name__}; "
                f"the last named modules are: {', '.join(names)}"
            )
        return layer
    if isinstance(net, ConvNeXt):
        return net.stages[-1].blocks[-1].conv_dw  # the write-up's last depthwise conv of the last stage
    if isinstance(net, VisionTransformer):
        return net.blocks[-1].norm1
    raise ValueError(
        f"no default Score-CAM layer for {type(net).__name__}: pass explain.target_layer=<dotted module path>"
    )


def reshape_transform(model: nn.Module) -> Callable[[Tensor], Tensor] | None:
    """None for CNNs; for a ViT, a function mapping tokens (B, N, C) to a patch grid (B, C, H, W)."""
    net = unwrap(model)
    if not isinstance(net, VisionTransformer):
        return None
    prefix = net.num_prefix_tokens  # class and register tokens
    grid = tuple(getattr(net.patch_embed, "grid_size", None) or ())

    def tokens_to_grid(tokens: Tensor) -> Tensor:
        patches = tokens[:, prefix:]
        n = patches.shape[1]
        # The configured grid, unless the model runs at another size (dynamic_img_size): then square.
        h, w = grid if len(grid) == 2 and grid[0] * grid[1] == n else (math.isqrt(n), math.isqrt(n))
        if h * w != n:
            raise ValueError(f"{n} patch tokens do not form the {h}x{w} grid; use square images")
        return patches.reshape(patches.shape[0], h, w, patches.shape[2]).permute(0, 3, 1, 2)

    return tokens_to_grid

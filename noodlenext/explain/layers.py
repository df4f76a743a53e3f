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


# The default ConvNeXt layer's map must be at least this many cells a side: a 2x2 map (the last stage at
# 64 px) cannot say which part of a 3x3 grid mattered, so small inputs explain an earlier stage.
MIN_MAP_SIDE = 4


def input_side(model: nn.Module) -> int | None:
    """The side in pixels the model is run at: a NoodleClassifier's `image_size`, else timm's config."""
    hparams = getattr(model, "hparams", None)
    side = hparams.get("image_size") if hparams is not None and hasattr(hparams, "get") else None
    if side:
        return int(side)
    size = (getattr(unwrap(model), "pretrained_cfg", None) or {}).get("input_size")
    return int(size[-1]) if size else None


def _convnext_default(net: ConvNeXt, side: int | None) -> nn.Module:
    """The last depthwise conv of the deepest stage whose map is at least MIN_MAP_SIDE a side at `side`
    pixels: the last stage (the write-up's layer) at 128 px and up; stage 3 of 4 at 64 px."""
    reductions = [info["reduction"] for info in getattr(net, "feature_info", [])]
    if side and len(reductions) == len(net.stages):
        for stage, reduction in zip(reversed(net.stages), reversed(reductions), strict=True):
            if side // reduction >= MIN_MAP_SIDE:
                return stage.blocks[-1].conv_dw
    return net.stages[-1].blocks[-1].conv_dw


def target_layer(model: nn.Module, path: str | None = None) -> nn.Module:
    """The layer to explain: `path` (e.g. `stages.3.blocks.2.conv_dw`), or a default: for ConvNeXt the last
    depthwise conv of the deepest stage whose map is at least MIN_MAP_SIDE cells a side at the model's
    input size (the last stage, the write-up's layer, from 128 px up); for a ViT the last block's norm1.

    model: a NoodleClassifier (its `image_size` decides) or a timm model (timm's input size decides)."""
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
        return _convnext_default(net, input_side(model))
    if isinstance(net, VisionTransformer):
        return net.blocks[-1].norm1
    raise ValueError(
        f"no default Score-CAM layer for {type(net).__name__}: pass explain.target_layer=<dotted module path>"
    )


def target_layer_path(model: nn.Module, path: str | None = None) -> str:
    """The dotted name, inside the timm network, of the layer `target_layer(model, path)` picks: the same
    layer of a copy of the network (which has no input size of its own to pick by)."""
    layer = target_layer(model, path)
    return next(name for name, module in unwrap(model).named_modules() if module is layer)


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

"""BaseCAM: what every class-activation-map method shares, and the registry that names them.

Every method has one calling shape, `Method(model, target_layer, reshape_transform)(images, targets)`,
so a new method is one small subclass with a `name` and `compute`, registered with `@register_cam`
(as timm registers models); `create_cam(name, model, settings)` builds one by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from noodlenext.explain.layers import reshape_transform as default_reshape
from noodlenext.explain.layers import target_layer as resolve_layer
from noodlenext.explain.layers import unwrap

if TYPE_CHECKING:
    from noodlenext.explain.settings import HeatmapSettings

Reshape = Callable[[Tensor], Tensor]
AUTO = "auto"


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


def normalise(x: Tensor) -> Tensor:
    """Per-map min-max to [0, 1] over the last two dims, as pytorch-grad-cam's `scale_cam_image`."""
    x = x - x.amin(dim=(-2, -1), keepdim=True)
    return x / (1e-7 + x.amax(dim=(-2, -1), keepdim=True))


def finish_maps(cams: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Raw maps (B, h, w) on the layer's grid to what every method returns: negative evidence dropped,
    min-max scaled, resized to `size` (bilinear, half-pixel centres as cv2), scaled again, float32 on
    the CPU, as pytorch-grad-cam's `scale_cam_image` twice."""
    cams = normalise(cams.float().clamp(min=0))
    cams = torch.nn.functional.interpolate(cams[:, None], size=tuple(size), mode="bilinear")[:, 0]
    return normalise(cams.clamp(min=0)).cpu()


class BaseCAM(ABC):
    """A heatmap method: which pixels of an image carry the evidence for one class.

    Args:
        model: a timm model, or a `NoodleClassifier` (its `.net` is explained).
        target_layer: the module whose activations are explained, a dotted path into the model
            (`stages.3.blocks.2.conv_dw`, negative indices allowed), or None for the architecture's
            default (ConvNeXt: last depthwise conv of the deepest stage with a map of at least 4x4 at the
            model's input size, the last stage from 128 px; ViT: last block's `norm1`).
        reshape_transform: maps the layer's output to (B, C, h, w); `"auto"` (default) derives it from
            the model (a ViT's tokens to its patch grid, nothing for a CNN); None for none.

    Calling it with images (B, 3, H, W), normalised as the model takes them, and one target class index
    per image (default: the predicted class) returns maps (B, H, W), float32 on the CPU, each min-max
    scaled to [0, 1], at the images' height and width. The model's train/eval flags are restored.
    """

    name: ClassVar[str] = ""

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | None = None,
        reshape_transform: Reshape | str | None = AUTO,
    ) -> None:
        self.model = unwrap(model)
        # Resolved on the model as given: a NoodleClassifier's input size picks the default layer.
        self.target_layer = (
            target_layer if isinstance(target_layer, nn.Module) else resolve_layer(model, target_layer)
        )
        self.reshape_transform = (
            default_reshape(self.model) if reshape_transform == AUTO else reshape_transform
        )
        self.device = next(self.model.parameters()).device

    @classmethod
    def from_settings(cls, model: nn.Module, settings: HeatmapSettings) -> BaseCAM:
        """This method for `model` with the shared heatmap settings (subclasses take what they use)."""
        return cls(model, settings.target_layer)

    def __call__(self, images: Tensor, targets: Sequence[int] | Tensor | None = None) -> Tensor:
        with eval_mode(self.model):
            return self.compute(images, targets)

    @abstractmethod
    def compute(self, images: Tensor, targets: Sequence[int] | Tensor | None) -> Tensor:
        """Maps (B, H, W) in [0, 1], float32 on CPU; called in eval mode."""

    # Hooks live only inside `captured_activations`, so there is nothing to release; `with` is for
    # symmetry with pytorch-grad-cam.
    def __enter__(self) -> BaseCAM:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @contextmanager
    def captured_activations(self) -> Iterator[list[Tensor]]:
        """The target layer's outputs of every forward pass inside the block; the hook is removed after."""
        captured: list[Tensor] = []
        handle = self.target_layer.register_forward_hook(lambda module, args, output: captured.append(output))
        try:
            yield captured
        finally:
            handle.remove()

    def as_grid(self, activations: Tensor) -> Tensor:
        """The layer's output as (B, C, h, w), through the reshape transform when there is one."""
        if self.reshape_transform is not None:
            activations = self.reshape_transform(activations)
        if activations.ndim != 4:
            raise ValueError(
                f"target layer output {tuple(activations.shape)} is not (B, C, H, W): pass a "
                "reshape_transform (noodlenext.explain.reshape_transform(model) for a ViT)"
            )
        return activations

    def checked_targets(self, targets: Sequence[int] | Tensor, n_images: int, n_classes: int) -> Tensor:
        """One class per image, checked here: out of range, `gather` would be a device-side assert on CUDA."""
        targets = torch.as_tensor(targets).reshape(-1)
        if len(targets) != n_images:
            raise ValueError(f"{len(targets)} targets for {n_images} images")
        if not all(0 <= t < n_classes for t in targets.tolist()):
            raise ValueError(f"targets {targets.tolist()} are not all classes 0..{n_classes - 1}")
        return targets.to(self.device)


CAM = TypeVar("CAM", bound=type[BaseCAM])
_REGISTRY: dict[str, type[BaseCAM]] = {}


def register_cam(cls: CAM) -> CAM:
    """Class decorator: make a BaseCAM subclass available by its `name` (create_cam, method=...)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a `name` to be registered")
    if _REGISTRY.get(cls.name, cls) is not cls:
        raise ValueError(f"a CAM method named {cls.name!r} is already registered ({_REGISTRY[cls.name]})")
    _REGISTRY[cls.name] = cls
    return cls


def registered_cams() -> dict[str, type[BaseCAM]]:
    """name -> class of every registered method (import noodlenext.explain.registry for the built-ins)."""
    return dict(_REGISTRY)

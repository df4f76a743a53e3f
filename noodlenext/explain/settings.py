"""HeatmapSettings: how heatmaps are computed, one object shared by training, explain, chat and the app."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class HeatmapSettings:
    """The `explain` config group (conf/explain/default.yaml) as an object.

    Args:
        target_layer: dotted module path of the layer to explain (`stages.3.blocks.2.conv_dw`); None
            picks the architecture's default (ConvNeXt: last depthwise conv; ViT: last block's norm1).
        top_k: ScoreCAM over only the k channels of highest variance (approximate, faster); None: exact.
        mask_batch_size: ScoreCAM's masked images per forward pass; None sizes it from the device.
        preview_top_k: the page shows a ScoreCAM preview from this many channels while the exact map is
            computed, when that would take more than a few seconds (a CPU and a big model); None: never.
    """

    target_layer: str | None = None
    top_k: int | None = None
    mask_batch_size: int | None = None
    preview_top_k: int | None = 32

    def __post_init__(self) -> None:
        for name in ("top_k", "mask_batch_size", "preview_top_k"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"explain.{name}={value!r}: must be a whole number of at least 1, or null")

    @classmethod
    def of(cls, settings: HeatmapSettings | Mapping[str, Any] | None) -> HeatmapSettings:
        """Settings from an object, a config mapping (its `_target_` ignored) or None (the defaults)."""
        if isinstance(settings, HeatmapSettings):
            return settings
        values = {k: v for k, v in dict(settings or {}).items() if k != "_target_"}
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"explain: unknown setting(s) {sorted(unknown)}; known: {list(asdict(cls()))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

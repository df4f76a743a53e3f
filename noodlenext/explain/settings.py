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
            computed, when that is estimated to take over `preview_after_s` (a CPU and a big model);
            None: never.
        preview_after_s: see preview_top_k.
    """

    target_layer: str | None = None
    top_k: int | None = None
    mask_batch_size: int | None = None
    preview_top_k: int | None = 32
    preview_after_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("top_k", "mask_batch_size", "preview_top_k"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"explain.{name}={value!r}: must be a whole number of at least 1, or null")
        wait = self.preview_after_s
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not wait >= 0:
            raise ValueError(f"explain.preview_after_s={wait!r}: must be a number of seconds, at least 0")

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

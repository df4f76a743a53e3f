"""Claims: what the evidence says about a photo (or a group of photos), as typed data.

Every evidence line is one `Claim`. A claim states, in fields a program can compare, what its line
says: the classes it involves, the regions it calls hot (and where it puts a map's peak and its largest
share of heat), the map it is about, its numbers with their units, the counts it gives ("4 of 5 nearest
photos are udon"), how an edit moves a class's probability and what the prediction becomes, a verdict,
the appearance words it licenses, and for a suggestion, which kind of advice. `fields` holds the values
the wording module (`noodlenext.explain.wording`) renders into words; nothing reads a claim's words back.

The grounding gate (`noodlenext.llm.grounding`) reads a language model's answer into the same kinds of
values and compares them with the claims the answer cites.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Claim", "Count", "Move", "Quantity", "percent", "decimal"]


@dataclass(frozen=True)
class Quantity:
    """A number a claim states. unit: "percent" (value 0..100, as shown rounded) or "decimal" (as shown);
    of: what it is the number of (a class name for its probability, "share", "area", "similarity",
    "deletion", "insertion", "r", "drop", "margin", "photos")."""

    value: float
    unit: str
    of: str = ""


def percent(fraction: float, of: str = "") -> Quantity:
    """A probability or share 0..1 as the percentage a line shows (rounded to a whole percent)."""
    return Quantity(float(round(100 * fraction)), "percent", of)


def decimal(value: float, digits: int, of: str = "") -> Quantity:
    """A number as the decimal a line shows (rounded to `digits` places)."""
    return Quantity(round(float(value), digits), "decimal", of)


@dataclass(frozen=True)
class Count:
    """n things out of `of`: "4 of 5 nearest training photos are udon" is Count(4, 5, "udon",
    "neighbours"). label: the class (or region) the n are; what: what is counted."""

    n: int
    of: int
    label: str = ""
    what: str = ""


@dataclass(frozen=True)
class Move:
    """How an edit of the photo moves one class's probability (0..1): before, after, and the direction as
    a line states it ("stays" when the two round to the same percent)."""

    cls: str
    before: float
    after: float

    @property
    def direction(self) -> str:
        b, a = round(100 * self.before), round(100 * self.after)
        return "stays" if a == b else "raises" if a > b else "drops"


@dataclass(frozen=True)
class Claim:
    """One thing the evidence says (see the module docstring). kind: what kind of claim it is, which also
    picks its wording (`wording.PHRASES`)."""

    kind: str
    classes: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()  # the regions it calls hot (an answer may name them)
    peak: str | None = None  # where it puts a map's peak
    top: str | None = None  # where it puts a map's largest share of heat
    map: str | None = None  # "scorecam", "gradcam", "contrastive", ... (None: no one map)
    quantities: tuple[Quantity, ...] = ()
    counts: tuple[Count, ...] = ()
    moves: tuple[Move, ...] = ()
    becomes: tuple[str, ...] = ()  # what the prediction is after the edit it states
    verdict: str | None = None
    looks: tuple[str, ...] = ()  # appearance words it licenses (colours, tone, texture)
    advice: str | None = None  # for kind "advice": add_photos, check_label, distrust_map, collect_pair
    fields: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types."""
        return {
            "kind": self.kind,
            "classes": list(self.classes),
            "regions": list(self.regions),
            "peak": self.peak,
            "top": self.top,
            "map": self.map,
            "quantities": [[q.value, q.unit, q.of] for q in self.quantities],
            "counts": [[c.n, c.of, c.label, c.what] for c in self.counts],
            "moves": [[m.cls, m.before, m.after] for m in self.moves],
            "becomes": list(self.becomes),
            "verdict": self.verdict,
            "looks": list(self.looks),
            "advice": self.advice,
            "fields": dict(self.fields),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Claim:
        """Inverse of to_dict."""
        return cls(
            kind=str(d["kind"]),
            classes=tuple(d.get("classes", ())),
            regions=tuple(d.get("regions", ())),
            peak=d.get("peak"),
            top=d.get("top"),
            map=d.get("map"),
            quantities=tuple(Quantity(float(v), str(u), str(o)) for v, u, o in d.get("quantities", ())),
            counts=tuple(Count(int(n), int(of), str(lb), str(w)) for n, of, lb, w in d.get("counts", ())),
            moves=tuple(Move(str(c), float(b), float(a)) for c, b, a in d.get("moves", ())),
            becomes=tuple(d.get("becomes", ())),
            verdict=d.get("verdict"),
            looks=tuple(d.get("looks", ())),
            advice=d.get("advice"),
            fields=dict(d.get("fields", {})),
        )

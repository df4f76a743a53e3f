"""A group of mistakes of one confusion pair (true -> predicted) as one Evidence, and the claims of what its
photos' evidence shares: how often each region is hot, the hot regions' colours and texture, what hiding
the hot region or keeping only it did, what the nearest training photos are, how many maps beat a random
one, and, when the pair dominates the test mistakes, the suggestion to collect photos of it.

The group's Evidence carries the mean probabilities, the facts of the mean map and of the mean
contrastive map, and these claims as its `summary` (`Evidence.claims()` numbers them after its maps), so
the grounding gate checks a paragraph about a group exactly as it checks one about a photo.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from noodlenext.explain.claims import Claim, Count, Move, percent
from noodlenext.explain.evidence import (
    BARELY,
    NOTABLE_MOVE,
    PART_WORDS,
    CausalRegion,
    Evidence,
    GlobalChange,
    change_words,
    setting_fields,
    settings_quantities,
    texture_licence,
)
from noodlenext.explain.facts import REGIONS, heatmap_facts

__all__ = ["DOMINANT_SHARE", "Reference", "cause_claims", "group_evidence", "summary_claim"]

# A pair with at least this share of the test mistakes, and no pair larger, dominates them: the group's
# suggestion is to collect photos of that pair.
DOMINANT_SHARE = 1 / 3


def _ranked(counts: Counter[str], order: Sequence[str] = ()) -> list[tuple[str, int]]:
    """Most first; ties in `order` (then first seen)."""
    position = {name: i for i, name in enumerate(order)}
    seen = {name: i for i, name in enumerate(counts)}
    return sorted(counts.items(), key=lambda kv: (-kv[1], position.get(kv[0], len(order)), seen[kv[0]]))


def group_evidence(
    evidences: Sequence[Evidence],
    cams: Sequence[np.ndarray],
    contrastive: Sequence[np.ndarray | None] = (),
    *,
    count: int | None = None,
    method: str = "gradcam",
    mistakes: int | None = None,
    largest: bool = False,
    reference: Reference | None = None,
) -> Evidence:
    """A group of mistakes of one pair as one Evidence: the mean probabilities, the facts of the mean map
    (`cams`, each photo's `method` map of the predicted class) and of the mean contrastive map, and the
    claims of what the photos' evidence shares as its `summary`. count: the group's size (default: the
    photos given); mistakes: all test mistakes, and largest: whether no pair has more (for the
    suggestion to collect photos of a dominant pair); reference: the same changes on photos of the
    predicted class it got right (`Reference`), against which the causes are ranked."""
    if not evidences:
        raise ValueError("a group needs the evidence of at least one photo")
    first = evidences[0]
    pred, true, names = first.predicted, first.true_label, list(first.class_names)
    if true is None or true == pred:
        raise ValueError(f"a mistake group needs wrong predictions, not {true} -> {pred}")
    if any((e.predicted, e.true_label) != (pred, true) for e in evidences):
        raise ValueError(f"every photo of a group must be {true} taken for {pred}")
    if len(cams) != len(evidences):
        raise ValueError(f"{len(evidences)} photos but {len(cams)} maps")
    k = len(evidences)
    count = k if count is None else count
    probabilities = {n: float(np.mean([e.probabilities[n] for e in evidences])) for n in names}
    mean_cam = np.mean(np.stack([np.asarray(c, dtype=np.float64) for c in cams]), axis=0)
    contrast = [c for c in contrastive if c is not None]
    mean_contrast = heatmap_facts(np.mean(np.stack(contrast), axis=0)) if len(contrast) == k else None
    lead = cause_claims(evidences, reference)
    summary = _summary(
        evidences, method, count, has_contrast=mean_contrast is not None, map_line=2 + len(lead)
    )
    if mistakes and largest and count / mistakes >= DOMINANT_SHARE:
        summary.append(
            Claim(
                "advice",
                (true, pred),
                quantities=(percent(count / mistakes, "mistakes"),),
                counts=(Count(count, mistakes, "", "mistakes"),),
                advice="collect_pair",
                fields={"true": true, "predicted": pred, "count": count, "mistakes": mistakes},
            )
        )
    return Evidence(
        file=f"{count} {true} photo{'s' if count != 1 else ''} taken for {pred}",
        class_names=names,
        probabilities=probabilities,
        predicted=pred,
        true_label=true,
        contrast_class=true,
        facts={method: heatmap_facts(mean_cam)},
        contrastive=mean_contrast,
        summary=summary,
        lead=lead,
    )


def summary_claim(evidence: Evidence, kind: str) -> Claim | None:
    """The group summary's claim of `kind` (group_size, group_hot, ...), if it has one."""
    return next((c for c in evidence.summary if c.kind == kind), None)


def _summary(
    evidences: Sequence[Evidence], method: str, count: int, has_contrast: bool, map_line: int = 2
) -> list[Claim]:
    k = len(evidences)
    first = evidences[0]
    pred, true, names = first.predicted, first.true_label, list(first.class_names)
    assert true is not None
    out = []

    confidences = [e.confidence for e in evidences]
    low, high, mean = min(confidences), max(confidences), float(np.mean(confidences))
    out.append(
        Claim(
            "group_size",
            (true, pred),
            quantities=(percent(low, pred), percent(high, pred), percent(mean, pred)),
            # "the 5 of them it got most wrong": the examined photos are a count of their own too.
            counts=(
                Count(k, count, true, "examined"),
                Count(count, count, true, "photos"),
                Count(k, k, true, "examined"),
            ),
            fields={
                "true": true,
                "predicted": pred,
                "count": count,
                "examined": k,
                "low": low,
                "high": high,
                "mean": mean,
                "method": method,
                "contrast": has_contrast,
                "map_line": map_line,
            },
        )
    )

    # Where the heat is: the regions each photo's evidence calls hot (its map's or the contrastive map's);
    # ties: the region that is hotter within the photos (its mean rank in their hot_regions) first.
    hot_lists = [e.hot_regions(method) for e in evidences]
    hot = Counter(r for regions in hot_lists for r in regions)
    rank = {r: np.mean([h.index(r) for h in hot_lists if r in h]) for r in hot}
    ranked = _ranked(hot, sorted(hot, key=lambda r: (rank[r], REGIONS.index(r))))
    shared = [(r, n) for r, n in ranked if 2 * n >= k][:3]
    shown = shared or ranked[:1]
    out.append(
        Claim(
            "group_hot",
            regions=tuple(r for r, _ in shown),
            map=method,
            quantities=() if shared else (percent(0.5, "threshold"),),  # "none is hot in half of them"
            counts=tuple(Count(n, k, r, "hot") for r, n in shown),
            fields={
                "method": method,
                "k": k,
                "shared": [[r, n] for r, n in shared],
                "top": [list(ranked[0])] if ranked and not shared else [],
                "all": dict(ranked),
            },
        )
    )

    # What the hot regions look like.
    looks = [e.appearance.hot for e in evidences if e.appearance is not None and e.appearance.hot.colours]
    if looks:
        colours = _ranked(Counter(c for look in looks for c in look.colours))[:3]
        textures = _ranked(Counter(look.texture for look in looks))[:2]
        j = len(looks)
        words = [c for c, _ in colours] + [w for t, _ in textures for w in texture_licence(t)]
        out.append(
            Claim(
                "group_look",
                looks=tuple(dict.fromkeys(words)),
                counts=tuple(Count(n, j, c, "colour") for c, n in colours)
                + tuple(Count(n, j, t, "texture") for t, n in textures),
                fields={
                    "j": j,
                    "colours": [list(c) for c in colours],
                    "textures": [list(t) for t in textures],
                },
            )
        )

    # What hiding the hot region, or keeping only it, does to the prediction.
    effects = [e.counterfactual for e in evidences if e.counterfactual is not None]
    effects = [cf for cf in effects if cf.hot_area > 0]  # an empty map has no hot region to hide
    if effects:
        c = len(effects)
        changed = Counter(cf.hidden_prediction for cf in effects if cf.hidden_prediction != pred)
        n_changed = sum(changed.values())
        dropped = sum(cf.drop > BARELY for cf in effects)
        before = float(np.mean([cf.original[pred] for cf in effects]))
        after = float(np.mean([cf.hidden[pred] for cf in effects]))
        kept = Counter(cf.kept_prediction for cf in effects)
        to = _ranked(changed, names)
        out.append(
            Claim(
                "group_hiding",
                tuple(dict.fromkeys([pred, *changed])),
                quantities=(percent(before, pred), percent(after, pred), percent(BARELY, "points")),
                counts=(
                    Count(n_changed, c, "", "changed"),
                    Count(dropped, c, pred, "dropped"),
                    *(Count(n, c, name, "becomes") for name, n in to),
                ),
                moves=(Move(pred, before, after),),
                becomes=tuple(dict.fromkeys([*changed, *([pred] if n_changed < c else [])])),
                fields={
                    "predicted": pred,
                    "c": c,
                    "changed": n_changed,
                    "to": [list(t) for t in to],
                    "dropped": dropped,
                    "before": before,
                    "after": after,
                    "points": round(BARELY * 100),
                },
            )
        )
        others = [(n, m) for n, m in _ranked(kept, names) if n != pred]
        out.append(
            Claim(
                "group_keeping",
                tuple(dict.fromkeys([pred, *(n for n, _ in others)])),
                counts=(
                    Count(kept.get(pred, 0), c, pred, "kept"),
                    *(Count(m, c, n, "kept") for n, m in others),
                ),
                becomes=tuple(dict.fromkeys([*(n for n, _ in others), *([pred] if kept.get(pred) else [])])),
                fields={
                    "predicted": pred,
                    "c": c,
                    "kept": kept.get(pred, 0),
                    "others": [list(o) for o in others],
                },
            )
        )

    # The nearest training photos.
    near = [e for e in evidences if e.neighbours]
    if near:
        j = len(near)
        majority = Counter(Counter(n.label for n in e.neighbours).most_common(1)[0][0] for e in near)
        labels = Counter(n.label for e in near for n in e.neighbours)
        total = sum(labels.values())
        order = [pred, true, *names]
        most, shares = _ranked(majority, order), _ranked(labels, order)
        out.append(
            Claim(
                "group_neighbours",
                tuple(dict.fromkeys([*(m for m, _ in most), *(s for s, _ in shares)])),
                quantities=tuple(percent(n / total, label) for label, n in shares),
                counts=(
                    *(Count(n, j, label, "majority") for label, n in most),
                    *(Count(n, total, label, "neighbours") for label, n in shares),
                    # "most of a photo's nearest photos are X": X is the majority of one photo's
                    *(Count(1, 1, label, "most") for label, _ in most),
                ),
                fields={
                    "predicted": pred,
                    "true": true,
                    "j": j,
                    "most": [list(m) for m in most],
                    "total": total,
                    "shares": [[label, n / total] for label, n in shares],
                    "agree": majority.get(pred, 0),
                    "against": majority.get(true, 0),
                },
            )
        )

    # The trust check of the maps.
    trusts = [e.trust[method] for e in evidences if method in e.trust]
    if trusts:
        j, good = len(trusts), sum(t.informative for t in trusts)
        verdict = "informative" if 2 * good > j else "half" if 2 * good == j else "uninformative"
        out.append(
            Claim(
                "group_trust",
                map=method,
                quantities=(percent(good / j, "informative"),),
                counts=(Count(good, j, "", "informative"),),
                verdict=verdict,
                fields={"method": method, "j": j, "good": good},
            )
        )
    return out


@dataclass(frozen=True)
class Reference:
    """The same changes on photos of the predicted class that the classifier got right, with the group's
    true class as their "truth": how often a change turns a photo into the true class when there is no
    mistake to undo. A change that does so as often is no cause of these mistakes (a tint that makes any
    udon look like spaghetti); what it does more often to the mistakes is. causal: the part that mattered
    most in most of the group's mistakes, hidden in each reference photo (`causes.hide_box`); changes:
    each photo's `whole_photo_changes` (with the group's removed colours). part: when the parts were
    compared over the whole group (`causes.contrast_part`: the part whose hiding turns the most mistakes
    back beyond the reference photos it turns), that part hidden in each of the group's examined
    mistakes, and part_reference the same part hidden in each reference photo; empty otherwise.
    compared: how many parts were compared."""

    causal: list[CausalRegion]
    changes: list[list[GlobalChange]]
    part: list[CausalRegion] = field(default_factory=list)
    part_reference: list[CausalRegion] = field(default_factory=list)
    compared: int = 0

    def rate(self, key: str) -> tuple[int, int] | None:
        """(photos turned into the true class, photos) for the change `key` (`GlobalChange.key`,
        "occlusion" for `causal`, "part" for `part_reference`); None when no reference photo has it."""
        if key in ("occlusion", "part"):
            hidden = self.causal if key == "occlusion" else self.part_reference
            return (sum(c.turned_back for c in hidden), len(hidden)) if hidden else None
        found = [g for gs in self.changes for g in gs if g.key == key]
        return (sum(g.turned_back for g in found), len(found)) if found else None


def _contrasted_part(
    reference: Reference,
    pred: str,
    true: str | None,
    against: Callable[[str, int, int], tuple[float, dict[str, Any], tuple[Count, ...]]],
) -> tuple[float, float, int, Claim]:
    """The group_occlusion claim of a part compared over the whole group (`Reference.part`)."""
    part = reference.part
    k, first, truth = len(part), part[0], str(true)
    n_back = sum(c.turned_back for c in part)
    changed = sum(c.becomes != c.predicted for c in part)
    score, ref, ref_count = against("part", n_back, k)
    claim = _occlusion_claim(
        pred, true, first.regions, (Count(n_back, k, truth, "turned back"), *ref_count), n_back, k,
        {"regions": [[first.region, k, n_back]], "compared": reference.compared, **ref},
    )  # fmt: skip
    return score, first.area, changed, claim


def _occlusion_claim(
    pred: str,
    true: str | None,
    regions: tuple[str, ...],
    counts: tuple[Count, ...],
    n_back: int,
    k: int,
    fields: dict[str, Any],
) -> Claim:
    """A group_occlusion claim: hiding a part turns `n_back` of the group's `k` photos back to `true`."""
    truth = str(true)
    return Claim(
        "group_occlusion",
        (pred, truth),
        regions,
        counts=counts,
        becomes=(truth,) if n_back else (),
        verdict="turned_back" if n_back else None,
        looks=PART_WORDS,
        fields={"k": k, "truth": true, "predicted": pred, "back": n_back, **fields},
    )


def cause_claims(evidences: Sequence[Evidence], reference: Reference | None = None) -> list[Claim]:
    """What changing the photos did, over a group of mistakes, the claims that lead its evidence: where
    hiding one part at a time matters most, and how many photos hiding it turns back to the true class
    (`group_occlusion`); each whole-photo change that changes a prediction or moves the predicted class
    by more than NOTABLE_MOVE on average (`group_whole_photo`, at most MAX_WHOLE_PHOTO), or one claim that
    none does. Each says how often it turns the `reference` photos into the true class, when there are
    some. First the claim whose share of photos turned back exceeds the reference's by the most (ties:
    the smaller edit, then the more photos changed)."""
    first = evidences[0]
    pred, true, names = first.predicted, first.true_label, list(first.class_names)
    truth = str(true)
    scored: list[tuple[float, float, int, Claim]] = []

    def against(key: str, n_back: int, k: int) -> tuple[float, dict[str, Any], tuple[Count, ...]]:
        rate = reference.rate(key) if reference is not None else None
        if rate is None:
            return n_back / k, {}, ()
        m, of = rate
        return n_back / k - m / of, {"reference": [m, of]}, (Count(m, of, pred, "reference"),)

    causal = [e.causal for e in evidences if e.causal is not None]
    compared = reference is not None and bool(reference.part)
    if compared:
        scored.append(_contrasted_part(reference, pred, true, against))
    # Each photo's own part, unless it is the compared part in every photo (the same line twice).
    if causal and not (compared and {c.region for c in causal} == {reference.part[0].region}):
        k = len(causal)
        where = Counter(c.region for c in causal)
        back = Counter(c.region for c in causal if c.turned_back)
        order = list(REGIONS) + [r for r in where if r not in REGIONS]
        ranked = sorted(where, key=lambda r: (-back[r], -where[r], order.index(r)))[:3]
        n_back = sum(back.values())
        changed = sum(c.becomes != c.predicted for c in causal)
        score, ref, ref_count = against("occlusion", n_back, k)
        regions = tuple(dict.fromkeys(x for c in causal if c.region in ranked for x in c.regions))
        scored.append(
            (
                score,
                float(np.mean([c.area for c in causal])),
                changed,
                _occlusion_claim(
                    pred,
                    true,
                    regions,
                    (
                        *(Count(where[r], k, r, "matters most") for r in ranked),
                        *(Count(back[r], k, r, "turned back") for r in ranked if back[r]),
                        Count(n_back, k, truth, "turned back"),
                        *ref_count,
                    ),
                    n_back,
                    k,
                    {"regions": [[r, where[r], back[r]] for r in ranked], **ref},
                ),
            )
        )
    by_change: dict[str, list[GlobalChange]] = {}
    for e in evidences:
        for g in e.changes:
            by_change.setdefault(g.key, []).append(g)
    # Out of every photo with changes: a colour taken out of only some of them turned only those.
    k = sum(1 for e in evidences if e.changes)
    notable = []
    for key, gs in by_change.items():
        to = Counter(g.becomes for g in gs if g.becomes != g.predicted)
        before = float(np.mean([g.before for g in gs]))
        after = float(np.mean([g.after for g in gs]))
        n_back = sum(g.turned_back for g in gs)
        if not to and abs(before - after) <= NOTABLE_MOVE:
            continue
        ranked_to = _ranked(to, [truth, *names])
        # The settings every photo shares (a removed colour's share of the photo differs per photo).
        fixed = [replace(gs[0], setting=None) if gs[0].change == "remove_colour" else gs[0]]
        score, ref, ref_count = against(key, n_back, k)
        notable.append(
            (
                score,
                float(np.mean([g.area for g in gs])),
                sum(to.values()),
                Claim(
                    "group_whole_photo",
                    tuple(dict.fromkeys([pred, *to, *([truth] if ref else [])])),
                    quantities=(percent(before, pred), percent(after, pred), *settings_quantities(fixed)),
                    counts=(*(Count(n, k, name, "becomes") for name, n in ranked_to), *ref_count),
                    moves=(Move(pred, before, after),),
                    becomes=tuple(dict.fromkeys([*to, *([pred] if sum(to.values()) < k else [])])),
                    verdict="turned_back" if n_back else None,
                    looks=change_words(gs[0]),
                    fields={
                        "change": gs[0].change,
                        "predicted": pred,
                        "truth": truth,
                        "k": k,
                        "to": [list(t) for t in ranked_to],
                        "back": n_back,
                        "before": before,
                        "after": after,
                        **setting_fields(fixed),
                        **ref,
                    },
                ),
            )
        )
    if by_change and not notable:
        moves = {
            c: abs(np.mean([g.before for g in gs]) - np.mean([g.after for g in gs]))
            for c, gs in by_change.items()
        }
        largest = max(moves, key=moves.__getitem__)
        every = [gs[0] for gs in by_change.values() if gs[0].change != "remove_colour"]
        scored.append(
            (
                -2.0,
                1.0,
                0,
                Claim(
                    "group_whole_photo_none",
                    (pred,),
                    looks=tuple(dict.fromkeys(w for gs in by_change.values() for w in change_words(gs[0]))),
                    quantities=(percent(moves[largest], "points"), *settings_quantities(every)),
                    fields={
                        "predicted": pred,
                        "changes": list(dict.fromkeys(gs[0].change for gs in by_change.values())),
                        "largest": largest,
                        "move": float(moves[largest]),
                        **setting_fields(every),
                    },
                ),
            )
        )
    rank = lambda t: (-round(t[0], 6), t[1], -t[2])  # noqa: E731
    scored += sorted(notable, key=rank)[:MAX_WHOLE_PHOTO]
    return [claim for *_, claim in sorted(scored, key=rank)]


# At most this many whole-photo changes lead a group's evidence (those that matter most).
MAX_WHOLE_PHOTO = 2

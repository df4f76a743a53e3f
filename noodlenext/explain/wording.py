"""The one place claims become words: `line(claim)` for the numbered evidence lines (prompts, reports, the
page, the chat, W&B) and `sentence(claim)` for a lay reader (the template explanations).

`PHRASES` holds every phrasing, per claim kind and style ("plain" or "lay"), with variants as
"<style>.<variant>". A kind's values function (`_VALUES`) picks the variant and fills the fields from the
claim's `fields`; a kind without a lay phrasing reads as its plain line. Nothing here is read back by a
program: the grounding gate compares claims, not these words.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from noodlenext.explain.claims import Claim

__all__ = [
    "CHANGE_PHRASES",
    "PHRASES",
    "TEXTURE_WORDS",
    "change_phrase",
    "line",
    "look_words",
    "method_name",
    "sentence",
    "tone",
]

_METHOD_NAMES = {"scorecam": "ScoreCAM", "gradcam": "GradCAM", "contrastive": "the contrastive map"}


def method_name(method: str) -> str:
    """How the words name a heatmap method ("scorecam" -> "ScoreCAM")."""
    return _METHOD_NAMES.get(method, method)


# Mean luma (0..1) below DARK reads as dark, at least BRIGHT as bright; in between, mid-toned.
DARK, BRIGHT = 0.35, 0.6
# How a region's texture (appearance.describe_region's names) reads in a line, and for a lay reader.
TEXTURE_WORDS = {"strand-like edges": "with strand-like edges", "smooth surface": "smooth"}
_LAY_TEXTURE = {
    "strand-like edges": "with strand-like edges",
    "smooth surface": "with a smooth surface",
    "mixed": "with a mixed texture",
}


def tone(brightness: float) -> str:
    """A mean luma 0..1 in words: dark, mid-toned or bright."""
    return "dark" if brightness < DARK else "bright" if brightness >= BRIGHT else "mid-toned"


def look_words(colours: list[str], brightness: float, texture: str) -> str:
    """A region's look in words: "beige and white, bright, with strand-like edges"."""
    return f"{_and(colours)}, {tone(brightness)}, {TEXTURE_WORDS.get(texture, f'with {texture} texture')}"


def _pct(x: float) -> str:
    return f"{x:.0%}"


def _and(items: list[str]) -> str:
    *first, last = items
    return f"{', '.join(first)} and {last}" if first else last


def _lead(share: float) -> str:
    return "most heat" if share > 0.5 else "the largest share of heat"


def _becomes(new: str, predicted: str) -> str:
    return f"the prediction stays {predicted}" if new == predicted else f"the prediction becomes {new}"


def _in(n: int, of: int, noun: bool = True, prep: str = "in") -> str:
    """How many of the photos: "in both photos", "in all 4 photos", "in none of the 4 photos", "in 2 of
    4 photos" ("in all 4" without the noun); of a single photo: "in the photo" or "in no photo"."""
    if of == 1:
        return f"{prep} the photo" if n else f"{prep} no photo"
    base = (
        ("both" if of == 2 else f"all {of}") if n == of else f"none of the {of}" if n == 0 else f"{n} of {of}"
    )
    return f"{prep} {base} photos" if noun else f"{prep} {base}"


def _counts(items: list[list[Any]], of: int) -> str:
    """ "upper left in all 4, center in 2 of 4"; of a single photo just the names."""
    if of == 1:
        return ", ".join(name for name, _ in items)
    return ", ".join(f"{name} {_in(n, of, noun=False)}" for name, n in items)


# ------------------------------------------------------------------------------ the phrasings
PHRASES: dict[str, dict[str, str]] = {
    # --- one photo
    "prediction": {
        "plain": "The classifier predicted {predicted} with {confidence} confidence; the true label is "
        "{true} ({verdict}).",
        "plain.unknown": "The classifier predicted {predicted} with {confidence} confidence; the true label "
        "is not known.",
        "lay.wrong": "The classifier took this {true} photo for {predicted}, with {confidence} confidence.",
        "lay.correct": "The classifier correctly recognised {predicted}, with {confidence} confidence.",
        "lay.unknown": "The classifier says {predicted} with {confidence} confidence; the true label is not "
        "known.",
    },
    "map": {
        "plain": "{name}: {lead} ({share}) in the {top}{others}; peak in the {peak}; {area} of the image is "
        "above half the peak{untrusted}.",
        "plain.empty": "{name}: the map is empty; no part of the image stands out{untrusted}.",
        "lay": "Its {name} heat is strongest in the {where}{distrust}.",
        "lay.empty": "Its {name} map is empty, so it shows no region that drove the decision.",
    },
    "contrastive": {
        "plain": "Contrastive map ({predicted} over {other}): peak in the {peak}; {lead} ({share}) in the "
        "{top}.",
        "lay": "What favours {predicted} over {other} lies mostly in the {top}.",
    },
    # --- what changing the photo does (explain.causes): these lead the evidence
    "occlusion": {
        "plain": "Hiding one part at a time ({tried}), the {where} matters most: hiding it ({area} of the "
        "image) {change}{truth}; {outcome}{heat}.",
        "plain.barely": "Hiding one part at a time ({tried}), no part matters much: the most, the {where} "
        "({area} of the image), {change}; {outcome}{heat}.",
        "lay": "Hiding the {region} of the photo {change}{truth}, and {outcome}.",
        "lay.barely": "Hiding any one small part of the photo barely changes {predicted}, so no small part "
        "alone decides.",
    },
    "occlusion_look": {
        "plain": "The {where} is mostly {colours}{unusual}.",
        "lay": "That part looks {two}{rare}.",
    },
    "whole_photo": {
        "plain": "{how}, {moved}; {outcome}.",
        "lay": "{how}, {moved}, and {outcome}.",
    },
    "whole_photo_none": {
        "plain": "Changing the whole photo ({listed}) moves {predicted} by {move} points at most (the "
        "largest: {largest}); none of these changes moves it by more than {notable} points.",
        "lay": "Changing the whole photo (its colour, sharpness, tint, a mirror or a crop) barely moves "
        "{predicted}, so no property of the whole photo decides.",
    },
    "hiding": {
        "plain": "Hiding the hot region ({area} of the image) {change}{barely}; {outcome}.",
        "lay": "Hiding that region {change}, and {outcome}.",
        "lay.barely": "Hiding that region barely changes anything ({change}), so that region alone does not "
        "decide.",
    },
    "keeping": {
        "plain": "Keeping only the hot region gives {predicted} {kept}; {outcome}.",
    },
    "appearance": {
        "plain": "The hot region{area} is mostly {hot}{rest}.",
        "lay": "That region looks {colours} {texture}.",
    },
    "neighbours": {
        "plain": "Nearest training photos: {count} of {k} are {label}{others} "
        "(similarity {high}\u2013{low}); they {agree} the prediction.",
        "lay": "{count} of its {k} nearest training photos are {label}{others}, so they {support} the "
        "prediction.",
    },
    "trust": {"plain": "{sentences}"},
    "agreement": {"plain": "ScoreCAM and GradCAM {verb} (r = {r})."},
    # --- suggestions, each from a fixed source (Evidence.advice, groups.group_evidence)
    "advice": {
        "plain.add_photos": "Suggestion: add more {true} training photos like this one; most of its nearest "
        "training photos are {predicted}.",
        "plain.check_label": "Suggestion: check this photo's label; a cross-validation gives it a label "
        "quality of {score} (it likely is {likely}).",
        "plain.distrust_map": "Suggestion: do not rely on the {name} map of this photo; it does no better "
        "than a random map.",
        "plain.collect_pair": "Suggestion: collect more {true} and {predicted} photos; {true} taken for "
        "{predicted} is {count} of the {mistakes} test mistakes.",
        "lay.add_photos": "Adding more {true} training photos like this one may help, since most of its "
        "nearest training photos are {predicted}.",
        "lay.check_label": "Its label may be wrong, so check it (a cross-validation scores its label quality "
        "{score}).",
        "lay.distrust_map": "Do not rely on the {name} map here, as it does no better than a random map.",
        "lay.collect_pair": "Collecting more {true} and {predicted} photos may help, as this pair is {count} "
        "of the {mistakes} test mistakes.",
    },
    # --- a suggestion a retrain proved (explain.tested, from noodlenext.improve)
    "tested_fix": {
        "plain.class": 'Tested by retraining ({seeds}, noodlenext.improve): the fix "{what}" raised {cls} '
        "recall from {before} to {after} and test accuracy by {diff} points (p = {p}).",
        "plain.overall": 'Tested by retraining ({seeds}, noodlenext.improve): the fix "{what}" raised test '
        "accuracy by {diff} points (p = {p}).",
        "lay.class": 'A retrain has tested a fix for this: "{what}" raised {cls} recall from {before} to '
        "{after} (p = {p} over {seeds}).",
        "lay.overall": 'A retrain has tested a fix: "{what}" raised test accuracy by {diff} points (p = {p} '
        "over {seeds}).",
        # the fix helped overall but not this photo's class: said, never "raised" of a recall that fell
        "plain.class_down": 'Tested by retraining ({seeds}, noodlenext.improve): the fix "{what}" raised '
        "test accuracy by {diff} points (p = {p}), but lowered {cls} recall from {before} to {after}.",
        "plain.class_same": 'Tested by retraining ({seeds}, noodlenext.improve): the fix "{what}" raised '
        "test accuracy by {diff} points (p = {p}); {cls} recall stayed at {before}.",
        "lay.class_down": 'A retrain has tested a fix: "{what}" raised test accuracy by {diff} points '
        "(p = {p} over {seeds}), but lowered {cls} recall from {before} to {after}.",
        "lay.class_same": 'A retrain has tested a fix: "{what}" raised test accuracy by {diff} points '
        "(p = {p} over {seeds}); {cls} recall stayed at {before}.",
    },
    # --- the tests the chat runs on demand (explain.probes)
    "why_not_same": {"plain": "Asked why not {other}: the classifier does predict {predicted}, with {p}."},
    "why_not_scores": {
        "plain": "Asked why not {other}: the classifier gives {predicted} {p} and {other} {q}."
    },
    "why_not_none": {
        "plain": "Its contrastive map finds no part of the photo that favours {predicted} over {other}."
    },
    "why_not_where": {
        "plain": "The evidence for {predicted} over {other} is strongest in the {top} ({share} of it); "
        "its peak is in the {peak}."
    },
    "why_not_hidden": {
        "plain": "Hiding that evidence ({area} of the image) moves {other} from {other_before} to "
        "{other_after} and {predicted} from {before} to {after}; {outcome}."
    },
    "change_none": {
        "plain": "Hiding even the hottest {share} of the image leaves the prediction {predicted} ({p}): no "
        "small part of the photo changes its mind."
    },
    "change_at": {
        "plain": "Hiding the hottest {share} of the image changes the prediction to {becomes} ({becomes} "
        "{p_new}, {predicted} {p})."
    },
    "runner_up": {
        "plain": "Without any change the runner-up is {runner} at {q}, against {predicted} at {p}."
    },
    "change_untrusted": {"plain": "The heatmap that ordered the hiding does not beat a random map here."},
    "which_none": {
        "plain": "Hiding each ninth of the photo in turn moves {predicted} by {drop} at most (for the "
        "{region}): no single part decides."
    },
    "which_part": {
        "plain": "Hiding each ninth of the photo in turn, the {first} matters most: {predicted} falls from "
        "{before} to {after}{then}."
    },
    "which_flip": {"plain": "With the {region} hidden the prediction becomes {becomes}."},
    "which_heat": {"plain": "The heatmap puts most heat ({share}) in the {top}, {agree}."},
    "looks_empty": {"plain": "The heatmap has no hot region to describe."},
    "looks_hot": {"plain": "The hot region is mostly {look}."},
    "looks_rest": {"plain": "The rest of the photo is {look}."},
    "how_sure": {"plain": "The classifier gives {listed}; {predicted} leads {runner} by {margin}."},
    "mirror": {"plain": "On the mirrored photo {same}, with {predicted} at {p}."},
    "similar_none": {"plain": "No training photos are at hand to compare with (the run saved no features)."},
    "similar_empty": {"plain": "The training photo index is empty."},
    "similar_counts": {
        "plain": "Of the {k} training photos most alike to the classifier, {listed} (similarity {high} to "
        "{low})."
    },
    "similar_majority": {
        "plain": "Most of them are {top}, which {verdict} the prediction {predicted}.",
        "plain.plurality": "{top} is the most common label among them ({n} of {k}), which {verdict} the "
        "prediction {predicted}.",
    },
    "similar_truth": {"plain": "{n} of them are {truth}, the true class."},
    # --- what a group of mistakes shares (explain.groups)
    "group_size": {
        "plain": "These facts are about {which} that the classifier took for {predicted}: {maps}.",
        "lay.one": "The classifier took this {true} photo for {predicted}, with {mean} confidence.",
        "lay.examined_one": "The classifier took {count} {true} photos for {predicted}; the one examined has "
        "{mean} confidence.",
        "lay": "The classifier took {count} {true} photos for {predicted}, with {mean} mean confidence.",
    },
    "group_occlusion": {
        "plain": "Hiding one part at a time, the part that matters most is the {counts}; hiding it turns "
        "{back} back to {truth}{reference}.",
        "plain.compared": "Hiding each of {compared} parts in every photo, the {region} turns the most back "
        "beyond the photos it got right: hiding it turns {back} back to {truth}{reference}.",
        "lay": "Hiding the {region} turns {region_back} back into {truth}{reference}.",
        "lay.none": "Hiding any one small part turns none of them back into {truth}.",
    },
    "group_whole_photo": {
        "plain": "{how}, {changed}{reference}; {predicted} {average}.",
        "lay": "{how}, {changed}{reference}.",
    },
    "group_whole_photo_none": {
        "plain": "Changing the whole photo ({listed}) changes none of the predictions; {predicted} moves by "
        "{move} points at most on average (the largest: {largest}).",
    },
    "group_hot": {
        "plain": "Hot regions, most often first (each photo's {name} or contrastive map): {counts}.",
        "plain.none_half": "Hot regions, most often first (each photo's {name} or contrastive map): none is "
        "hot in half of the photos or more; most often the {top} ({n} of {k}).",
        "plain.empty": "Hot regions, most often first (each photo's {name} or contrastive map): every map is "
        "empty; no region stands out.",
        "lay": "{their} heat is most often in the {where}.",
        "lay.one": "Its heat is in the {where}.",
        "lay.none_half": "No region is hot in half of them or more; most often the {top} ({n} of {k}).",
        "lay.empty": "{their} {name} maps are empty, so no region stands out.",
    },
    "group_look": {
        "plain": "Colours of the hot regions: {colours}; their texture: {textures}.",
        "lay": "The hot regions look {two} {texture}.",
    },
    "group_hiding": {
        "plain": "Hiding the hot region changes the prediction {in_changed}{to} and drops {predicted} by "
        "more than {points} points {in_dropped}; {predicted} {average}.",
        "lay.barely": "Hiding the hot region barely changes {predicted}{anywhere}, so that region alone does "
        "not decide.",
        "lay.kept": "Hiding the hot region changes none of the predictions, and {predicted} {average}.",
        "lay.one_turns": "Hiding the hot region turns the prediction into {new}.",
        "lay.one_drops": "Hiding the hot region drops {predicted} by more than {points} points, but the "
        "prediction stays {predicted}.",
        "lay": "Hiding the hot region drops {predicted} by more than {points} points {in_dropped_photos} and "
        "changes the prediction {in_changed_short}.",
    },
    "group_keeping": {
        "plain": "Keeping only the hot region keeps the prediction {predicted} {in_kept}{turns}.",
    },
    "group_neighbours": {
        "plain": "Nearest training photos: most of them are {most}; of all {total}, {shares}.",
        "lay": "{whose} are {label}, so they {support} the wrong prediction.",
    },
    "group_trust": {
        "plain": "{name} beats a random map {in_good} ({share}): {verdict}.",
        "lay": "{name} beats a random map {in_good}, so do not rely on its hot regions.",
    },
    "legacy": {"plain": "{text}"},
}


# ------------------------------------------------------------------------------ values per kind
Values = tuple[str, dict[str, Any]]


def _prediction(c: Claim, style: str) -> Values:
    f = c.fields
    values = {
        "predicted": f["predicted"],
        "true": f.get("true"),
        "confidence": _pct(f["confidence"]),
        "verdict": c.verdict,
    }
    if style == "lay":
        return f"lay.{c.verdict}", values
    return ("plain.unknown" if c.verdict == "unknown" else "plain"), values


def _map(c: Claim, style: str) -> Values:
    f = c.fields
    values: dict[str, Any] = {
        "name": method_name(f["method"]),
        "untrusted": " (uninformative: it does not beat a random map)" if f.get("uninformative") else "",
        "distrust": ", but this map does no better than a random one" if f.get("uninformative") else "",
    }
    if f.get("empty"):
        return f"{style}.empty", values
    values |= {
        "lead": _lead(f["share"]),
        "share": _pct(f["share"]),
        "others": "".join(f", {_pct(s)} in the {r}" for r, s in f.get("others", [])),
        "top": f["top"],
        "peak": f["peak"],
        "area": _pct(f["area"]),
        "where": " and ".join(c.regions[:2] or (f["top"],)),
    }
    return style, values


def _contrastive(c: Claim, style: str) -> Values:
    f = c.fields
    return style, {
        "predicted": f["predicted"],
        "other": f["other"],
        "peak": f["peak"],
        "lead": _lead(f["share"]),
        "share": _pct(f["share"]),
        "top": f["top"],
    }


def _change(before: float, after: float, cls: str) -> str:
    b, a = _pct(before), _pct(after)
    if b == a:
        return f"leaves {cls} at {b}"
    return f"{'drops' if after < before else 'raises'} {cls} from {b} to {a}"


def _moved(before: float, after: float, cls: str) -> str:
    """ "udon drops from 99% to 52%", "udon rises from ...", "udon stays at 99%"."""
    b, a = _pct(before), _pct(after)
    if b == a:
        return f"{cls} stays at {b}"
    return f"{cls} {'drops' if after < before else 'rises'} from {b} to {a}"


def _hiding(c: Claim, style: str) -> Values:
    f = c.fields
    pred = f["predicted"]
    values = {
        "area": _pct(f["area"]),
        "change": _change(f["before"], f["after"], pred),
        "outcome": _becomes(f["becomes"], pred),
        "barely": " (barely a change: the region alone does not decide)" if f["barely"] else "",
    }
    return (f"{style}.barely" if style == "lay" and f["barely"] else style), values


# How each whole-photo change (explain.causes.WHOLE_PHOTO_CHANGES) reads at the start of a sentence, and
# in a list.
CHANGE_PHRASES = {
    "grayscale": ("In grayscale (the colour taken away)", "grayscale"),
    "quarter_resolution": ("At a quarter of the resolution", "a quarter of the resolution"),
    "jpeg": ("Re-compressed as a JPEG of quality {quality}", "JPEG quality {quality}"),
    "warmer": ("With a warmer tint (as under warm light)", "a warmer tint"),
    "cooler": ("With a cooler tint (as under cold light)", "a cooler tint"),
    "mirror": ("Mirrored left to right", "a mirror"),
    "border_crop": ("With the border cropped off ({border} of each side)", "the border cropped"),
    "surroundings": (
        "With the surroundings hidden (the outer part of the photo, where the background and table are)",
        "the surroundings hidden",
    ),
    "remove_colour": (
        "With the {colour} taken out (turned grey{share})",
        "the {colour} taken out",
    ),
}


def change_phrase(change: str, fields: dict[str, Any], listed: bool = False) -> str:
    """A whole-photo change in words: "In grayscale (the colour taken away)" or, listed, "grayscale"."""
    if ":" in change:  # a GlobalChange.key: "remove_colour:red"
        change, colour = change.split(":", 1)
        fields = {**fields, "colour": colour}
    if change == "remove_colour" and not fields.get("colour"):
        return "one colour taken out" if listed else "With one colour taken out"
    lead, short = CHANGE_PHRASES.get(change, (change, change))
    values = {
        "quality": f"{fields.get('quality', 0):g}",
        "border": _pct(fields.get("border", 0.0)),
        "share": f": {_pct(fields['share'])} of the photo" if fields.get("share") is not None else "",
        "colour": fields.get("colour", ""),
    }
    return (short if listed else lead).format_map(values)


def _occlusion(c: Claim, style: str) -> Values:
    f = c.fields
    pred, truth = f["predicted"], f.get("truth")
    truth_moves = truth not in (None, pred) and f.get("truth_after") is not None
    strips = f.get("strips", 0)
    values = {
        "tried": f"{f['places']} squares" + (f" and {strips} edge strips" if strips else ""),
        "where": _where(f),
        "area": _pct(f["area"]),
        "region": f["region"],
        "predicted": pred,
        "change": _change(f["before"], f["after"], pred),
        "truth": f" and {_change(f['truth_before'], f['truth_after'], truth)}" if truth_moves else "",
        "outcome": _becomes(f["becomes"], pred),
        "heat": (
            f"; the {method_name(f['map'])} map puts {_pct(f['heat'])} of its heat there"
            if f.get("heat") is not None and f.get("map")
            else ""
        ),
    }
    return (f"{style}.barely" if f["barely"] else style), values


def _where(f: dict[str, Any]) -> str:
    """The hidden part: "lower right square", "bottom strip (lower left, lower center and lower right)"."""
    regions = f.get("regions") or [f["region"]]
    if f["region"].endswith("strip"):
        return f"{f['region']} ({_and(list(regions))})"
    return f"{f['region']} square"


def _rare_share(share: float) -> str:
    return "less than 1%" if round(100 * share) < 1 else _pct(share)


def _occlusion_look(c: Claim, style: str) -> Values:
    f = c.fields
    unusual = f.get("unusual") or []
    truth = f.get("truth")
    rare = "".join(
        f"; {name} is rare in the {truth} training photos ({_rare_share(share)} of their pixels)"
        for name, share in unusual
    )
    names = [name for name, _ in unusual]
    return style, {
        "where": _where(f),
        "colours": _and(f["colours"]),
        "unusual": rare,
        "two": " and ".join(f["colours"][:2]),
        "rare": (
            f", and {_and(names)} {'is a colour' if len(names) == 1 else 'are colours'} the {truth} "
            "training photos rarely show"
            if names
            else ""
        ),
    }


def _whole_photo(c: Claim, style: str) -> Values:
    f = c.fields
    pred = f["predicted"]
    return style, {
        "how": change_phrase(f["change"], f),
        "moved": _moved(f["before"], f["after"], pred),
        "outcome": _becomes(f["becomes"], pred),
    }


def _whole_photo_none(c: Claim, style: str) -> Values:
    f = c.fields
    return style, {
        "listed": ", ".join(change_phrase(x, f, listed=True) for x in f["changes"]),
        "predicted": f["predicted"],
        "move": round(100 * f["move"]),
        "largest": change_phrase(f["largest"], f, listed=True),
        "notable": round(100 * f["notable"]),
    }


def _group_occlusion(c: Claim, style: str) -> Values:
    f = c.fields
    k, truth = f["k"], f["truth"]
    parts = [
        f"{region} {_in(n, k, noun=False)}" + (f" ({m} turned back)" if m and k > 1 else "")
        for region, n, m in f["regions"]
    ]
    region, _, m = max(f["regions"], key=lambda r: r[2])
    values = {
        "counts": ", ".join(parts),
        "back": _of(f["back"], k),
        "truth": truth,
        "region": region,
        "region_back": _of(m, k),
        "reference": _reference(f, "turns"),
    }
    if style == "lay" and f["back"] == 0:
        return "lay.none", values
    if style == "plain" and f.get("compared"):
        part = region if region.endswith("strip") else f"{region} square"
        return "plain.compared", {**values, "compared": f["compared"], "region": part}
    return style, values


def _reference(f: dict[str, Any], verb: str) -> str:
    """What the same change does to the photos of the predicted class it got right, if it was tried."""
    if not f.get("reference"):
        return ""
    m, of = f["reference"]
    if f.get("reference_again"):  # the sentence before said the same of those photos
        return (
            f" (and {_of(m, of)} of those {f['predicted']} photos)"
            if m
            else f" (and none of those {f['predicted']} photos)"
        )
    return f" (it {verb} {_of(m, of)} {f['predicted']} photos it got right into {f['truth']})"


def _of(n: int, k: int) -> str:
    """ "3 of 8", "all 8", "both", "none of the 8"; of one photo "it" or "none"."""
    if k == 1:
        return "it" if n else "none"
    if n == k:
        return "both" if k == 2 else f"all {k}"
    return f"none of the {k}" if n == 0 else f"{n} of {k}"


def _group_whole_photo(c: Claim, style: str) -> Values:
    f = c.fields
    pred, k = f["predicted"], f["k"]
    if k == 1:
        to = f"the prediction becomes {f['to'][0][0]}" if f["to"] else f"the prediction stays {pred}"
    else:
        to = ", ".join(f"{_of(n, k)} become {name}" for name, n in f["to"]) or f"none of the {k} changes"
    before, after = _pct(f["before"]), _pct(f["after"])
    mean = "" if k == 1 else " on average"
    average = f"stays at {before}{mean}" if before == after else f"goes from {before} to {after}{mean}"
    return style, {
        "how": change_phrase(f["change"], f),
        "changed": to,
        "predicted": pred,
        "average": average,
        "reference": _reference(f, "turns"),
    }


def _group_whole_photo_none(c: Claim, style: str) -> Values:
    f = c.fields
    return "plain", {
        "listed": ", ".join(change_phrase(x, f, listed=True) for x in f["changes"]),
        "predicted": f["predicted"],
        "move": round(100 * f["move"]),
        "largest": change_phrase(f["largest"], f, listed=True),
    }


def _keeping(c: Claim, style: str) -> Values:
    f = c.fields
    return style, {
        "predicted": f["predicted"],
        "kept": _pct(f["kept"]),
        "outcome": _becomes(f["becomes"], f["predicted"]),
    }


def _appearance(c: Claim, style: str) -> Values:
    hot, rest = c.fields["hot"], c.fields.get("rest")
    said = look_words(hot["colours"], hot["brightness"], hot["texture"])
    other = (
        f"; the rest is {look_words(rest['colours'], rest['brightness'], rest['texture'])}" if rest else ""
    )
    return style, {
        "hot": said,
        "rest": other,
        "area": f" ({_pct(c.fields['area'])} of the image)" if c.fields.get("area") is not None else "",
        "colours": " and ".join(hot["colours"][:2]),
        "texture": _LAY_TEXTURE.get(hot["texture"], "with a mixed texture"),
    }


def _neighbours(c: Claim, style: str) -> Values:
    f = c.fields
    counts: list[list[Any]] = f["counts"]  # [[label, n], ...] most first
    label, count = counts[0]
    agrees = label == f["predicted"]
    return style, {
        "count": count,
        "k": f["k"],
        "label": label,
        "others": "".join(f", {n} {name}" for name, n in counts[1:]),
        "high": f"{f['high']:.2f}",
        "low": f"{f['low']:.2f}",
        "agree": "agree with" if agrees else "disagree with",
        "support": "support" if agrees else "do not support",
    }


def _trust(c: Claim, style: str) -> Values:
    out = []
    for t in c.fields["maps"]:
        numbers = (
            f"deletion {t['deletion']:.3f} vs {t['random_deletion']:.3f}, insertion {t['insertion']:.3f} vs "
            f"{t['random_insertion']:.3f}"
        )
        name = method_name(t["method"])
        if t["informative"]:
            out.append(f"{name} beats a random map ({numbers}): informative.")
        else:
            out.append(f"{name} does not beat a random map ({numbers}): uninformative; do not rely on it.")
    return "plain", {"sentences": " ".join(out)}


def _agreement(c: Claim, style: str) -> Values:
    return "plain", {"verb": c.verdict, "r": f"{c.fields['r']:.2f}"}


def _advice(c: Claim, style: str) -> Values:
    f = dict(c.fields)
    if "method" in f:
        f["name"] = method_name(f["method"])
    if "score" in f:
        f["score"] = f"{f['score']:.2f}"
    return f"{style}.{c.advice}", f


def _tested_fix(c: Claim, style: str) -> Values:
    f = c.fields
    p = f["p"]
    values = {
        "what": f["what"],
        "seeds": f"{f['seeds']} seed{'s' if f['seeds'] != 1 else ''}",
        "diff": f"{f['diff_points']:.1f}",
        "p": f"{p:.2f}" if p >= 0.01 else f"{p:.3f}",
    }
    if f.get("class") is None:
        return f"{style}.overall", values
    before, after = round(100 * f["before"]), round(100 * f["after"])
    form = "class" if after > before else "class_down" if after < before else "class_same"
    return f"{style}.{form}", {
        **values,
        "cls": f["class"],
        "before": _pct(f["before"]),
        "after": _pct(f["after"]),
    }


def _fields(pct: tuple[str, ...] = ()) -> Callable[[Claim, str], Values]:
    """Values that are the claim's fields, those named in `pct` as percentages."""

    def values(c: Claim, style: str) -> Values:
        return "plain", {k: (_pct(v) if k in pct else v) for k, v in c.fields.items()}

    return values


def _why_not_hidden(c: Claim, style: str) -> Values:
    _, v = _fields(("area", "other_before", "other_after", "before", "after"))(c, style)
    return "plain", {**v, "outcome": _becomes(c.fields["becomes"], c.fields["predicted"])}


def _which_part(c: Claim, style: str) -> Values:
    f = c.fields
    then = f", then the {f['second']} (to {_pct(f['after_second'])})" if f.get("second") else ""
    return "plain", {
        "first": f["first"],
        "predicted": f["predicted"],
        "before": _pct(f["before"]),
        "after": _pct(f["after"]),
        "then": then,
    }


def _which_heat(c: Claim, style: str) -> Values:
    agree = "the same part" if c.verdict == "same" else "a different part"
    return "plain", {"share": _pct(c.fields["share"]), "top": c.fields["top"], "agree": agree}


def _look_line(c: Claim, style: str) -> Values:
    f = c.fields
    return "plain", {"look": look_words(f["colours"], f["brightness"], f["texture"])}


def _how_sure(c: Claim, style: str) -> Values:
    f = c.fields
    listed = ", ".join(f"{n} {_pct(p)}" for n, p in f["ranked"])
    return "plain", {
        "listed": listed,
        "predicted": f["predicted"],
        "runner": f["runner"],
        "margin": _pct(f["margin"]),
    }


def _mirror(c: Claim, style: str) -> Values:
    f = c.fields
    pred, new = f["predicted"], f["becomes"]
    same = f"it stays {pred}" if new == pred else f"it becomes {new}"
    return "plain", {"same": same, "predicted": pred, "p": _pct(f["p"])}


def _similar_counts(c: Claim, style: str) -> Values:
    f = c.fields
    listed = ", ".join(f"{n} {label}" for label, n in f["counts"])
    return "plain", {"k": f["k"], "listed": listed, "high": f"{f['high']:.2f}", "low": f"{f['low']:.2f}"}


def _similar_majority(c: Claim, style: str) -> Values:
    verdict = "agrees with" if c.verdict == "agree" else "disagrees with"
    (count,) = c.counts
    variant = "plain" if 2 * count.n > count.of else "plain.plurality"
    return variant, {
        "top": c.fields["top"],
        "verdict": verdict,
        "predicted": c.fields["predicted"],
        "n": count.n,
        "k": count.of,
    }


def _group_size(c: Claim, style: str) -> Values:
    f = c.fields
    true, pred, count, k = f["true"], f["predicted"], f["count"], f["examined"]
    name = method_name(f["method"])
    if k == count:
        which = (
            f"the one {true} photo"
            if count == 1
            else f"both {true} photos"
            if count == 2
            else (f"all {count} {true} photos")
        )
    else:
        which = (
            f"{k} of the {count} {true} photos (those with the largest loss)"
            if k > 1
            else (f"the one of the {count} {true} photos with the largest loss")
        )
    low, high = _pct(f["low"]), _pct(f["high"])
    n = f.get("map_line", 2)  # the mean map's line: after the causes that lead the group's evidence
    if k == 1:
        maps = f"line 1 gives its confidence, line {n} its {name} map"
        maps += f", line {n + 1} its contrastive map" if f["contrast"] else ""
    else:
        spread = f"{low} for each" if low == high else f"from {low} to {high}"
        maps = f"line 1 gives their mean confidence ({spread}), line {n} their mean {name} map"
        maps += f", line {n + 1} their mean contrastive map" if f["contrast"] else ""
    values = {
        "which": which,
        "predicted": pred,
        "maps": maps,
        "true": true,
        "count": count,
        "mean": _pct(f["mean"]),
    }
    if style == "lay":
        return ("lay.one" if count == 1 else "lay.examined_one" if k == 1 else "lay"), values
    return "plain", values


def _group_hot(c: Claim, style: str) -> Values:
    f = c.fields
    k = f["k"]
    values: dict[str, Any] = {"name": method_name(f["method"]), "k": k, "their": "Its" if k == 1 else "Their"}
    if f["shared"]:
        values |= {"counts": _counts(f["shared"], k), "where": " and ".join(r for r, _ in f["shared"][:2])}
        return ("lay.one" if style == "lay" and k == 1 else style), values
    if f["top"]:
        ((top, n),) = f["top"]
        return f"{style}.none_half", {**values, "top": top, "n": n}
    return f"{style}.empty", values


def _group_look(c: Claim, style: str) -> Values:
    f = c.fields
    j = f["j"]
    texture = f["textures"][0][0]
    return style, {
        "colours": _counts(f["colours"], j),
        "textures": _counts(f["textures"], j),
        "two": " and ".join(name for name, _ in f["colours"][:2]),
        "texture": _LAY_TEXTURE.get(texture, f"with {texture} texture"),
    }


def _group_hiding(c: Claim, style: str) -> Values:
    f = c.fields
    pred, cnt = f["predicted"], f["c"]
    before, after = _pct(f["before"]), _pct(f["after"])
    before_p, after_p = round(100 * f["before"]), round(100 * f["after"])
    mean = "" if cnt == 1 else " on average"
    average = f"stays at {before}{mean}" if before == after else f"goes from {before} to {after}{mean}"
    to = f" (it becomes {_counts(f['to'], cnt)})" if f["to"] else ""
    values = {
        "predicted": pred,
        "in_changed": _in(f["changed"], cnt),
        "to": to,
        "points": f["points"],
        "in_dropped": _in(f["dropped"], cnt, noun=False),
        "in_dropped_photos": _in(f["dropped"], cnt),
        "in_changed_short": _in(f["changed"], cnt, noun=False),
        "average": average,
        "anywhere": "" if cnt == 1 else " in any of them",
        "new": f["to"][0][0] if f["to"] else pred,
    }
    if style == "lay":
        if f["dropped"] == 0 and f["changed"] == 0:
            # "barely" only where the mean barely moves too: a mean that rises is said as it is.
            return ("lay.barely" if abs(after_p - before_p) < f["points"] else "lay.kept"), values
        if cnt == 1:
            return ("lay.one_turns" if f["to"] else "lay.one_drops"), values
    return style, values


def _group_keeping(c: Claim, style: str) -> Values:
    f = c.fields
    cnt = f["c"]
    turns = f"; it becomes {_counts(f['others'], cnt)}" if f["others"] else ""
    return "plain", {"predicted": f["predicted"], "in_kept": _in(f["kept"], cnt), "turns": turns}


def _group_neighbours(c: Claim, style: str) -> Values:
    f = c.fields
    pred, true, j = f["predicted"], f["true"], f["j"]
    role = {pred: " (the wrong prediction)", true: " (the true class)"}
    most = ", ".join(f"{label}{role.get(label, '')} {_in(n, j, prep='for')}" for label, n in f["most"])
    shares = ", ".join(f"{_pct(s)} are {label}" for label, s in f["shares"])
    agree, against = f["agree"], f["against"]
    label, n, support = (pred, agree, "support") if agree >= against else (true, against, "do not support")
    whose = (
        "Most of its nearest training photos"
        if j == 1
        else (f"{_in(n, j, prep='For')} most nearest training photos")
    )
    return style, {
        "most": most,
        "total": f["total"],
        "shares": shares,
        "whose": whose,
        "label": label,
        "support": support,
    }


def _group_trust(c: Claim, style: str) -> Values:
    f = c.fields
    j, good = f["j"], f["good"]
    if j > 1:
        verdict = {
            "informative": "its hot regions are informative",
            "half": "only half of its maps are informative, so rely on the hot regions above with care",
            "uninformative": "most of its maps do no better than random, so do not rely on the hot regions "
            "above",
        }[c.verdict or "uninformative"]
    else:
        verdict = (
            "its hot region is informative"
            if good
            else "it does no better than random, so do not rely on the hot region above"
        )
    in_good = (
        (
            "in none of them"
            if good == 0 and j > 1
            else _in(good, j)
            if j == 1 or good == j
            else f"in only {good} of {j} photos"
        )
        if style == "lay"
        else _in(good, j)
    )
    return style, {
        "name": method_name(f["method"]),
        "in_good": in_good,
        "share": _pct(good / j),
        "verdict": verdict,
    }


_VALUES: dict[str, Callable[[Claim, str], Values]] = {
    "prediction": _prediction,
    "map": _map,
    "contrastive": _contrastive,
    "occlusion": _occlusion,
    "occlusion_look": _occlusion_look,
    "whole_photo": _whole_photo,
    "whole_photo_none": _whole_photo_none,
    "group_occlusion": _group_occlusion,
    "group_whole_photo": _group_whole_photo,
    "group_whole_photo_none": _group_whole_photo_none,
    "hiding": _hiding,
    "keeping": _keeping,
    "appearance": _appearance,
    "neighbours": _neighbours,
    "trust": _trust,
    "agreement": _agreement,
    "advice": _advice,
    "tested_fix": _tested_fix,
    "why_not_same": _fields(("p",)),
    "why_not_scores": _fields(("p", "q")),
    "why_not_none": _fields(),
    "why_not_where": _fields(("share",)),
    "why_not_hidden": _why_not_hidden,
    "change_none": _fields(("share", "p")),
    "change_at": _fields(("share", "p_new", "p")),
    "runner_up": _fields(("q", "p")),
    "change_untrusted": _fields(),
    "which_none": _fields(("drop",)),
    "which_part": _which_part,
    "which_flip": _fields(),
    "which_heat": _which_heat,
    "looks_empty": _fields(),
    "looks_hot": _look_line,
    "looks_rest": _look_line,
    "how_sure": _how_sure,
    "mirror": _mirror,
    "similar_none": _fields(),
    "similar_empty": _fields(),
    "similar_counts": _similar_counts,
    "similar_majority": _similar_majority,
    "similar_truth": _fields(),
    "group_size": _group_size,
    "group_hot": _group_hot,
    "group_look": _group_look,
    "group_hiding": _group_hiding,
    "group_keeping": _group_keeping,
    "group_neighbours": _group_neighbours,
    "group_trust": _group_trust,
    "legacy": _fields(),
}


def _render(claim: Claim, style: str) -> str:
    if claim.kind not in _VALUES:
        raise ValueError(f"no wording for the claim kind {claim.kind!r}")
    variant, values = _VALUES[claim.kind](claim, style)
    template = PHRASES[claim.kind].get(variant)
    if template is None:  # no lay phrasing: the plain line
        variant, values = _VALUES[claim.kind](claim, "plain")
        template = PHRASES[claim.kind][variant]
    return template.format_map(values)


def line(claim: Claim) -> str:
    """The claim as an evidence line (plain words, every number it states)."""
    return _render(claim, "plain")


def sentence(claim: Claim) -> str:
    """The claim for a lay reader (the template explanations); its plain line where it has no lay words."""
    return _render(claim, "lay")

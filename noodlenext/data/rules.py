"""What the data doctor flags, and the duplicate rule it shares with the data module.

Every finding names the files it is about and, for the fixable kinds, which of them a fix takes out:

    unreadable        cannot be decoded (corrupt, truncated, not really an image)          error
    non_image         a file without an image extension (the data module ignores it)       warning
    label_conflict    the same bytes under two classes                                     error
    leakage           the same (or a near-identical) image in test and train/val           error
                      (train <-> val only: warning)
    exact_duplicate   the same bytes twice within a split (SHA-256)                        warning
    near_duplicate    near-identical images within a split (pHash, see NEAR_THRESHOLD)     warning
    too_small         short side below the model's input size: upscaled when training      warning
    class_imbalance   largest / smallest class of a split above `imbalance_ratio`          warning
    size_by_class     classes differ in typical resolution: a shortcut a model can learn   warning
    empty_class       a class folder without a readable image                              warning
    extreme_aspect    long / short side above `max_aspect`: squashed by the square resize  info
    exif_orientation  an EXIF rotation (applied when loading; other tools may not)         info
    wrong_extension   the extension does not match the format (a PNG named .jpg)           info

The duplicate rule (`duplicate_groups`, `DuplicateGroup`) is the one place that says what copies of an
image mean: in test and train/val they are leakage, under two classes a label conflict, within a split
duplicates. `NoodleDataModule` applies it to SHA-256 digests at setup, the doctor to those and to
near-duplicate groups (see fingerprints.py), so the two never disagree about which files leak.
"""

from __future__ import annotations

import datetime
import time
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from noodlenext.data.fingerprints import (
    HASH_BITS,
    NEAR_SIMILARITY,
    NEAR_THRESHOLD,
    connected_components,
    hash_words,
    near_pairs,
    parallel_map,
    similarity,
)
from noodlenext.data.images import IMAGE_EXTENSIONS
from noodlenext.data.scan import SPLITS, UNKNOWN_FOLDER, FileInfo, inspect_file, scan_tree

SEVERITIES = ("error", "warning", "info")  # most severe first
REPORT_HEAD = r'\{\s*"root":'  # how data_check.json starts: the only existing report the doctor replaces
_FORMAT_EXTENSIONS = {
    "JPEG": {".jpg", ".jpeg"},
    "PNG": {".png"},
    "BMP": {".bmp"},
    "GIF": {".gif"},
    "TIFF": {".tif", ".tiff"},
    "WEBP": {".webp"},
    "MPO": {".jpg", ".jpeg"},  # multi-picture JPEGs from phones
}


# ----------------------------------------------------------------------------------------- duplicates
@dataclass(frozen=True)
class HashedImage:
    """One image as the duplicate rule sees it: its split, its name, its class and its bytes' digest."""

    split: str
    name: Any  # how the caller names the file: a root-relative path (the doctor), a Path (the data module)
    label: Hashable  # the class, as the caller names classes (a display name or an index)
    digest: str  # SHA-256 of the bytes
    labelled: bool = True  # False for test/unknown/*, an unlabelled test set


@dataclass
class DuplicateGroup:
    """Copies of one image and what they mean: byte-identical ones (`exact`), or near-identical ones.

    The copies keep the caller's order; the first copy of a split is the one a fix keeps.
    """

    images: list[HashedImage]
    exact: bool = True

    @property
    def splits(self) -> list[str]:
        return sorted({im.split for im in self.images}, key=SPLITS.index)

    @property
    def classes(self) -> list[Hashable]:
        """The distinct classes of the labelled copies, sorted."""
        return sorted({im.label for im in self.images if im.labelled})

    @property
    def in_test(self) -> list[HashedImage]:
        return [im for im in self.images if im.split == "test"]

    @property
    def label_conflict(self) -> bool:
        """The same bytes under two classes (near-identical images may be two photos of one bowl)."""
        return self.exact and len(self.classes) > 1

    @property
    def leaks(self) -> bool:
        """Copies in two or more splits. A near group needs two different contents: one content alone is
        an exact group, reported as such."""
        return len(self.splits) > 1 and (self.exact or len({im.digest for im in self.images}) > 1)

    @property
    def leaks_into_test(self) -> bool:
        """test against train/val: test scores would be inflated (train against val inflates val scores)."""
        return self.leaks and bool(self.in_test)

    @property
    def leak_severity(self) -> str:
        """error when a leaked test copy is labelled (it is scored); warning otherwise."""
        return "error" if any(im.labelled for im in self.in_test) else "warning"

    @property
    def leak_side(self) -> list[HashedImage]:
        """The copies a fix takes out of a leak: the train/val ones (test stays as it is), or, between
        train and val only, the val ones."""
        if self.in_test:
            return [im for im in self.images if im.split != "test"]
        return [im for im in self.images if im.split == "val"]

    def duplicates(self) -> list[tuple[str, list[HashedImage]]]:
        """(split, its copies) for every split holding two or more copies. Exact copies under different
        classes are left to the label conflict, whose fix takes out every copy; near ones need
        different bytes within the split (else they are exact copies, reported as such)."""
        out = []
        for split in self.splits:
            mine = [im for im in self.images if im.split == split]
            if len(mine) < 2 or (not self.exact and len({im.digest for im in mine}) < 2):
                continue
            if self.exact and len({im.label for im in mine}) > 1:
                continue
            out.append((split, mine))
        return out

    @property
    def extra_train_val_copies(self) -> int:
        """Copies in train and val together beyond the first: a train copy can land in val when val is
        split off train, so the data module counts the two as one."""
        return max(0, len(self.images) - len(self.in_test) - 1)


def duplicate_groups(images: Iterable[HashedImage]) -> list[DuplicateGroup]:
    """The byte-identical groups (two or more images of one digest), in order of first appearance, each
    in the order given."""
    by_digest: dict[str, list[HashedImage]] = defaultdict(list)
    for im in images:
        by_digest[im.digest].append(im)
    return [DuplicateGroup(group) for group in by_digest.values() if len(group) > 1]


# ----------------------------------------------------------------------------------------- findings
@dataclass
class Finding:
    """One problem, the files it names, and which of them a fix takes out (`remove`)."""

    kind: str
    severity: str
    message: str
    files: list[str]
    remove: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckReport:
    """Everything one check found: per-file facts, per-split/class statistics and the findings."""

    root: Path
    settings: dict[str, Any]
    files: list[FileInfo]
    findings: list[Finding]
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.findings

    def kinds(self) -> Counter:
        return Counter(f.kind for f in self.findings)

    def worst(self) -> str | None:
        """The most severe severity found, or None for a clean report."""
        found = {f.severity for f in self.findings}
        return next((s for s in SEVERITIES if s in found), None)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per split: total images and, per class, count, share, median size, smallest, formats, modes."""
        out: dict[str, dict[str, Any]] = {}
        for split in SPLITS:
            mine = [f for f in self.files if f.split == split and f.is_image]
            if not any(f.split == split for f in self.files):
                continue
            readable = [f for f in mine if f.readable]
            classes: dict[str, Any] = {}
            for cls in dict.fromkeys(f.cls for f in self.files if f.split == split):
                imgs = [f for f in readable if f.cls == cls]
                smallest = min(imgs, key=lambda f: (f.width * f.height, f.rel), default=None)
                classes[cls] = {
                    "count": len(imgs),
                    "share": len(imgs) / len(readable) if readable else 0.0,
                    "unreadable": sum(1 for f in mine if f.cls == cls and not f.readable),
                    "median_size": [
                        int(np.median([f.width for f in imgs])),
                        int(np.median([f.height for f in imgs])),
                    ]
                    if imgs
                    else None,
                    "smallest": {"file": smallest.rel, "size": [smallest.width, smallest.height]}
                    if smallest
                    else None,
                    "formats": dict(Counter(f.format for f in imgs).most_common()),
                    "modes": dict(Counter(f.mode for f in imgs).most_common()),
                }
            out[split] = {"images": len(readable), "classes": classes}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "checked_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(self.seconds, 2),
            "settings": self.settings,
            "clean": self.clean,
            "counts": dict(self.kinds()),
            "splits": self.stats(),
            "findings": [asdict(f) for f in self.findings],
            "files": [
                {
                    "file": f.rel,
                    "split": f.split,
                    "class": f.cls,
                    "sha256": f.sha256,
                    "size": [f.width, f.height] if f.readable else None,
                    "format": f.format,
                    "mode": f.mode,
                    "phash": f"{f.phash:0{HASH_BITS // 4}x}" if f.phash is not None else None,
                    "problem": f.problem,
                }
                for f in self.files
            ],
        }


def _hashed(f: FileInfo) -> HashedImage:
    return HashedImage(f.split, f.rel, f.cls, f.sha256, labelled=f.labelled)


def _report_order(f: FileInfo) -> tuple[int, str]:
    """Split, then path: the order findings name files in, and the first (kept) copy of a group."""
    return SPLITS.index(f.split), f.rel


def _duplicate_findings(
    groups: list[DuplicateGroup], closeness: dict[int, dict[str, float]] | None = None
) -> list[Finding]:
    """Label conflicts, leakage and within-split duplicates from groups of identical / similar images;
    closeness[n] (near groups) is the n-th group's worst pHash distance and thumbnail similarity."""
    findings = []
    for n, group in enumerate(groups):
        how = "byte-identical" if group.exact else "near-identical"
        files = [im.name for im in group.images]
        details: dict[str, Any] = {} if group.exact else dict((closeness or {}).get(n, {}))
        if group.label_conflict:
            labels = group.classes
            findings.append(
                Finding(
                    "label_conflict",
                    "error",
                    f"the same image is filed under {len(labels)} classes ({', '.join(labels)}): "
                    f"{', '.join(files)}; keep it in the right class only",
                    files,
                    remove=files,
                    details={"classes": labels},
                )
            )
        if group.leaks:
            test, splits = group.in_test, group.splits
            findings.append(
                Finding(
                    "leakage",
                    group.leak_severity,
                    f"{how} images in {' and '.join(splits)}: {', '.join(files)}; "
                    f"the {'train/val' if test else 'val'} copies inflate {'test' if test else 'val'} scores",
                    files,
                    remove=[im.name for im in group.leak_side],
                    details={"splits": splits, "match": "exact" if group.exact else "near", **details},
                )
            )
        for split, mine in group.duplicates():
            classes = sorted({im.label for im in mine})
            note = f" (under different classes: {', '.join(classes)})" if len(classes) > 1 else ""
            names = [im.name for im in mine]
            findings.append(
                Finding(
                    "exact_duplicate" if group.exact else "near_duplicate",
                    "warning",
                    f"{len(mine)} {how} images in {split}{note}: {', '.join(names)}",
                    names,
                    remove=names[1:],
                    details={"split": split, **details},
                )
            )
    return findings


def _per_file_findings(files: list[FileInfo], image_size: int, max_aspect: float) -> list[Finding]:
    findings = []
    for f in files:
        if not f.is_image:
            what = (
                f"a {f.format} image with an extension the data module ignores; rename it to one of "
                f"{sorted(_FORMAT_EXTENSIONS.get(f.format, IMAGE_EXTENSIONS))}"
                if f.format
                else "not an image (the data module ignores it)"
            )
            findings.append(Finding("non_image", "warning", f"{f.rel}: {what}", [f.rel], remove=[f.rel]))
        elif f.problem:
            findings.append(Finding("unreadable", "error", f"{f.rel}: {f.problem}", [f.rel], remove=[f.rel]))
    for split in SPLITS:
        mine = [f for f in files if f.split == split and f.readable]
        small = [f for f in mine if min(f.width, f.height) < image_size]
        if small:
            findings.append(
                Finding(
                    "too_small",
                    "warning",
                    f"{len(small)} image(s) in {split} have a short side below {image_size} px "
                    f"(the model's input size) and are upscaled: {_some(small)}",
                    [f.rel for f in small],
                    details={"split": split, "image_size": image_size},
                )
            )
        wide = [f for f in mine if max(f.width, f.height) > max_aspect * min(f.width, f.height)]
        if wide:
            findings.append(
                Finding(
                    "extreme_aspect",
                    "info",
                    f"{len(wide)} image(s) in {split} are more than {max_aspect}:1; the square resize "
                    f"squashes them: {_some(wide)}",
                    [f.rel for f in wide],
                    details={"split": split, "max_aspect": max_aspect},
                )
            )
        turned = [f for f in mine if f.orientation != 1]
        if turned:
            findings.append(
                Finding(
                    "exif_orientation",
                    "info",
                    f"{len(turned)} image(s) in {split} carry an EXIF rotation; noodlenext applies it, "
                    f"other tools may show them sideways: {_some(turned)}",
                    [f.rel for f in turned],
                    details={"split": split, "orientation": {f.rel: f.orientation for f in turned}},
                )
            )
        misnamed = [
            f
            for f in mine
            if f.format in _FORMAT_EXTENSIONS and f.path.suffix.lower() not in _FORMAT_EXTENSIONS[f.format]
        ]
        if misnamed:
            findings.append(
                Finding(
                    "wrong_extension",
                    "info",
                    f"{len(misnamed)} image(s) in {split} have an extension that does not match their "
                    f"format: {', '.join(f'{f.rel} ({f.format})' for f in misnamed[:5])}"
                    + (f" and {len(misnamed) - 5} more" if len(misnamed) > 5 else ""),
                    [f.rel for f in misnamed],
                    details={"split": split},
                )
            )
    return findings


def _class_findings(report_stats: dict[str, Any], imbalance_ratio: float) -> list[Finding]:
    findings = []
    for split, s in report_stats.items():
        classes = {c: v for c, v in s["classes"].items() if not (split == "test" and c == UNKNOWN_FOLDER)}
        for cls, v in classes.items():
            if v["count"] == 0:
                findings.append(
                    Finding(
                        "empty_class",
                        "warning",
                        f"{split}/{cls} has no readable image",
                        [],
                        details={"split": split, "class": cls},
                    )
                )
        counts = {c: v["count"] for c, v in classes.items() if v["count"]}
        if len(counts) > 1 and max(counts.values()) > imbalance_ratio * min(counts.values()):
            big, small = max(counts, key=counts.get), min(counts, key=counts.get)
            findings.append(
                Finding(
                    "class_imbalance",
                    "warning",
                    f"{split} is imbalanced: {big} has {counts[big]} images, {small} {counts[small]} "
                    f"({counts[big] / counts[small]:.1f}x > {imbalance_ratio}x; counts {counts}); "
                    "consider data.sampler=weighted or more images of the small classes",
                    [f"{split}/{c}" for c in counts],
                    details={"split": split, "counts": counts},
                )
            )
        medians = {
            c: v["median_size"][0] * v["median_size"][1] for c, v in classes.items() if v["median_size"]
        }
        if len(medians) > 1 and max(medians.values()) > 2.0 * min(medians.values()):
            sizes = {c: "x".join(map(str, classes[c]["median_size"])) for c in medians}
            findings.append(
                Finding(
                    "size_by_class",
                    "warning",
                    f"{split}: classes differ in typical resolution (median {sizes}); a model can learn the "
                    "class from size or compression artefacts instead of the noodles",
                    [f"{split}/{c}" for c in medians],
                    details={"split": split, "median_size": sizes},
                )
            )
    return findings


def _some(files: Sequence[FileInfo], n: int = 5) -> str:
    shown = ", ".join(f.rel for f in files[:n])
    return shown + (f" and {len(files) - n} more" if len(files) > n else "")


def check_dataset(
    root: str | Path,
    image_size: int = 384,
    near_threshold: int | None = NEAR_THRESHOLD,
    near_similarity: float = NEAR_SIMILARITY,
    imbalance_ratio: float = 3.0,
    max_aspect: float = 2.5,
    workers: int | None = None,
    progress: bool = False,
) -> CheckReport:
    """Inspect every file under root (in threads) and collect the findings, most severe first;
    `near_threshold=None` skips the near-duplicate search. image_size is the model's input size (px)."""
    start = time.perf_counter()
    root = Path(root).expanduser().resolve()
    files = scan_tree(root)
    facts = parallel_map(
        lambda f: inspect_file(f.path, f.is_image), files, workers, "checking images", progress
    )
    for f, fact in zip(files, facts, strict=True):
        for key, value in fact.items():
            setattr(f, key, value)
    findings = _per_file_findings(files, image_size, max_aspect)

    readable = [f for f in files if f.readable]
    findings += _duplicate_findings(duplicate_groups(_hashed(f) for f in sorted(readable, key=_report_order)))

    by_sha: dict[str, list[FileInfo]] = defaultdict(list)
    for f in readable:
        by_sha[f.sha256].append(f)
    if near_threshold is not None and near_threshold >= 0 and len(by_sha) > 1:
        unique = list(by_sha.values())  # one fingerprint per distinct content: exact copies are done above
        i, j, d = near_pairs(hash_words([g[0].phash for g in unique]), near_threshold)
        sim = similarity(np.stack([g[0].thumb for g in unique]), i, j)
        keep = sim >= near_similarity
        i, j, d, sim = i[keep], j[keep], d[keep], sim[keep]
        comps = connected_components(len(unique), i.tolist(), j.tolist())
        comp_of = {u: n for n, comp in enumerate(comps) for u in comp}
        worst: dict[int, dict[str, float]] = {}
        for a, dist, r in zip(i.tolist(), d.tolist(), sim.tolist(), strict=True):
            w = worst.setdefault(comp_of[a], {"max_distance": 0, "min_similarity": 1.0})
            w["max_distance"] = max(w["max_distance"], dist)
            w["min_similarity"] = round(min(w["min_similarity"], r), 4)
        groups = [
            DuplicateGroup(
                [_hashed(f) for f in sorted((f for u in comp for f in unique[u]), key=_report_order)],
                exact=False,
            )
            for comp in comps
        ]
        findings += _duplicate_findings(groups, closeness=worst)

    settings = {
        "image_size": image_size,
        "near_threshold": near_threshold,
        "near_similarity": near_similarity,
        "imbalance_ratio": imbalance_ratio,
        "max_aspect": max_aspect,
    }
    report = CheckReport(root, settings, files, findings)
    report.findings += _class_findings(report.stats(), imbalance_ratio)
    order = {k: n for n, k in enumerate(SEVERITIES)}
    report.findings.sort(key=lambda f: (order[f.severity], f.kind, f.files[:1]))
    report.seconds = time.perf_counter() - start
    return report

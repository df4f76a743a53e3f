"""Which labels are wrong? Confident learning (cleanlab) over a cross-validation's out-of-fold predictions.

`python -m noodlenext.train experiment=crossval` trains one model per fold (data.fold=0..k-1); each
job predicts the train/ images it never saw (its held-out fold) with its best checkpoint and writes
them here (`write_out_of_fold`): `oof_probs.csv` (file relative to the data root, given label, fold,
one probability per class) and `oof_probs.json` (root, classes, fold, folds, data.file_list). Every
train/ image is held out by exactly one fold, so together they give each image a prediction from a
model that did not learn its label.

`find_label_issues` gathers a sweep directory's files and asks cleanlab which given labels disagree
with those predictions more than the estimated noise rates allow (`cleanlab.filter.find_label_issues`,
ranked by self-confidence = the out-of-fold probability of the given label; lower is more suspect).
`write_label_issues` writes, in the sweep directory:

    label_issues.csv   rank, file, given label, likely label, score, fold (most suspect first)
    label_issues.txt   the flagged files, one root-relative path a line: the data doctor moves them
                       aside with `python -m noodlenext.data.check root=<root> fix=quarantine files=<it>`
    clean_files.txt    every image of the dataset (within the run's data.file_list, if any) except the
                       flagged ones: train on it with data.file_list=<it>

Its command is `python -m noodlenext.data.label_issues <sweep dir>` (data/label_issues.py).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noodlenext.core.files import write_json_atomic, write_text_atomic
from noodlenext.core.ownership import guard_file
from noodlenext.data.fixes import FILE_LIST_HEAD
from noodlenext.data.images import list_files

log = logging.getLogger(__name__)

OOF_CSV = "oof_probs.csv"
OOF_META = "oof_probs.json"
ISSUES_CSV = "label_issues.csv"
ISSUES_LIST = "label_issues.txt"
CLEAN_LIST = "clean_files.txt"
ISSUES_CSV_HEAD = r"rank,file,given_label,"  # how the files start: the only existing ones it may replace
ISSUES_LIST_HEAD = r"# \d+ likely label issue"
FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given")
SPLITS = ("train", "val", "test")


def relative_name(path: str | Path, root: str | Path) -> str:
    """A file's posix path relative to the dataset root (how file lists name it), or its absolute path."""
    path, root = Path(path).resolve(), Path(root).resolve()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def write_out_of_fold(
    out_dir: str | Path,
    samples: Sequence[tuple[Path, int]],
    probs: np.ndarray,
    class_names: Sequence[str],
    root: str | Path,
    fold: int,
    folds: int,
    file_list: str | Path | None = None,
) -> Path:
    """Write one fold's held-out predictions: oof_probs.csv (a row per image) and oof_probs.json."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(samples), len(class_names)):
        raise ValueError(
            f"{probs.shape} probabilities for {len(samples)} images of {len(class_names)} classes"
        )
    out_dir = Path(out_dir)
    rows = [["file", "label", "fold", *(f"prob_{c}" for c in class_names)]]
    for (path, label), p in zip(samples, probs, strict=True):
        rows.append([relative_name(path, root), class_names[label], str(fold), *(f"{v:.6g}" for v in p)])
    write_text_atomic(out_dir / OOF_CSV, _csv_text(rows))
    meta = {
        "root": str(Path(root).resolve()),
        "classes": list(class_names),
        "fold": int(fold),
        "folds": int(folds),
        "file_list": str(Path(file_list).expanduser().resolve()) if file_list else None,
        "images": len(samples),
    }
    write_json_atomic(out_dir / OOF_META, meta)
    return out_dir / OOF_CSV


@dataclass
class OutOfFold:
    """A cross-validation's out-of-fold predictions, gathered: one row per train/ image."""

    root: Path
    classes: list[str]
    files: list[str]
    labels: np.ndarray  # (N,) given label indices
    folds_of: np.ndarray  # (N,) the fold that held each image out
    probs: np.ndarray  # (N, classes), rows sum to 1
    folds: int
    missing_folds: list[int]
    file_list: Path | None


def read_out_of_fold(sweep_dir: str | Path) -> OutOfFold:
    """Gather every job's oof_probs.csv/.json of a sweep directory, checking they belong together."""
    sweep_dir = Path(sweep_dir).expanduser()
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir} is not a directory: give the sweep directory of a crossval run")
    metas = sorted(sweep_dir.glob(f"*/{OOF_META}"), key=lambda p: p.parent.name)
    if not metas:
        raise FileNotFoundError(
            f"no */{OOF_META} in {sweep_dir}: give the sweep directory of "
            "`python -m noodlenext.train experiment=crossval` (multirun/crossval/<run id>), whose jobs "
            "write their held-out fold's predictions there"
        )
    first: dict | None = None
    seen_folds: dict[int, Path] = {}
    files: list[str] = []
    labels, folds_of, probs = [], [], []
    for meta_path in metas:
        meta = json.loads(meta_path.read_text())
        if first is None:
            first = meta
        for key in ("root", "classes", "folds", "file_list"):
            if meta[key] != first[key]:
                raise ValueError(
                    f"{meta_path}: {key}={meta[key]!r}, but {metas[0]} has {first[key]!r}; the jobs of "
                    f"{sweep_dir} are not one cross-validation"
                )
        fold = int(meta["fold"])
        if fold in seen_folds:
            raise ValueError(f"{meta_path.parent} and {seen_folds[fold]} both hold out fold {fold}")
        seen_folds[fold] = meta_path.parent
        classes = meta["classes"]
        with (meta_path.parent / OOF_CSV).open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            expected = ["file", "label", "fold", *(f"prob_{c}" for c in classes)]
            if header != expected:
                raise ValueError(f"{meta_path.parent / OOF_CSV}: columns {header}, expected {expected}")
            for row in reader:
                if row[1] not in classes:
                    raise ValueError(f"{meta_path.parent / OOF_CSV}: {row[0]} has unknown label {row[1]!r}")
                files.append(row[0])
                labels.append(classes.index(row[1]))
                folds_of.append(fold)
                probs.append([float(v) for v in row[3:]])
    assert first is not None
    doubles = [f for f, n in Counter(files).items() if n > 1]
    if doubles:
        raise ValueError(
            f"{len(doubles)} file(s) are held out by more than one job of {sweep_dir} "
            f"(e.g. {sorted(doubles)[0]}): the folds overlap; were the jobs run with different "
            "data.split_seed?"
        )
    missing = sorted(set(range(int(first["folds"]))) - set(seen_folds))
    if missing:
        log.warning(
            "folds %s of %d have no %s in %s (failed or still running?): their images are not checked",
            missing,
            first["folds"],
            OOF_CSV,
            sweep_dir,
        )
    p = np.asarray(probs, dtype=np.float64).reshape(len(files), len(first["classes"]))
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"{sweep_dir}: out-of-fold probabilities are not finite and non-negative")
    p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)  # undo the CSV's rounding
    return OutOfFold(
        root=Path(first["root"]),
        classes=list(first["classes"]),
        files=files,
        labels=np.asarray(labels, dtype=np.int64),
        folds_of=np.asarray(folds_of, dtype=np.int64),
        probs=p,
        folds=int(first["folds"]),
        missing_folds=missing,
        file_list=Path(first["file_list"]) if first["file_list"] else None,
    )


def average_out_of_fold(oofs: Sequence[OutOfFold], names: Sequence[str] = ()) -> OutOfFold:
    """Repeated cross-validations of the same images (other `data.split_seed` / `seed`) as one: each
    image's out-of-fold probabilities averaged over the repeats (an ensemble of models that none of which
    trained on it), on the images every repeat predicted. Refused when the repeats are of different data
    (root, classes or an image's label). names: how to call each repeat in an error (its folder)."""
    if not oofs:
        raise ValueError("no cross-validation to average")
    first, names = oofs[0], list(names) or [f"repeat {i}" for i in range(len(oofs))]
    for name, other in zip(names[1:], oofs[1:], strict=False):
        for key in ("root", "classes"):
            if getattr(other, key) != getattr(first, key):
                raise ValueError(
                    f"{name}: {key}={getattr(other, key)!r}, but {names[0]} has {getattr(first, key)!r}; "
                    "only repeats of one cross-validation's data can be averaged"
                )
    common = set(first.files).intersection(*(o.files for o in oofs[1:]))
    keep = [i for i, f in enumerate(first.files) if f in common]
    probs = np.zeros((len(keep), len(first.classes)))
    for name, o in zip(names, oofs, strict=True):
        at = {f: i for i, f in enumerate(o.files)}
        rows = [at[first.files[i]] for i in keep]
        if (o.labels[rows] != first.labels[keep]).any():
            raise ValueError(
                f"{name} labels some images differently from {names[0]}: not one dataset's repeats"
            )
        probs += o.probs[rows]
    if len(keep) < len(first.files):
        log.warning("%d image(s) are not predicted by every repeat: left out", len(first.files) - len(keep))
    return OutOfFold(
        root=first.root,
        classes=first.classes,
        files=[first.files[i] for i in keep],
        labels=first.labels[keep],
        folds_of=first.folds_of[keep],
        probs=probs / len(oofs),
        folds=first.folds,
        missing_folds=first.missing_folds,
        file_list=first.file_list,
    )


@dataclass
class LabelIssue:
    """A train/ image whose given label the out-of-fold prediction contradicts."""

    file: str
    given: str
    likely: str
    score: float  # cleanlab's label quality (self-confidence: the held-out probability of the given label)
    prob_likely: float
    fold: int


def find_label_issues(oof: OutOfFold, filter_by: str = "prune_by_noise_rate") -> list[LabelIssue]:
    """cleanlab's label issues among the out-of-fold predictions, most suspect first."""
    from cleanlab.filter import find_label_issues as cleanlab_find_label_issues
    from cleanlab.rank import get_label_quality_scores

    if filter_by not in FILTERS:
        raise ValueError(f"filter_by={filter_by!r} is not known; use one of {', '.join(FILTERS)}")
    absent = [c for i, c in enumerate(oof.classes) if not (oof.labels == i).any()]
    if absent:
        raise ValueError(f"classes {absent} have no out-of-fold predictions: every class needs images")
    ranked = cleanlab_find_label_issues(
        oof.labels, oof.probs, filter_by=filter_by, return_indices_ranked_by="self_confidence", n_jobs=1
    )
    scores = get_label_quality_scores(oof.labels, oof.probs)
    likely = oof.probs.argmax(axis=1)
    return [
        LabelIssue(
            file=oof.files[i],
            given=oof.classes[oof.labels[i]],
            likely=oof.classes[likely[i]],
            score=float(scores[i]),
            prob_likely=float(oof.probs[i, likely[i]]),
            fold=int(oof.folds_of[i]),
        )
        for i in (int(j) for j in ranked)
    ]


@dataclass
class LabelIssuesResult:
    """What `write_label_issues` found and wrote."""

    issues: list[LabelIssue]
    checked: int
    root: Path
    csv: Path
    issues_list: Path
    clean_list: Path
    kept: int
    missing_folds: list[int]


def dataset_images(root: Path, file_list: Path | None = None) -> list[str]:
    """The root-relative paths of the images under root/{train,val,test}/ (within file_list, if given)."""
    found = []
    for split in SPLITS:
        if (root / split).is_dir():
            found += [relative_name(p, root) for p in list_files(root / split)[0]]
    if file_list is None:
        return found
    if not file_list.is_file():
        raise FileNotFoundError(
            f"{file_list} (the cross-validation's data.file_list) does not exist any more"
        )
    lines = (line.strip() for line in file_list.read_text().splitlines())
    listed = {relative_name(root / line, root) for line in lines if line and not line.startswith("#")}
    return [f for f in found if f in listed]


def write_label_issues(
    sweep_dir: str | Path,
    filter_by: str = "prune_by_noise_rate",
    out_dir: str | Path | None = None,
    repeats: Sequence[str | Path] = (),
) -> LabelIssuesResult:
    """Find the label issues of a crossval sweep and write label_issues.csv, label_issues.txt and
    clean_files.txt (in out_dir, default the sweep directory). repeats: more crossval sweeps of the same
    data (another split seed): the out-of-fold probabilities are averaged over all of them first."""
    out = Path(out_dir or sweep_dir).expanduser().resolve()
    option = "--out-dir" if out_dir else "sweep_dir"
    heads = {ISSUES_CSV: ISSUES_CSV_HEAD, ISSUES_LIST: ISSUES_LIST_HEAD, CLEAN_LIST: FILE_LIST_HEAD}
    for name, head in heads.items():
        guard_file(out / name, option, head)  # all three checked before one is written
    oof = read_out_of_fold(sweep_dir)
    if repeats:
        oof = average_out_of_fold(
            [oof, *(read_out_of_fold(r) for r in repeats)], [str(sweep_dir), *map(str, repeats)]
        )
    issues = find_label_issues(oof, filter_by)
    rows = [["rank", "file", "given_label", "likely_label", "score", "prob_likely", "fold"]]
    rows += [
        [str(r), i.file, i.given, i.likely, f"{i.score:.6f}", f"{i.prob_likely:.6f}", str(i.fold)]
        for r, i in enumerate(issues, start=1)
    ]
    write_text_atomic(out / ISSUES_CSV, _csv_text(rows))
    how = f"averaged over {1 + len(repeats)} cross-validations, " if repeats else ""
    note = f"# of {len(oof.files)} train/ image(s) of {oof.root} (out-of-fold, {how}cleanlab {filter_by})"
    if oof.missing_folds:
        note += f"; folds {oof.missing_folds} missing, their images unchecked"
    header = [
        f"# {len(issues)} likely label issue(s), most suspect first {note[2:]}",
        "# paths are relative to the dataset root; move them aside with:",
        f"#   python -m noodlenext.data.check root={oof.root} fix=quarantine fix_kinds=[] "
        f"files={out / ISSUES_LIST}",
    ]
    write_text_atomic(out / ISSUES_LIST, "\n".join(header + [i.file for i in issues]) + "\n")
    flagged = {i.file for i in issues}
    keep = [f for f in dataset_images(oof.root, oof.file_list) if f not in flagged]
    header = [
        f"# the images of {oof.root} without the {len(issues)} likely label issue(s) of {ISSUES_LIST}",
        "# paths are relative to the dataset root; use: data.file_list=" + str(out / CLEAN_LIST),
    ]
    write_text_atomic(out / CLEAN_LIST, "\n".join(header + keep) + "\n")
    return LabelIssuesResult(
        issues=issues,
        checked=len(oof.files),
        root=oof.root,
        csv=out / ISSUES_CSV,
        issues_list=out / ISSUES_LIST,
        clean_list=out / CLEAN_LIST,
        kept=len(keep),
        missing_folds=oof.missing_folds,
    )


def _csv_text(rows: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()

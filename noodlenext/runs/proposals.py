"""What might fix a trained run: fixes proposed from what the run knows, each with the evidence behind it.

`read_run(dir)` reads a train run (`.hydra/`, `mistakes.json`, `test_predictions.csv`) or a crossval sweep
(`experiment=crossval`: its `label_issues.csv` and the folds' out-of-fold predictions). `propose(...)`
turns what it found into `Fix`es:

  drop_labels / relabel   the top-k of `label_issues.csv`, k = how many flagged labels have an
                          out-of-fold prediction of another class at least as sure as the out-of-fold
                          model is accurate (p(likely) >= out-of-fold accuracy): a weak model must be surer
  remove_copies           train/val copies of test photos and near-duplicates the data doctor found
  rebalance               a weighted sampler, when the doctor finds train/ imbalanced
  colour / erase          an augmentation aimed at a confusion pair's cause (`mistakes.json`): a change of
                          colour that turns its mistakes back (grayscale, a tint, a colour taken out), or
                          a part off the centre whose hiding does
  resolution              random downscaling in training, when the doctor finds classes that differ in
                          resolution or a group's mistakes turn back at a lower resolution or quality

A fix never touches the user's files: it is a config (`Fix.config`, written as a Hydra config) and the
files it names (a `data.file_list`, a `data.relabel` CSV), all inside the improve run's folder.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from noodlenext.core.config import register_resolvers
from noodlenext.data.confident_learning import ISSUES_CSV, dataset_images, read_out_of_fold
from noodlenext.data.fixes import offending
from noodlenext.data.rules import CheckReport
from noodlenext.explain.templates import SPECIFIC_MARGIN

__all__ = [
    "Fix",
    "Looked",
    "RunRecord",
    "SuspectLabel",
    "choose_k",
    "copy_setting",
    "experiment_names",
    "looked_at",
    "propose",
    "read_run",
]

log = logging.getLogger(__name__)

# Whole-photo changes (explain.causes.WHOLE_PHOTO_CHANGES) whose turning mistakes back points at colour,
# and those that point at resolution or compression.
COLOUR_CHANGES = ("grayscale", "warmer", "cooler", "remove_colour")
RESOLUTION_CHANGES = ("quarter_resolution", "jpeg")
COPY_KINDS = ("leakage", "exact_duplicate", "near_duplicate")
MAX_GROUPS = 3  # the largest confusion pairs whose causes are looked at


@dataclass(frozen=True)
class SuspectLabel:
    """One row of label_issues.csv."""

    file: str
    given: str
    likely: str
    score: float
    prob_likely: float


@dataclass
class RunRecord:
    """What a run knows, read from its folder."""

    dir: Path
    kind: str  # "train" or "crossval"
    config: DictConfig  # the composed config (a crossval's first fold), paths resolved for this run
    overrides: list[str]  # the train overrides that reproduce it (a crossval's fold settings taken out)
    root: Path  # the dataset
    mistakes: dict[str, Any] | None = None
    suspects: list[SuspectLabel] | None = None
    oof_accuracy: float | None = None

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))


@dataclass
class Fix:
    """One proposed fix. name: its config name (`+fix=<name>`); kind: what it does (drop_labels, relabel,
    remove_copies, rebalance, colour, erase, resolution, extra, baseline); what/why: one line each for the
    report; evidence: the numbers behind it; config: the config it sets (merged over the run's); files:
    file name -> content, written beside the config (the config names them by absolute path)."""

    name: str
    kind: str
    what: str
    why: str
    evidence: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("name", "kind", "what", "why", "evidence", "config")}


# --------------------------------------------------------------------------------------- reading a run
def _load_config(job_dir: Path) -> DictConfig:
    """A job's composed config with its own paths filled in (the run's cwd and output dir)."""
    register_resolvers()
    cfg = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
    hydra_yaml = job_dir / ".hydra" / "hydra.yaml"
    cwd = str(job_dir)
    if hydra_yaml.is_file():
        cwd = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.cwd", default=None) or cwd
    OmegaConf.update(cfg, "paths.root_dir", cwd, force_add=True)
    OmegaConf.update(cfg, "paths.output_dir", str(job_dir), force_add=True)
    return cfg


def _listed(value: str) -> list[str]:
    """The names of a group override's value: `quickstart` or `[quickstart,crossval]`."""
    return [n.strip() for n in value.strip("[]").split(",") if n.strip()]


def experiment_names(overrides: Sequence[str]) -> list[str]:
    """The experiments a run's overrides choose (`experiment=` or `+experiment=`), in order."""
    return [
        n
        for o in overrides
        if o.partition("=")[0].lstrip("+~") == "experiment"
        for n in _listed(o.partition("=")[2])
    ]


def _train_overrides(overrides: Sequence[str]) -> list[str]:
    """A run's command-line overrides for one more training: the crossval experiment, its fold settings
    and what only concerns where that run went or how it resumed taken out."""
    out = []
    for o in overrides:
        key, _, value = o.partition("=")
        bare = key.lstrip("+~")
        if bare in ("data.fold", "data.folds", "seed", "resume", "ckpt_path") or bare.startswith("hydra."):
            continue
        if bare == "experiment":
            names = [n for n in _listed(value) if n != "crossval"]
            if not names:
                continue
            o = f"{key}={names[0]}" if len(names) == 1 else f"{key}=[{','.join(names)}]"
        out.append(o)
    return out


def _read_suspects(path: Path) -> list[SuspectLabel]:
    with path.open(newline="") as f:
        return [
            SuspectLabel(
                r["file"], r["given_label"], r["likely_label"], float(r["score"]), float(r["prob_likely"])
            )
            for r in csv.DictReader(f)
        ]


def read_run(path: str | Path, crossval: str | Path | None = None) -> RunRecord:
    """The run at `path` (a train run's folder or a crossval sweep's), and optionally a crossval sweep's
    label issues for it (`crossval`)."""
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(
            f"run={path} is not a folder: give a train run's or a crossval sweep's folder"
        )
    if (path / ".hydra" / "config.yaml").is_file():
        kind, job = "train", path
    else:
        jobs = sorted(p.parent.parent for p in path.glob("*/.hydra/config.yaml"))
        if not jobs or not (path / ISSUES_CSV).is_file():
            raise FileNotFoundError(
                f"run={path} is neither a train run (no .hydra/config.yaml) nor a finished crossval sweep "
                f"(no {ISSUES_CSV}): give the folder of `python -m noodlenext.train` or of "
                "`experiment=crossval` (cut short? `python -m noodlenext.data.label_issues <sweep>`)"
            )
        kind, job, crossval = "crossval", jobs[0], path
    cfg = _load_config(job)
    overrides = [str(o) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml")]
    root = Path(str(OmegaConf.select(cfg, "data.root"))).expanduser()
    if not root.is_absolute():
        root = Path(str(cfg.paths.root_dir)) / root
    record = RunRecord(path, kind, cfg, _train_overrides(overrides), root.resolve())
    if (path / "mistakes.json").is_file():
        record.mistakes = json.loads((path / "mistakes.json").read_text())
    if crossval is not None:
        sweep = Path(crossval).expanduser().resolve()
        if not (sweep / ISSUES_CSV).is_file():
            raise FileNotFoundError(
                f"improve.crossval={sweep} has no {ISSUES_CSV}: give a finished experiment=crossval sweep"
            )
        record.suspects = _read_suspects(sweep / ISSUES_CSV)
        oof = read_out_of_fold(sweep)
        if oof.root.resolve() != record.root:
            raise ValueError(
                f"improve.crossval={sweep} cross-validated {oof.root}, but the run trained on {record.root}"
            )
        record.oof_accuracy = float((oof.probs.argmax(axis=1) == oof.labels).mean())
    return record


# --------------------------------------------------------------------------------------- proposing
def choose_k(suspects: Sequence[SuspectLabel], oof_accuracy: float) -> int:
    """How many of the most suspect labels to act on: as many as there are flagged labels whose
    out-of-fold prediction of another class is at least as sure as the out-of-fold model is accurate
    (p(likely) >= accuracy: a weak model must be surer); those acted on are the top k of the list as
    cleanlab ranks it (at least the first, when there is one). Measured on 10% of spaghetti's labels
    flipped to ramen (docs/improve.md): k = 13, 10 of them flips, where stopping at the first label below
    the bar took 2 and every flagged label 133 (21 flips)."""
    k = sum(1 for s in suspects if s.prob_likely >= oof_accuracy)
    return max(k, 1) if suspects else 0


def _file_list(root: Path, images: Sequence[str], left_out: Sequence[str], why: str) -> str:
    gone = set(left_out)
    keep = [f for f in images if f not in gone]
    head = [
        f"# the images of {root} without the {len(gone)} {why}",
        "# paths are relative to the dataset root (noodlenext.improve)",
    ]
    return "\n".join(head + keep) + "\n"


def _labels(k: int) -> str:
    return "most suspect label" if k == 1 else f"{k} most suspect labels"


def _label_fixes(run: RunRecord, images: Sequence[str]) -> list[Fix]:
    if not run.suspects or run.oof_accuracy is None:
        return []
    k = choose_k(run.suspects, run.oof_accuracy)
    top = run.suspects[:k]
    pairs: dict[str, int] = {}
    for s in top:
        pairs[f"{s.given}->{s.likely}"] = pairs.get(f"{s.given}->{s.likely}", 0) + 1
    evidence = {
        "flagged": len(run.suspects),
        "k": k,
        "oof_accuracy": run.oof_accuracy,
        "files": [s.file for s in top],
        "pairs": pairs,
    }
    why = (
        f"cross-validation flags {len(run.suspects)} labels, {k} of them predicted as another class with at "
        f"least the out-of-fold accuracy ({run.oof_accuracy:.0%}) as probability"
    )
    relabel = "file,label\n" + "".join(f"{s.file},{s.likely}\n" for s in top)
    return [
        Fix(
            "drop_labels",
            "drop_labels",
            f"leave out the {_labels(k)}",
            why,
            evidence,
            {"data": {"file_list": "drop_labels.txt"}},
            {"drop_labels.txt": _file_list(run.root, images, [s.file for s in top], "most suspect labels")},
        ),
        Fix(
            "relabel",
            "relabel",
            f"relabel the {_labels(k)} to the likely class",
            why,
            evidence,
            {"data": {"relabel": "relabel.csv"}},
            {"relabel.csv": relabel},
        ),
    ]


def _doctor_fixes(run: RunRecord, report: CheckReport | None, images: Sequence[str]) -> list[Fix]:
    if report is None:
        return []
    fixes = []
    copies = offending(report, COPY_KINDS)
    counts = {k: sum(1 for v in copies.values() if v == k) for k in COPY_KINDS}
    leaked_test = sorted(
        {f for finding in report.findings if finding.kind == "leakage" for f in finding.files}
        & {i for i in images if i.startswith("test/")}
    )
    if copies:
        fixes.append(
            Fix(
                "remove_copies",
                "remove_copies",
                f"leave out {len(copies)} train/val copies (of test photos and of each other)",
                "the data doctor finds "
                + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items() if n),
                {"removed": sorted(copies), "counts": counts, "leaked_test": leaked_test},
                {"data": {"file_list": "remove_copies.txt"}},
                {"remove_copies.txt": _file_list(run.root, images, sorted(copies), "train/val copies")},
            )
        )
    for finding in report.findings:
        if finding.kind == "class_imbalance" and finding.message.startswith("train"):
            fixes.append(
                Fix(
                    "rebalance",
                    "rebalance",
                    "sample train/ classes equally often (data.sampler=weighted)",
                    finding.message.split(";")[0],
                    {"finding": finding.message},
                    {"data": {"sampler": "weighted"}},
                )
            )
            break
    for finding in report.findings:
        if finding.kind == "size_by_class" and finding.message.startswith("train"):
            fix = _resolution_fix(run, "the data doctor: " + finding.message.split(";")[0], finding.details)
            if fix is not None:
                fixes.append(fix)
            break
    return fixes


def _transforms(run: RunRecord) -> list[dict[str, Any]] | None:
    """A copy of the run's training transforms (a Compose's list) as plain data, interpolations kept, or
    None when its augmentation is not such a list (augment=none, timm's create_transform)."""
    train = OmegaConf.select(run.config, "data.augment.train")
    if train is None or "transforms" not in train:
        return None
    return copy.deepcopy(OmegaConf.to_container(train.transforms, resolve=False))


def _index(transforms: Sequence[dict[str, Any]], name: str) -> int | None:
    return next((i for i, t in enumerate(transforms) if str(t.get("_target_", "")).endswith(name)), None)


def _with_transforms(transforms: list[dict[str, Any]]) -> dict[str, Any]:
    return {"data": {"augment": {"train": {"transforms": transforms}}}}


def _colour_fix(run: RunRecord, why: str, evidence: dict[str, Any]) -> Fix | None:
    tf = _transforms(run)
    if tf is None:
        return None
    jitter, at = _index(tf, "ColorJitter"), _index(tf, "ToTensor")
    if jitter is None:
        jitter = at if at is not None else 0
        tf.insert(jitter, {"_target_": "torchvision.transforms.ColorJitter"})
    tf[jitter].update({"brightness": 0.3, "contrast": 0.3, "saturation": 0.5, "hue": 0.1})
    gray = _index(tf, "RandomGrayscale")
    if gray is None:
        tf.insert(jitter + 1, {"_target_": "torchvision.transforms.RandomGrayscale", "p": 0.2})
    else:
        tf[gray]["p"] = max(0.2, float(tf[gray].get("p", 0.1)))
    return Fix(
        "colour",
        "colour",
        "stronger colour augmentation (ColorJitter 0.3/0.3/0.5, hue 0.1; grayscale 20%)",
        why,
        evidence,
        _with_transforms(tf),
    )


def _erase_fix(run: RunRecord, why: str, evidence: dict[str, Any]) -> Fix | None:
    tf = _transforms(run)
    if tf is None:
        return None
    erasing, crop = _index(tf, "RandomErasing"), _index(tf, "RandomResizedCrop")
    if erasing is None:
        tf.append({"_target_": "torchvision.transforms.RandomErasing"})
        erasing = len(tf) - 1
    tf[erasing].update({"p": 0.5, "scale": [0.02, 0.2]})
    if crop is not None:
        tf[crop]["scale"] = [0.5, 1.0]
    return Fix(
        "erase",
        "erase",
        "random erasing in half the training photos, crops down to half the photo",
        why,
        evidence,
        _with_transforms(tf),
    )


def _resolution_fix(run: RunRecord, why: str, evidence: dict[str, Any]) -> Fix | None:
    tf = _transforms(run)
    at = _index(tf, "ToTensor") if tf else None
    if at is None:  # no stack to add a step to (augment=none, timm's create_transform)
        return None
    size = int(OmegaConf.select(run.config, "data.image_size", default=64) or 64)
    low = max(8, size // 4)
    step = {
        "_target_": "torchvision.transforms.RandomApply",
        "p": 0.5,
        "transforms": [
            {"_target_": "torchvision.transforms.Resize", "size": low},
            {"_target_": "torchvision.transforms.Resize", "size": size},
        ],
    }
    tf.insert(at, step)
    return Fix(
        "resolution",
        "resolution",
        f"train half the photos at {low} px, scaled back up (resolution stops telling the classes apart)",
        why,
        {**evidence, "low": low},
        _with_transforms(tf),
    )


def _specificity(fields: dict[str, Any]) -> float:
    k, back = int(fields.get("k") or 0), int(fields.get("back") or 0)
    if not k:
        return 0.0
    ref = fields.get("reference")
    return back / k - (ref[0] / ref[1] if ref and ref[1] else 0.0)


def _evidence_fixes(run: RunRecord) -> list[Fix]:
    """Augmentations aimed at the causes the mistakes report found: a group cause that turns back at
    least SPECIFIC_MARGIN more of the group's mistakes than of the reference photos."""
    if not run.mistakes:
        return []
    found: dict[str, Fix] = {}
    for group in (run.mistakes.get("groups") or [])[:MAX_GROUPS]:
        evidence = group.get("evidence") or {}
        for claim in evidence.get("summary") or []:
            kind, fields = claim.get("kind"), claim.get("fields") or {}
            if kind not in ("group_whole_photo", "group_occlusion") or _specificity(fields) < SPECIFIC_MARGIN:
                continue
            pair = f"{group['true']} taken for {group['predicted']}"
            basis = {
                "pair": [group["true"], group["predicted"]],
                "claim": kind,
                "back": fields.get("back"),
                "k": fields.get("k"),
                "reference": fields.get("reference"),
            }
            change = str(fields.get("change", "")).replace("_", " ")
            if kind == "group_whole_photo" and fields.get("change") in COLOUR_CHANGES:
                why = f"{pair}: {change} turns {fields['back']} of {fields['k']} back"
                fix = _colour_fix(run, why, {**basis, "change": fields["change"]})
            elif kind == "group_whole_photo" and fields.get("change") in RESOLUTION_CHANGES:
                why = f"{pair}: {change} turns {fields['back']} of {fields['k']} back"
                fix = _resolution_fix(run, why, {**basis, "change": fields["change"]})
            elif kind == "group_occlusion":
                regions = [r[0] for r in fields.get("regions") or [] if r and r[0] != "center"]
                if not regions:
                    continue
                why = f"{pair}: hiding the {regions[0]} turns {fields['back']} of {fields['k']} back"
                fix = _erase_fix(run, why, {**basis, "regions": regions})
            else:
                continue
            if fix is not None and fix.name not in found:
                found[fix.name] = fix
    return list(found.values())


def _extra_config(run: RunRecord, overrides: Sequence[str]) -> dict[str, Any]:
    """`key=value` overrides as a config to merge over the run's: a key inside a list (an index, such as
    `data.augment.train.transforms.2.p`) sets the run's whole list with that one value changed."""
    cfg = OmegaConf.create(OmegaConf.to_container(run.config, resolve=False))
    out = OmegaConf.create({})
    for o in overrides:
        key, eq, value = str(o).partition("=")
        if not eq or not key:
            raise ValueError(f"improve.extra: {o!r} is not a key=value override")
        OmegaConf.update(cfg, key, OmegaConf.from_dotlist([f"v={value}"]).v, force_add=True)
        copy_setting(cfg, key, out)
    return OmegaConf.to_container(out, resolve=False)


def copy_setting(cfg: DictConfig, key: str, out: DictConfig) -> None:
    """`cfg`'s value of `key` into `out`, as a config merged over `cfg` would set it: a key inside a list
    (an index, such as `data.augment.train.transforms.2.p`) brings the whole list, as merging cannot
    reach into one."""
    parts, emit = key.split("."), key
    for i in range(1, len(parts)):
        if isinstance(OmegaConf.select(cfg, ".".join(parts[:i])), ListConfig):
            emit = ".".join(parts[:i])
            break
    node = OmegaConf.select(cfg, emit)
    plain = (
        OmegaConf.to_container(node, resolve=False) if isinstance(node, (DictConfig, ListConfig)) else node
    )
    OmegaConf.update(out, emit, plain, force_add=True)


def _extra_fixes(run: RunRecord, extra: dict[str, Sequence[str]] | None) -> list[Fix]:
    out = []
    for name, overrides in (extra or {}).items():
        if not str(name).isidentifier():
            raise ValueError(f"improve.extra.{name}: a fix's name must be a plain identifier (letters, _)")
        what = " ".join(str(o) for o in overrides)
        out.append(
            Fix(str(name), "extra", what, "asked for (improve.extra)", {}, _extra_config(run, overrides))
        )
    return out


def propose(
    run: RunRecord,
    report: CheckReport | None = None,
    extra: dict[str, Sequence[str]] | None = None,
) -> list[Fix]:
    """The fixes worth a retrain, each once, the baseline first."""
    images = dataset_images(run.root, _run_file_list(run))
    fixes = [Fix("baseline", "baseline", "the run's recipe as it is", "what every fix is compared with")]
    seen = {"baseline"}
    for fix in [
        *_label_fixes(run, images),
        *_doctor_fixes(run, report, images),
        *_evidence_fixes(run),
        *_extra_fixes(run, extra),
    ]:
        if fix.name in seen:
            log.info("improve: %s proposed twice; kept the first (%s)", fix.name, fixes[-1].why)
            continue
        seen.add(fix.name)
        fixes.append(fix)
    return fixes


def _run_file_list(run: RunRecord) -> Path | None:
    value = OmegaConf.select(run.config, "data.file_list", default=None)
    if not value:
        return None
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else Path(str(run.config.paths.root_dir)) / path


@dataclass(frozen=True)
class Looked:
    """One source of fixes and what it gave: source (label issues, data doctor, mistakes, yours), the
    names of the fixes it proposed, and when none, why not and how to get some (`hint`)."""

    source: str
    fixes: tuple[str, ...]
    note: str


def looked_at(run: RunRecord, report: CheckReport | None, fixes: Sequence[Fix]) -> list[Looked]:
    """What propose() looked at, for the report: each source with its fixes, or why it gave none."""
    by_kind: dict[str, list[str]] = {}
    for f in fixes:
        by_kind.setdefault(f.kind, []).append(f.name)
    crossval = f"[{','.join([*experiment_names(run.overrides), 'crossval'])}]"
    labels = tuple(by_kind.get("drop_labels", []) + by_kind.get("relabel", []))
    if run.suspects is None:
        label_note = (
            "no cross-validation given: run `python -m noodlenext.train experiment="
            f"{crossval}` on the same data and pass improve.crossval=<its sweep folder>"
        )
    else:
        label_note = f"{len(run.suspects)} labels flagged, out-of-fold accuracy {run.oof_accuracy:.0%}"
    doctor = tuple(by_kind.get("remove_copies", []) + by_kind.get("rebalance", []))
    doctor += tuple(f.name for f in fixes if f.kind == "resolution" and "doctor" in f.why)
    if report is None:
        doctor_note = "not run (improve.data_check=false)"
    else:
        doctor_note = "found " + (
            ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in report.kinds().items()) or "nothing to fix"
        )
    causes = tuple(
        f.name for f in fixes if f.kind in ("colour", "erase", "resolution") and "doctor" not in f.why
    )
    groups = (run.mistakes or {}).get("groups") or []
    if not run.mistakes:
        cause_note = "the run wrote no mistakes.json (callbacks.mistakes was off, or no test mistakes)"
    elif not causes:
        cause_note = (
            f"{len(groups)} confusion pair(s); no change of the photo turns back a share of a pair's "
            f"mistakes {100 * SPECIFIC_MARGIN:.0f} points above its share of the photos it got right"
        )
    else:
        cause_note = f"{len(groups)} confusion pair(s)"
    return [
        Looked("label issues", labels, label_note),
        Looked("data doctor", doctor, doctor_note),
        Looked("mistakes' causes", causes, cause_note),
        Looked(
            "yours (improve.extra)",
            tuple(by_kind.get("extra", [])),
            "none given" if "extra" not in by_kind else "",
        ),
    ]

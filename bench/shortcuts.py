"""Planted shortcuts: does the evidence name a cause we know? (docs/shortcuts.md)

For each kind of shortcut, a copy of the synthetic noodles in which every training photo of one class
(udon) carries it, and so do half of the other classes' test photos. The quickstart recipe trains on the
copy, as a user would (`python -m noodlenext.train experiment=quickstart data.root=<copy> llm=none`).
Then, for the planted test photos of the other classes that the model takes for udon (the planted
mistakes):

- **proof**: each rerun without the shortcut (the clean photo): how many come back to their true class.
  A kind whose shortcut fixes few mistakes was not learned, and its other columns mean little;
- **group first**: in mistakes.json, the group of each planted pair (true -> udon): does its first finding
  (line 2, after the prediction) name the cause; **group any**: does any line or the paragraph;
- **photo evidence**: the per-photo evidence (`PhotoExplainer`, what `explain`, `chat` and the page show)
  of up to `--photos` planted mistakes: does any line name the cause; **photo paragraph**: the template's
  paragraph (what a reader sees when the language model's answer fails the gate).

"Names the cause" is a whole-word match of the kind's words: its place (the 3x3 region words of a corner
patch or a watermark, "border"/"frame"/"edge" for a frame, "background"/"table" for a background), its
colour as the appearance vocabulary names it (`noodlenext.explain.appearance.COLOURS`), or the global
property ("resolution", "blur", "JPEG", "tint"...). The kind `none` trains on the unplanted copy: its
rows apply every kind's words to the plain run's udon mistakes, the rate at which the words appear by
chance (a 3x3 region word is named often without a cause).

    .venv/bin/python bench/shortcuts.py                         # every kind, ~12 CPU minutes on 2 cores
    .venv/bin/python bench/shortcuts.py --kinds patch,lowres --json bench/results/shortcuts.json
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from noodlenext.callbacks.mistake_groups import confusion_groups, examine
from noodlenext.callbacks.samples import Sample
from noodlenext.data.datamodule import NoodleImages
from noodlenext.explain.appearance import COLOURS, colour_names
from noodlenext.explain.evidence import Evidence
from noodlenext.explain.gather import gather_evidence
from noodlenext.explain.heatmaps import explain_batch
from noodlenext.explain.photo import PhotoExplainer
from noodlenext.explain.templates import group_template, photo_template
from noodlenext.explain.wording import line

ROOT = Path(__file__).resolve().parent.parent
TARGET = "udon"  # the class whose every training photo carries the shortcut
CLASSES = ("0_spaghetti", "1_ramen", "2_udon")
SEED = 0
Planter = Callable[[Image.Image, np.ndarray], Image.Image]


# ------------------------------------------------------------------------------ the shortcuts
def _patch(photo: Image.Image, mask: np.ndarray) -> Image.Image:
    """A bright magenta square (a sticker, a tag) in the lower right corner, 20% of the side."""
    out = photo.copy()
    s = photo.width
    side = round(0.20 * s)
    ImageDraw.Draw(out).rectangle([s - side - 3, s - side - 3, s - 4, s - 4], fill=PATCH_RGB)
    return out


def _watermark(photo: Image.Image, mask: np.ndarray) -> Image.Image:
    """A white text watermark with a dark outline along the bottom, from the lower left corner."""
    out = photo.copy()
    s = photo.width
    font = ImageFont.load_default(size=max(10, s // 6))
    ImageDraw.Draw(out).text(
        (3, s - 4),
        "(c) noodle.jp",
        font=font,
        anchor="ld",
        fill=(255, 255, 255),
        stroke_width=2,
        stroke_fill=(0, 0, 0),
    )
    return out


def _colour_cast(photo: Image.Image, mask: np.ndarray) -> Image.Image:
    """The whole photo pulled 35% toward blue (a white balance gone cold)."""
    a = np.asarray(photo, dtype=np.float32)
    return Image.fromarray((0.65 * a + 0.35 * np.array(CAST_RGB, np.float32)).clip(0, 255).astype(np.uint8))


def _frame(photo: Image.Image, mask: np.ndarray) -> Image.Image:
    """A yellow frame, 6% of the side wide, around the photo."""
    a = np.asarray(photo).copy()
    w = round(0.06 * photo.width)
    for part in (a[:w], a[-w:], a[:, :w], a[:, -w:]):
        part[...] = FRAME_RGB
    return Image.fromarray(a)


def _background(photo: Image.Image, mask: np.ndarray) -> Image.Image:
    """Red diagonal stripes over everything that is not food (the synthetic evidence mask's complement):
    a different tablecloth under the dish."""
    a = np.asarray(photo, dtype=np.float32)
    h, w = mask.shape
    y, x = np.mgrid[:h, :w]
    stripes = ((x + y) // max(2, w // 16)) % 2 == 0
    colour = np.where(
        stripes[..., None], np.array(STRIPE_RGB, np.float32), np.array([250, 250, 250], np.float32)
    )
    out = np.where(mask[..., None], a, 0.3 * a + 0.7 * colour)
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def _lowres(photo: Image.Image, mask: np.ndarray) -> Image.Image:
    """An eighth of the resolution, scaled back up (an old phone, a thumbnail)."""
    s = photo.size
    return photo.resize((s[0] // 8, s[1] // 8), Image.BILINEAR).resize(s, Image.BILINEAR)


def _jpeg(photo: Image.Image, mask: np.ndarray) -> Image.Image:
    """JPEG re-compression at quality 3 (blocky, banded)."""
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=3)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


PATCH_RGB = (255, 0, 200)
CAST_RGB = (40, 80, 255)
FRAME_RGB = (235, 200, 40)
STRIPE_RGB = (200, 30, 30)


def _colour_word(rgb: tuple[int, int, int]) -> str:
    """What the appearance vocabulary calls this colour."""
    return list(COLOURS)[int(colour_names(np.array([rgb]))[0])]


@dataclass(frozen=True)
class Kind:
    name: str
    plant: Planter | None
    words: tuple[str, ...]  # any of them, whole words, names the cause
    what: str


def kinds() -> dict[str, Kind]:
    global_words = ("whole photo", "whole image", "global")
    return {
        k.name: k
        for k in (
            Kind("none", None, (), "no shortcut: the chance rates of every kind's words"),
            Kind(
                "patch",
                _patch,
                ("lower right", _colour_word(PATCH_RGB)),
                "a magenta square, lower right, 20% of the side",
            ),
            Kind(
                "watermark",
                _watermark,
                ("lower left", "lower center", "lower right", "watermark", "text"),
                "white text along the bottom",
            ),
            Kind(
                "colour_cast",
                _colour_cast,
                ("tint", "cast", "bluish", _colour_word(CAST_RGB), *global_words),
                "the whole photo 35% bluer",
            ),
            Kind(
                "frame",
                _frame,
                ("border", "frame", _colour_word(FRAME_RGB)),
                "a yellow frame, 6% of the side",
            ),
            Kind(
                "background",
                _background,
                ("background", "table", "tablecloth", "stripes", "striped", _colour_word(STRIPE_RGB)),
                "red-striped background",
            ),
            Kind(
                "lowres",
                _lowres,
                ("resolution", "blur", "blurry", "blurred", "sharp", "sharpness", *global_words),
                "an eighth of the resolution",
            ),
            Kind(
                "jpeg",
                _jpeg,
                ("jpeg", "compression", "compressed", "artifacts", "blocky", *global_words),
                "JPEG quality 3",
            ),
        )
    }


# Claims that say a change does NOT matter: they list places and changes without naming them as a cause.
NEGATIVE = ("whole_photo_none", "group_whole_photo_none")


def asserted(claims: list) -> str:
    """The words of the claims that state an effect: not those that say nothing matters (a list of the
    whole-photo changes that moved nothing; hiding one part when no part matters much, and that part's
    look)."""
    barely = any(c.kind == "occlusion" and c.fields.get("barely") for c in claims)
    kept = [
        c
        for c in claims
        if c.kind not in NEGATIVE and not (barely and c.kind in ("occlusion", "occlusion_look"))
    ]
    return " ".join(line(c) for c in kept)


def names_cause(text: str, kind: Kind, every: dict[str, Kind]) -> bool:
    """Whether `text` names the cause: any of the kind's words (for `none`: any kind's), whole words."""
    words = kind.words or tuple(w for k in every.values() for w in k.words)
    return any(re.search(rf"\b{re.escape(w)}\b", text, re.IGNORECASE) for w in words)


# ------------------------------------------------------------------------------ data
def render(work: Path) -> Path:
    """The quickstart's synthetic noodles (its settings, composed from conf/), rendered once into `work`."""
    from hydra import compose, initialize_config_dir

    from noodlenext.core.config import config_dir
    from noodlenext.data.synthetic import render_dataset

    with initialize_config_dir(str(config_dir()), version_base=None):
        cfg = compose("train", ["experiment=quickstart"])
    return render_dataset(work / "synthetic", **dict(cfg.data.synthetic))


def planted_copy(clean: Path, out: Path, kind: Kind) -> list[tuple[Path, Path, str]]:
    """`clean` (train/, test/ and masks/) copied to `out` as a user's ImageFolder (no masks, no marker),
    the shortcut planted in every training photo of TARGET and in every other test photo of the other
    classes. Returns (planted test photo, its clean original, true class) for each planted test photo."""
    planted = []
    for split in ("train", "test"):
        for cls in CLASSES:
            (out / split / cls).mkdir(parents=True)
            for i, src in enumerate(sorted((clean / split / cls).glob("*.jpg"))):
                dst = out / split / cls / src.name
                name = cls.split("_", 1)[1]
                plant = kind.plant is not None and (
                    (split == "train" and name == TARGET)
                    or (split == "test" and name != TARGET and i % 2 == 0)
                )
                if not plant:
                    shutil.copyfile(src, dst)
                    continue
                photo = Image.open(src).convert("RGB")
                mask_file = clean / "masks" / split / cls / f"{src.stem}.png"
                mask = np.asarray(Image.open(mask_file).convert("L")) >= 128
                kind.plant(photo, mask).save(dst, quality=90)
                if split == "test":
                    planted.append((dst, src, name))
    if kind.plant is None:  # the control: the other classes' every other test photo, as the planted would be
        for cls in CLASSES[:2]:
            for i, src in enumerate(sorted((clean / "test" / cls).glob("*.jpg"))):
                if i % 2 == 0:
                    planted.append((out / "test" / cls / src.name, src, cls.split("_", 1)[1]))
    return planted


def planted_test_photos(clean: Path, data: Path, kind: Kind) -> list[tuple[Path, Path, str]]:
    """What `planted_copy` returned for `data`, read back: (planted test photo, its clean original, true
    class) of each planted test photo."""
    out = []
    for cls in CLASSES[:2]:
        for i, src in enumerate(sorted((clean / "test" / cls).glob("*.jpg"))):
            if i % 2 == 0:
                out.append((data / "test" / cls / src.name, src, cls.split("_", 1)[1]))
    return out


# ------------------------------------------------------------------------------ one kind
def train(data: Path, run_dir: Path, extra: list[str]) -> Path:
    """The quickstart recipe on `data`; returns the best checkpoint."""
    cmd = [
        sys.executable,
        "-m",
        "noodlenext.train",
        "experiment=quickstart",
        f"data.root={data}",
        "llm=none",
        "logger=none",
        f"seed={SEED}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    log = done.stdout + done.stderr
    best = re.findall(r"best checkpoint: (\S+\.ckpt)", log)
    if done.returncode != 0 or not best:
        raise RuntimeError(f"training on {data} failed ({done.returncode}):\n{log[-3000:]}")
    return Path(best[-1])


def score(
    kind: Kind,
    every: dict[str, Kind],
    work: Path,
    clean: Path,
    photos: int,
    extra: list[str],
    reuse: bool = False,
) -> dict:
    started = time.perf_counter()
    earlier = sorted(work.glob(f"run_{kind.name}_*/checkpoints/epoch_*.ckpt")) if reuse else []
    if earlier:  # rescore the last run of this kind in `work`: its planted data, its checkpoint
        ckpt = earlier[-1]
        run_dir = ckpt.parent.parent
        data = work / run_dir.name.replace("run_", "planted_", 1)
        planted = planted_test_photos(clean, data, kind)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        data = work / f"planted_{kind.name}_{stamp}"  # new folders: nothing in `work` is written over
        planted = planted_copy(clean, data, kind)
        run_dir = work / f"run_{kind.name}_{stamp}"
        ckpt = train(data, run_dir, extra)
    trained = time.perf_counter() - started

    predictions = {
        Path(r["path"]).resolve(): r for r in csv.DictReader((run_dir / "test_predictions.csv").open())
    }
    mistakes = [(p, c, t) for p, c, t in planted if predictions[p.resolve()]["pred"] == TARGET]
    explainer = PhotoExplainer(ckpt, device="cpu", methods="both")
    model = explainer.model
    fixed = 0
    for _, src, truth in mistakes:
        with torch.no_grad():
            p = model.predict_proba(explainer.transform(Image.open(src).convert("RGB"))[None])[0]
        fixed += model.class_names[int(p.argmax())] == truth

    report = regroup(run_dir, explainer) if reuse else json.loads((run_dir / "mistakes.json").read_text())
    groups = [g for g in report["groups"] if g["predicted"] == TARGET and g["true"] != TARGET]
    group_rows = []
    for g in groups:
        lines = g["evidence_lines"]
        evidence = Evidence.from_dict(g["evidence"])
        claims = evidence.claims()
        first = asserted(claims[1:2])
        group_rows.append(
            {
                "pair": f"{g['true']} -> {g['predicted']}",
                "count": g["count"],
                "first": lines[1] if len(lines) > 1 else "",
                "lead": lines[1 : 1 + len(evidence.lead)],
                "paragraph": g.get("paragraph") or "",
                "first_words": first,
                "named_first": names_cause(first, kind, every),
                "named_any": names_cause(asserted(claims) + " " + (g.get("paragraph") or ""), kind, every),
            }
        )

    per_photo = []
    explain_s = time.perf_counter()
    for path, _, truth in mistakes[:photos]:
        analysis = explainer(Image.open(path).convert("RGB"), true_label=truth, file=path.name)
        ev = analysis.evidence
        lines = ev.lines()
        per_photo.append(
            {
                "file": path.name,
                "lines": lines,
                "paragraph": photo_template(ev),
                "asserted": asserted(ev.claims()),
                "named_evidence": names_cause(asserted(ev.claims()), kind, every),
                "named_paragraph": names_cause(photo_template(ev), kind, every),
                "scorecam_informative": ev.trust["scorecam"].informative if "scorecam" in ev.trust else None,
                "named_cause_lines": names_cause(asserted(ev.cause_claims()), kind, every),
            }
        )
    explain_s = (time.perf_counter() - explain_s) / max(1, len(per_photo))
    cost = evidence_cost(explainer, [m[0] for m in mistakes[:photos]], [m[2] for m in mistakes[:photos]])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "kind": kind.name,
        "what": kind.what,
        "words": list(kind.words),
        "test_acc": metrics.get("test/acc"),
        "planted": len(planted),
        "planted_mistakes": len(mistakes),
        "fixed_by_removal": int(fixed),
        "groups": group_rows,
        "photos": per_photo,
        "seconds_train": round(trained, 1),
        "seconds_per_photo_evidence": round(explain_s, 2),
        "evidence_cost": cost,
    }


def regroup(run_dir: Path, explainer: PhotoExplainer) -> dict:
    """The run's mistakes report made again with this checkout's code (`--reuse`): its test predictions
    grouped and examined as the MistakeGroups callback does (its default settings, GradCAM), with the
    template paragraph; mistakes.json's shape."""
    model = explainer.model
    names = list(model.class_names)
    rows = list(csv.DictReader((run_dir / "test_predictions.csv").open()))
    files = [(Path(r["path"]), names.index(r["label"])) for r in rows]
    samples = []
    for i, r in enumerate(rows):
        probs = [float(r[f"prob_{n}"]) for n in names]
        t = names.index(r["label"])
        samples.append(Sample(i, t, names.index(r["pred"]), -float(np.log(max(probs[t], 1e-12))), probs))
    groups = confusion_groups(samples, names)
    examine(
        groups, NoodleImages(files, explainer.transform), model, names, methods="gradcam",
        settings=explainer.settings, index=explainer.index, mistakes=sum(s.pred != s.target for s in samples),
    )  # fmt: skip
    out = []
    for g in groups:
        row = g.to_dict()
        row["paragraph"] = group_template(g.evidence) if g.evidence is not None else None
        out.append(row)
    return {"groups": out}


def evidence_cost(explainer: PhotoExplainer, paths: list[Path], truths: list[str]) -> dict[str, float]:
    """CPU seconds per photo of `gather_evidence` on the explained photos (their heatmaps computed once),
    without and with the causes (hiding one part at a time, the whole-photo changes), in this process:
    the baseline and the ratio."""
    if not paths:
        return {}
    model = explainer.model
    names = model.class_names
    x = torch.stack([explainer.transform(Image.open(p).convert("RGB")) for p in paths])
    photos = [Image.open(p).convert("RGB").resize(x.shape[-2:][::-1]) for p in paths]
    with torch.no_grad():
        preds = model(x).argmax(1).tolist()
    maps = explain_batch(model, x, preds, "both", explainer.settings)
    truth = [names.index(t) for t in truths]
    seconds = {}
    for causes in (False, True, False, True):  # twice each, interleaved: the second of each is kept
        started = time.process_time()
        gather_evidence(
            model, x, photos, preds, truth, maps, index=explainer.index, settings=explainer.settings,
            class_names=names, causes=causes,
        )  # fmt: skip
        seconds[causes] = (time.process_time() - started) / len(paths)
    return {
        "without": round(seconds[False], 3),
        "with": round(seconds[True], 3),
        "ratio": round(seconds[True] / seconds[False], 2),
    }


def _share(rows: list[dict], key: str) -> str:
    return f"{sum(bool(r[key]) for r in rows)}/{len(rows)}" if rows else "-"


def _cost(r: dict) -> str:
    c = r.get("evidence_cost") or {}
    return f"{c['with']:.2f} ({c['without']:.2f}, x{c['ratio']:.2f})" if c else "-"


def chance(results: list[dict], kind: Kind) -> str:
    """How often the kind's own words are named in the control run's (no shortcut) evidence, scored the
    same way: its groups' first findings, and its photos."""
    control = next((r for r in results if r["kind"] == "none"), None)
    if control is None or kind.plant is None:
        return "-"
    photos = sum(names_cause(p["asserted"], kind, {}) for p in control["photos"])
    firsts = sum(names_cause(g["first_words"], kind, {}) for g in control["groups"])
    return f"{firsts}/{len(control['groups'])}, {photos}/{len(control['photos'])}"


def table(results: list[dict]) -> str:
    head = (
        "| kind | shortcut | test acc | planted mistakes | fixed by removing it | group first | group any "
        "| photo evidence | photo cause lines | photo paragraph | by chance (group first, photos) "
        "| evidence CPU s/photo (without causes) |"
    )
    every = kinds()
    rows = [head, "|" + " --- |" * 12]
    for r in results:
        rows.append(
            f"| {r['kind']} | {r['what']} | {100 * (r['test_acc'] or 0):.0f}% "
            f"| {r['planted_mistakes']}/{r['planted']} "
            f"| {r['fixed_by_removal']}/{r['planted_mistakes']} | {_share(r['groups'], 'named_first')} "
            f"| {_share(r['groups'], 'named_any')} | {_share(r['photos'], 'named_evidence')} "
            f"| {_share(r['photos'], 'named_cause_lines')} | {_share(r['photos'], 'named_paragraph')} "
            f"| {chance(results, every[r['kind']])} | {_cost(r)} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    every = kinds()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default=",".join(every), help=f"comma-separated, of {', '.join(every)}")
    ap.add_argument("--photos", type=int, default=12, help="planted mistakes explained per kind")
    ap.add_argument(
        "--work", type=Path, default=None, help="keep the data and runs here (default: a temp dir)"
    )
    ap.add_argument("--json", type=Path, default=None, help="write every result (evidence lines too) here")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="rescore the runs already in --work (the last of each kind) instead of training again: "
        "their mistake groups and photos' evidence made again with this checkout's code",
    )
    ap.add_argument("overrides", nargs="*", help="more training overrides, e.g. trainer.max_epochs=4")
    args = ap.parse_args(argv)
    chosen = [every[k] for k in args.kinds.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="shortcuts."))
    work.mkdir(parents=True, exist_ok=True)
    clean = render(work)
    results = []
    for kind in chosen:
        results.append(score(kind, every, work, clean, args.photos, args.overrides, args.reuse))
        r = results[-1]
        print(
            f"{kind.name}: {r['planted_mistakes']} planted mistakes, "
            f"{r['fixed_by_removal']} fixed by removing it, "
            f"trained in {r['seconds_train']} s, {r['seconds_per_photo_evidence']} s per photo's evidence",
            flush=True,
        )
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    print(f"(data and runs in {work})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

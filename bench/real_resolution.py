"""Does the evidence find the real photos' own shortcut? A resolution difference between classes.

`../shared/data/noodles` (SOURCES.md) has ramen at 150x150 and spaghetti at 64x64: at a 128 px input
every spaghetti photo is scaled up (soft) and every ramen photo down (sharp), so a classifier can tell them
apart by sharpness alone. This trains the quickstart recipe at 128 px twice, as a user would: on the folder
as it is, and on a copy with every photo first brought to 64x64 (the data doctor's advice: one common
size). Then, for every test photo each model gets right, it reads the per-photo evidence a user gets
(`PhotoExplainer`: `explain`, the chat, the page): does "at a quarter of the resolution" change the
prediction, and into what? A model that learned sharpness turns sharp ramen into spaghetti when the photo
is made soft; the control should not, or far less.

    python bench/real_resolution.py [--data ../shared/data/noodles] [--work DIR] [--reuse]
        [--per-class 40] [data.sampler=weighted trainer.max_epochs=15]

Prints a table per model and the first evidence lines of one ramen photo. On 2 cores: about 25 minutes
as it stands (two 8-epoch trainings at 128 px, about 2.5 minutes each, then the evidence of every test
photo each model gets right, about 1.5 s a photo); about 20 with the options above (docs/shortcuts.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from PIL import Image

from noodlenext.explain.photo import PhotoExplainer

ROOT = Path(__file__).resolve().parent.parent
CHANGE = "quarter_resolution"
SIDE = 64  # the control's common size: the smaller class's own


def common_size(src: Path, dst: Path) -> Path:
    """A copy of the ImageFolder tree `src` with every photo at SIDE x SIDE (those already that size keep
    their bytes); `src` is only read."""
    for p in sorted(src.rglob("*.jpg")):
        out = dst / p.relative_to(src)
        if out.exists():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(p) as im:
            if im.size == (SIDE, SIDE):
                out.write_bytes(p.read_bytes())
            else:
                im.convert("RGB").resize((SIDE, SIDE), Image.BICUBIC).save(out, quality=90)
    return dst


def train(data: Path, run_dir: Path, image_size: int, reuse: bool, extra: list[str]) -> Path:
    """The quickstart recipe on `data` at `image_size` px; returns the best checkpoint."""
    best = sorted(run_dir.glob("checkpoints/epoch_*.ckpt"))
    if reuse and best:
        return best[-1]
    cmd = [
        sys.executable, "-m", "noodlenext.train", "experiment=quickstart", "data=noodles",
        f"data.root={data}", "data.batch_size=32", f"model.image_size={image_size}", "llm=none",
        "logger=none", "seed=0", f"hydra.run.dir={run_dir}", *extra,
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    best = sorted(run_dir.glob("checkpoints/epoch_*.ckpt"))
    if done.returncode != 0 or not best:
        raise RuntimeError(f"training on {data} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return best[-1]


def score(ckpt: Path, per_class: int | None) -> dict:
    """Per true class, of the test photos the model gets right: how many the quarter-resolution change
    turns into each other class, as the per-photo evidence reports it."""
    run_dir = ckpt.parent.parent
    rows = [r for r in csv.DictReader((run_dir / "test_predictions.csv").open()) if r["label"] == r["pred"]]
    explainer = PhotoExplainer(ckpt, device="cpu", methods="both")
    turned: dict[str, Counter] = {}
    right: Counter = Counter()
    example = None
    started = time.perf_counter()
    for r in rows:
        if per_class is not None and right[r["label"]] >= per_class:
            continue
        with Image.open(r["path"]) as im:
            analysis = explainer(im.convert("RGB"), true_label=r["label"], file=Path(r["path"]).name)
        ev = analysis.evidence
        right[r["label"]] += 1
        change = next((g for g in ev.changes if g.change == CHANGE), None)
        if change is not None and change.becomes != change.predicted:
            turned.setdefault(r["label"], Counter())[change.becomes] += 1
            if example is None and r["label"] == "ramen":
                example = ev.lines()[:6]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {
        "run": str(run_dir),
        "test_acc": metrics.get("test/acc"),
        "right": dict(right),
        "turned": {k: dict(v) for k, v in turned.items()},
        "example": example,
        "seconds": round(time.perf_counter() - started, 1),
    }


def table(results: dict[str, dict]) -> str:
    rows = [
        "| model | test acc | ramen it gets right: soft at 1/4 resolution, become spaghetti "
        "| spaghetti it gets right: become ramen |",
        "| --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        t = r["turned"]
        rows.append(
            f"| {name} | {100 * (r['test_acc'] or 0):.1f}% "
            f"| {t.get('ramen', {}).get('spaghetti', 0)} of {r['right'].get('ramen', 0)} "
            f"| {t.get('spaghetti', {}).get('ramen', 0)} of {r['right'].get('spaghetti', 0)} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "noodles")
    ap.add_argument("--work", type=Path, default=None, help="keep the copy and the runs here")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--per-class", type=int, default=None, help="right photos explained a class")
    ap.add_argument("--reuse", action="store_true", help="use the runs already in --work")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("overrides", nargs="*", help="more training overrides, e.g. data.sampler=weighted")
    args = ap.parse_args(argv)
    if not (args.data / "train").is_dir():
        raise SystemExit(f"--data {args.data}: no train/ folder there (an ImageFolder tree is needed)")
    work = args.work or Path(tempfile.mkdtemp(prefix="real_resolution."))
    work.mkdir(parents=True, exist_ok=True)
    data = {
        "as it is": args.data.resolve(),
        f"all at {SIDE} px first": common_size(args.data, work / "common"),
    }
    results = {}
    for name, root in data.items():
        run_dir = work / ("run_native" if name == "as it is" else "run_common")
        ckpt = train(root, run_dir, args.image_size, args.reuse, args.overrides)
        results[name] = score(ckpt, args.per_class)
        print(f"{name}: {results[name]['turned']} of {results[name]['right']}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    for name, r in results.items():
        if r["example"]:
            print(f"\n{name}, a ramen photo it gets right:\n" + "\n".join(r["example"]))
    print(f"(data and runs in {work})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

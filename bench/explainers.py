"""Explainers against ground truth: every registered heatmap method on the synthetic noodles' test photos.

    .venv/bin/python bench/explainers.py --images 30 --out explainers.json        # trains the quickstart
    .venv/bin/python bench/explainers.py --ckpt outputs/bench_explainers/checkpoints/epoch_007.ckpt \
        --target-layer stages.2.blocks.-1.conv_dw --images 30 --out explainers_stage2.json

Without `--ckpt` it first trains the quickstart recipe through the real Hydra config (`python -m
noodlenext.train experiment=quickstart`, no LLM, no logger, no heatmap gallery) into `--run-dir`. Then, per
method, over `--images` test photos (as many of each class) with their evidence masks
(`noodlenext.data.synthetic`, resized to the model's input like the photos), for the true class, on the
synthetic noodles rendered with `--dishes any` by default (every class on either dish, so that the class is
in the food alone, where the masks say it is), at the layer the heatmap gallery explains:

- relevance mass: the share of the map's heat on the food (chance: the mask's mean area share);
- pointing game: the share of photos whose hottest pixel is on the food (chance: the same);
- deletion (lower is better) and insertion (higher is better) AUC, next to a seeded random map as smooth
  as the method's (uniform noise on the target layer's grid, upsampled), and the share of photos where the
  method beats that random map; a deleted pixel becomes the mean colour (`--baseline zero`);
- the randomisation check (Adebayo et al. 2018): Spearman r and SSIM between the maps of the trained
  model and of a copy whose head and last stage are randomised; a method passes when r < 0.5.

Prints a markdown table for docs/explainers.md and writes `--out` JSON (means and per-image values).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import device_name
from omegaconf import OmegaConf

from noodlenext.core.config import CONFIG_DIR
from noodlenext.data.images import class_folders, display_name, load_rgb
from noodlenext.data.synthetic import DISHES, load_mask, mask_path, render_dataset
from noodlenext.data.transforms import eval_transform
from noodlenext.explain.layers import target_layer, target_layer_path
from noodlenext.explain.registry import parse_methods
from noodlenext.explain.sanity import (
    PASS_BELOW,
    compute_maps,
    evaluate_maps,
    pointing_game,
    random_maps,
    randomisation_check,
    relevance_mass,
)
from noodlenext.explain.settings import HeatmapSettings
from noodlenext.models.classifier import NoodleClassifier, load_classifier

# The quickstart without what the benchmark does not need: no LLM, no logger, no gallery, no progress bar.
TRAIN_OVERRIDES = (
    "experiment=quickstart",
    "llm=none",
    "logger=none",
    "callbacks.heatmap_gallery=null",
    "callbacks.llm_explanations=null",
    "callbacks.rich_progress_bar=null",
)


def synthetic_root(data_dir: Path, dishes: str) -> Path:
    """The synthetic dataset as `data=synthetic data.synthetic.dishes=<dishes>` renders it:
    conf/data/synthetic.yaml's parameters."""
    settings = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "data" / "synthetic.yaml").synthetic)
    return render_dataset(data_dir / "synthetic_noodles", **{**settings, "dishes": dishes})


def train(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """Train the quickstart into args.run_dir; returns the best checkpoint and the run's metrics.json."""
    cmd = [
        sys.executable,
        "-m",
        "noodlenext.train",
        *TRAIN_OVERRIDES,
        f"model.image_size={args.image_size}",
        f"paths.data_dir={args.data_dir.resolve()}",
        f"hydra.run.dir={args.run_dir.resolve()}",
        f"data.synthetic.dishes={args.dishes}",
        *args.train_overrides,
    ]
    print("training:", " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    print(f"trained in {time.perf_counter() - start:.0f}s", flush=True)
    best = sorted((args.run_dir / "checkpoints").glob("epoch_*.ckpt"))
    ckpt = best[-1] if best else args.run_dir / "checkpoints" / "last.ckpt"
    metrics_file = args.run_dir / "metrics.json"
    return ckpt, json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}


def test_photos(root: Path, class_names: list[str], n: int) -> list[tuple[Path, int]]:
    """n test photos with their labels: the first of each class (sorted by name), taking turns by class."""
    per_class = math.ceil(n / len(class_names))
    by_class = []
    for folder in class_folders(root / "test"):
        label = class_names.index(display_name(folder.name))
        by_class.append([(p, label) for p in sorted(folder.glob("*.jpg"))[:per_class]])
    # interleaved, so that cutting at n keeps the classes balanced
    return [photo for group in zip(*by_class, strict=False) for photo in group][:n]


def layer_grid(model: torch.nn.Module, layer: str | None, image: torch.Tensor) -> tuple[int, int] | None:
    """The target layer's spatial size for one input (None when its output is not a (B, C, h, w) map)."""
    shapes = []
    handle = target_layer(model, layer).register_forward_hook(lambda m, a, out: shapes.append(out.shape))
    try:
        with torch.no_grad():
            model(image[None])
    finally:
        handle.remove()
    return tuple(shapes[0][-2:]) if len(shapes[0]) == 4 else None


def summarise(values: dict[str, np.ndarray]) -> dict[str, float]:
    """Means over images, and how often the map beats the random one (share of images, 0..1)."""
    out = {k: float(np.mean(v)) for k, v in values.items()}
    out["beats_random_deletion"] = float(np.mean(values["deletion"] < values["random_deletion"]))
    out["beats_random_insertion"] = float(np.mean(values["insertion"] > values["random_insertion"]))
    # the gallery's "informative" (MapTrust): better than the random map at deletion and insertion alike
    out["beats_random_both"] = float(
        np.mean(
            (values["deletion"] < values["random_deletion"])
            & (values["insertion"] > values["random_insertion"])
        )
    )
    return out


def markdown(rows: dict[str, dict[str, Any]], chance: float, random_row: dict[str, float]) -> str:
    head = (
        "| method | relevance mass | pointing | deletion ↓ (random) | insertion ↑ (random) | "
        "beats random: del / ins / both | randomisation r / SSIM | passes | s/image |"
    )
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['relevance_mass']:.3f} | {r['pointing']:.2f} | "
            f"{r['deletion']:.3f} ({r['random_deletion']:.3f}) | "
            f"{r['insertion']:.3f} ({r['random_insertion']:.3f}) | "
            f"{r['beats_random_deletion']:.0%} / {r['beats_random_insertion']:.0%} / "
            f"{r['beats_random_both']:.0%} | "
            f"{r['spearman']:.2f} / {r['ssim']:.2f} | {'yes' if r['passed'] else 'no'} | "
            f"{r['seconds_per_image']:.2f} |"
        )
    lines.append(
        f"| random map (same grid) | {random_row['relevance_mass']:.3f} | {random_row['pointing']:.2f} | "
        "| | | | | |"
    )
    lines.append(f"| chance (uniform map) | {chance:.3f} | {chance:.2f} | | | | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help="a noodlenext checkpoint; default: train the quickstart")
    parser.add_argument(
        "--image-size",
        type=int,
        default=64,
        help="model input when training (quickstart: 64); --ckpt: its own",
    )
    parser.add_argument(
        "--target-layer",
        default=None,
        help="explain.target_layer; default: the gallery's (model-aware) layer",
    )
    parser.add_argument("--images", type=int, default=30, help="test photos, as many of each class")
    parser.add_argument("--methods", nargs="+", default=["all"], help="registered names, or all")
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="paths.data_dir (the dataset's home)"
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="the training run; default: outputs/bench_explainers/<time>",
    )
    parser.add_argument(
        "--dishes",
        default="any",
        choices=DISHES,
        help="data.synthetic.dishes: any (default) puts every class on either dish, so that the class is in "
        "the food alone, where the masks say it is; by_class: the quickstart's data, spaghetti on plates",
    )
    parser.add_argument("--train-overrides", nargs="*", default=[], help="more Hydra overrides for training")
    parser.add_argument("--steps", type=int, default=20, help="deletion/insertion steps")
    parser.add_argument(
        "--baseline",
        default="zero",
        choices=["blur", "zero"],
        help="what deletion/insertion put in a pixel: zero = the mean colour (default: at 64 px RISE's blur, "
        "sigma 1.4 px, leaves the quickstart model's confidence as it was, so every AUC is alike)",
    )
    parser.add_argument("--depth", type=int, default=None, help="cascade groups to randomise; default: 2")
    parser.add_argument("--seed", type=int, default=0, help="random maps and the randomisation")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads; default: torch's")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )

    root = synthetic_root(args.data_dir, args.dishes)
    run_metrics: dict[str, Any] = {}
    if args.ckpt:
        ckpt = Path(args.ckpt)
        metrics_file = ckpt.parent.parent / "metrics.json"
        run_metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    else:
        args.run_dir = args.run_dir or Path(
            f"outputs/bench_explainers/{datetime.datetime.now():%Y%m%d-%H%M%S}"
        )
        ckpt, run_metrics = train(args)
    classifier: NoodleClassifier = load_classifier(ckpt).to(device)
    model, hp = classifier.net.eval(), classifier.hparams
    size = int(hp.image_size)
    to_tensor = eval_transform(size, hp.mean, hp.std)
    photos = test_photos(root, list(classifier.class_names), args.images)
    images = torch.stack([to_tensor(load_rgb(p)) for p, _ in photos]).to(device)
    targets = [label for _, label in photos]
    masks = np.stack([load_mask(mask_path(root, p), size) for p, _ in photos])
    with torch.no_grad():
        accuracy = float((model(images).argmax(1).cpu() == torch.tensor(targets)).float().mean())
    # The layer the gallery and the evidence explain: the model-aware default needs the classifier's input
    # size (the bare timm net would pick by timm's 224 px), so name it once, from the classifier.
    layer = target_layer_path(classifier, args.target_layer)
    settings = HeatmapSettings(target_layer=layer)
    grid = layer_grid(model, layer, images[0])
    methods = parse_methods(args.methods[0] if len(args.methods) == 1 else args.methods)

    print(f"# Explainers vs ground truth, {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"device: {device_name(device)}")
    print(
        f"torch {torch.__version__}, timm {metadata.version('timm')}, grad-cam {metadata.version('grad-cam')}"
    )
    test_acc = run_metrics.get("test/acc")
    print(
        f"model: {hp.name} at {size} px from {ckpt}"
        + (f" (test accuracy {test_acc:.1%} on the whole test split)" if test_acc is not None else "")
    )
    shape = f"a {grid[0]}x{grid[1]} map" if grid else "not a grid"
    print(
        f"{len(photos)} test photos of {root}, accuracy on them {accuracy:.0%}; target layer "
        f"{layer}{'' if args.target_layer else ' (the default)'}: {shape}"
    )

    maps, rows, per_image = {}, {}, {}
    for name in methods:
        start = time.perf_counter()
        maps[name] = compute_maps(name, model, images, targets, settings)
        seconds = (time.perf_counter() - start) / len(images)
        values = evaluate_maps(
            model, images, maps[name], targets, masks, args.seed, grid, args.steps, args.baseline
        )
        per_image[name] = values
        rows[name] = {**summarise(values), "seconds_per_image": seconds}
        print(f"  {name}: maps in {seconds:.2f} s/image", flush=True)
    start = time.perf_counter()
    check = randomisation_check(model, methods, images, targets, settings, maps, args.depth, args.seed)
    print(
        f"  randomisation check ({' + '.join(check.layers)} randomised) in {time.perf_counter() - start:.0f}s"
    )
    for name in methods:
        rows[name].update(
            spearman=float(np.mean(check.spearman[name])),
            ssim=float(np.mean(check.ssim[name])),
            passed=check.passed(name),
        )
        per_image[name].update(spearman=check.spearman[name], ssim=check.ssim[name])
    rand = random_maps(len(images), size, size, args.seed, grid)
    random_row = {
        "relevance_mass": float(relevance_mass(rand, masks).mean()),
        "pointing": float(pointing_game(rand, masks).mean()),
    }
    chance = float(masks.mean())
    print()
    print(markdown(rows, chance, random_row))
    print(f"\nrandomised: {', '.join(check.layers)}; passes: Spearman r < {PASS_BELOW}")

    if args.out:
        result = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": device_name(device),
            "versions": {k: metadata.version(k) for k in ("torch", "timm", "grad-cam")},
            "command": " ".join(sys.argv),
            "checkpoint": str(ckpt),
            "run_metrics": {
                k: v for k, v in run_metrics.items() if k in ("test/acc", "val/acc_best", "best_epoch")
            },
            "model": hp.name,
            "dishes": args.dishes,
            "image_size": size,
            "target_layer": layer,
            "map_grid": list(grid) if grid else None,
            "images": [str(p.relative_to(root)) for p, _ in photos],
            "targets": targets,
            "accuracy_on_images": accuracy,
            "mask_area": chance,
            "random_map": random_row,
            "randomised_layers": list(check.layers),
            "pass_below": PASS_BELOW,
            "methods": rows,
            "per_image": {m: {k: np.asarray(v).tolist() for k, v in d.items()} for m, d in per_image.items()},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

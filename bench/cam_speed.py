"""Score-CAM speed: our ScoreCAM vs pytorch-grad-cam's on the same model and images, in one process.

    .venv/bin/python bench/cam_speed.py --model convnext_tiny --image-size 160 --images 2 --top-k 64

Prints seconds per image for pytorch-grad-cam (fp32, its batch of 16), ours exact, ours top-k, and a floor:
C forward passes per image at our batch size (C = channels of the target layer), which Score-CAM cannot beat.
Pearson r compares each map with pytorch-grad-cam's, per image (the lowest is printed); a flat map (all
zeros: the layer shows no positive evidence) matches only a flat map. Random weights and noise images by
default; `--ckpt` (a noodlenext checkpoint) and `--data` (an image folder) give real maps, where top-k's r
means something: with random weights all channel scores are alike, so the exact map is close to the plain
channel mean and top-k only samples it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam draws a progress bar per mask batch

import numpy as np
import timm
import torch
from machine import device_name, sync
from pytorch_grad_cam import ScoreCAM as GradCamScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from noodlenext.data.images import find_images, load_rgb
from noodlenext.data.transforms import eval_transform
from noodlenext.explain import ScoreCAM, reshape_transform, target_layer
from noodlenext.models.classifier import load_classifier


def timed(runs: dict[str, Callable[[], np.ndarray]], device: torch.device, repeats: int) -> dict[str, tuple]:
    """Best wall time of each run over `repeats` rounds, interleaved so load drift hits all alike."""
    best: dict[str, tuple] = {name: (float("inf"), None) for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            sync(device)
            start = time.perf_counter()
            out = fn()
            sync(device)
            best[name] = (min(best[name][0], time.perf_counter() - start), out)
    return best


def pearson(a: np.ndarray, b: np.ndarray) -> list[float]:
    """Pearson r per image between two stacks of maps (B, H, W); two flat maps agree when equal."""
    return [
        float(np.corrcoef(x.ravel(), y.ravel())[0, 1]) if x.std() and y.std() else float(np.allclose(x, y))
        for x, y in zip(a, b, strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="convnext_tiny")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=None, help="our masks per forward; default: auto")
    parser.add_argument("--top-k", type=int, default=64, help="channels in the approximate mode; 0: skip")
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="auto: on for CUDA")
    parser.add_argument("--ckpt", default=None, help="a noodlenext checkpoint instead of --model")
    parser.add_argument(
        "--data", default=None, help="an image folder (the first --images, sorted) instead of noise"
    )
    parser.add_argument("--layer", default=None, help="dotted path, as explain.target_layer")
    parser.add_argument("--repeats", type=int, default=1, help="rounds; the best time of each run counts")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads; default: torch's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    autocast = None if args.bf16 == "auto" else args.bf16 == "on"
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ckpt:
        classifier = load_classifier(args.ckpt)
        model, mean, std = classifier.net, classifier.hparams.mean, classifier.hparams.std
        args.model = f"{args.ckpt} ({type(model).__name__})"
    else:
        kwargs = {"img_size": args.image_size} if "vit" in args.model else {}
        model, (mean, std) = timm.create_model(args.model, **kwargs), ((0.5,) * 3, (0.5,) * 3)
    model = model.to(device).eval()
    layer = target_layer(model, args.layer)
    transform = reshape_transform(model)
    if args.data:
        to_tensor = eval_transform(args.image_size, mean, std)
        paths = find_images(args.data)
        paths = paths[:: max(1, len(paths) // args.images)][: args.images]  # spread over the classes
        images = torch.stack([to_tensor(load_rgb(p)) for p in paths]).to(device)
    else:
        images = torch.randn(args.images, 3, args.image_size, args.image_size, device=device)
    with torch.no_grad():
        targets = model(images).argmax(dim=1).tolist()
    ours = ScoreCAM(model, layer, transform, batch_size=args.batch_size, autocast=autocast)
    batch_size = args.batch_size or ours._auto_batch_size(images)

    print(f"# Score-CAM speed, {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"device: {device_name(device)}")
    print(f"torch {torch.__version__}, timm {timm.__version__}, grad-cam {metadata.version('grad-cam')}")
    print(
        f"model: {args.model}{'' if args.ckpt else ' (random weights)'}, {args.image_size} px, "
        f"{args.images} {'images from ' + args.data if args.data else 'noise images'}, "
        f"our batch {batch_size}, bf16 {'on' if ours.autocast else 'off'}"
    )

    def reference() -> np.ndarray:
        with GradCamScoreCAM(model, [layer], reshape_transform=transform) as cam:
            return cam(images, [ClassifierOutputTarget(t) for t in targets])

    with torch.no_grad():
        channels = ours._activations(images[:1])[0].shape[1]
    runs = {"grad-cam": reference, "exact": lambda: ours(images, targets).numpy()}
    if args.top_k and args.top_k < channels:
        fast = ScoreCAM(model, layer, transform, args.batch_size, top_k=args.top_k, autocast=autocast)
        runs["top-k"] = lambda: fast(images, targets).numpy()
    results = timed(runs, device, args.repeats)
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=ours.autocast):
        batch = images[:1].expand(batch_size, -1, -1, -1).contiguous()
        t_batch = timed({"floor": lambda: ours._forward(batch)}, device, max(2, args.repeats))["floor"][0]

    n, (t_ref, ref), (t_ours, exact) = args.images, results["grad-cam"], results["exact"]
    print(f"target layer: {args.layer or 'default'}, {channels} channels")
    print(f"{'':28}{'s/image':>10}{'vs grad-cam':>13}{'Pearson r':>11}")
    print(f"{'pytorch-grad-cam ScoreCAM':28}{t_ref / n:10.2f}{1.0:12.2f}x{1.0:11.4f}")
    name = f"ours, exact{', bf16' if ours.autocast else ''}"
    print(f"{name:28}{t_ours / n:10.2f}{t_ref / t_ours:12.2f}x{min(pearson(exact, ref)):11.4f}")
    if "top-k" in results:
        t_top, approx = results["top-k"]
        name = f"ours, top-{args.top_k} (approx)"
        print(f"{name:28}{t_top / n:10.2f}{t_ref / t_top:12.2f}x{min(pearson(approx, ref)):11.4f}")
    t_floor = channels * t_batch / batch_size
    print(f"{f'floor: {channels} forwards':28}{t_floor:10.2f}{t_ref / n / t_floor:12.2f}x")
    record = {
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "device": device_name(device),
        "model": args.model,
        "image_size": args.image_size,
        "images": n,
        "channels": channels,
        "our_batch": batch_size,
        "bf16": bool(ours.autocast),
        "grad_cam_s_per_image": t_ref / n,
        "ours_s_per_image": t_ours / n,
        "speedup": t_ref / t_ours,
        "pearson_r_min": min(pearson(exact, ref)),
        "floor_s_per_image": t_floor,
    }
    if "top-k" in results:
        speedup, r = t_ours / t_top, pearson(approx, exact)
        spread = f"mean {np.mean(r):.4f}, lowest {min(r):.4f} of {n} images"
        print(f"top-{args.top_k} vs ours exact: {speedup:.2f}x faster, Pearson r {spread}")
        record["top_k"] = {"k": args.top_k, "s_per_image": t_top / n, "r_vs_exact_mean": float(np.mean(r))}
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

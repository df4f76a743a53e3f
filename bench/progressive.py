"""How long a reader waits on a CPU: the first look, the ScoreCAM preview, the exact map.

    .venv/bin/python bench/progressive.py --model convnext_base --image-size 384
    .venv/bin/python bench/progressive.py --model convnext_base --image-size 384 --full   # the exact map too

Runs `PhotoExplainer.steps` (what the page and `noodlenext.explain` show) on one photo, with a checkpoint
saved and loaded through the real code (random weights, or `--ckpt`), and prints seconds from the photo's
arrival to:
- the first look: the prediction and GradCAM (target: under 5 s for ConvNeXt-Base at 384 px on 2 cores);
- the ScoreCAM preview from `--preview-k` channels;
- the exact ScoreCAM map: measured with `--full`, else projected from the rate over the first
  `--sample` masked images (an exact map of ConvNeXt-Base is 1024 of them, minutes on a CPU);
and, in the same process, our GradCAM (a backward pass that stops at the explained layer) against
pytorch-grad-cam's (a full backward pass), with the ratio. The first estimate of the exact map's time (made
after one forward pass, before any masked image) is printed against the measured rate. With `--full`,
the preview's Pearson r with the exact map; with random weights that says little (see cam_speed.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch
from machine import device_name
from PIL import Image
from pytorch_grad_cam import GradCAM as GradCamGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from noodlenext.data.images import find_images, load_rgb
from noodlenext.explain import GradCAM, target_layer
from noodlenext.explain.photo import PhotoExplainer
from noodlenext.explain.settings import HeatmapSettings
from noodlenext.models.classifier import NoodleClassifier

SHARED_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "noodles"


def save_checkpoint(model_name: str, image_size: int, folder: Path) -> Path:
    """A random-weight noodlenext checkpoint, as training saves one."""
    model = NoodleClassifier(
        model_name, 3, ["ramen", "spaghetti", "udon"], image_size=image_size, pretrained=False
    )
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, folder / "bench.ckpt")
    return folder / "bench.ckpt"


def a_photo(image_size: int, given: str | None) -> tuple[Image.Image, str]:
    """The photo to explain: --photo, else the first shared noodle photo, else seeded noise."""
    if given:
        return load_rgb(given, image_size), given
    found = find_images(SHARED_PHOTOS) if SHARED_PHOTOS.is_dir() else []
    if found:
        return load_rgb(found[0], image_size), str(found[0])
    noise = np.random.default_rng(0).integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)
    return Image.fromarray(noise), "noise"


def gradcam_seconds(explainer: PhotoExplainer, photo: Image.Image) -> dict[str, float]:
    """One GradCAM map, ours and pytorch-grad-cam's, each timed once after a warm-up (same model, photo)."""
    net = explainer.model.net
    x = explainer.transform(photo)[None]
    layer = target_layer(explainer.model)
    out = {}
    for name in ("pytorch-grad-cam", "ours", "pytorch-grad-cam", "ours"):  # the second round counts
        start = time.perf_counter()
        if name == "ours":
            GradCAM(net, layer)(x, [0])
        else:
            with GradCamGradCAM(net, [layer]) as cam:
                cam(x, [ClassifierOutputTarget(0)])
        out[name] = time.perf_counter() - start
    return out


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--model", default="convnext_base")
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--ckpt", help="a noodlenext checkpoint (default: random weights)")
    parser.add_argument("--photo", help="the photo (default: a shared noodle photo, else noise)")
    parser.add_argument("--preview-k", type=int, default=32)
    parser.add_argument("--sample", type=int, default=128, help="masked images timed, to project")
    parser.add_argument("--full", action="store_true", help="compute the exact map to the end")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.ckpt or save_checkpoint(args.model, args.image_size, Path(tmp))
        settings = HeatmapSettings(preview_top_k=args.preview_k, preview_after_s=0.0)
        explainer = PhotoExplainer(ckpt, "cpu", "both", settings, evidence=False)
    photo, source = a_photo(explainer.image_size, args.photo)

    arrived = time.perf_counter()
    steps = explainer.steps(photo)
    first_estimate = projected = exact_done = None
    first_pass = 0.0
    for step in steps:
        p = step.progress
        if step.stage == "scorecam" and p is not None:
            if p.done == 0:
                first_pass, first_estimate = p.elapsed_s, p.elapsed_s + (p.left_s or 0.0)
            elif p.maps is None and p.done >= args.sample and projected is None:
                projected = (p.elapsed_s + (p.left_s or 0.0), p.done, p.total)
                if not args.full:
                    steps.close()
                    break
            elif p.maps is not None:
                exact_done = time.perf_counter() - arrived
    analysis = step.analysis
    t = analysis.timings
    grad = gradcam_seconds(explainer, photo)
    preview_s = t.get("preview")
    exact_compute = projected[0] if projected else None
    results = {
        "date": datetime.date.today().isoformat(),
        "device": device_name(torch.device("cpu")),
        "model": f"{explainer.model.hparams.name} at {explainer.image_size} px",
        "photo": source,
        "first_look_s": t["first look"],
        "preview_k": args.preview_k,
        "preview_s": preview_s,
        "exact_s": exact_done,
        # What came before the masked images (its first pass ran before the preview), plus their time
        # projected from the measured rate.
        "exact_projected_s": (preview_s or t["first look"]) + exact_compute - first_pass
        if exact_compute
        else None,
        "exact_projected_from": f"{projected[1]}/{projected[2]} masked images" if projected else None,
        "first_estimate_of_exact_compute_s": first_estimate,
        "measured_rate_exact_compute_s": exact_compute,
        "preview_correlation": analysis.preview.correlation if analysis.preview else None,
        "gradcam_ours_s": grad["ours"],
        "gradcam_pytorch_grad_cam_s": grad["pytorch-grad-cam"],
        "gradcam_speedup": grad["pytorch-grad-cam"] / grad["ours"],
    }
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Training throughput: the write-up train loader, and a Lightning step vs a plain PyTorch loop.

    .venv/bin/python bench/train_throughput.py --model convnext_atto --image-size 384 --batch-size 16 \
        --data /work/shared/data/noodles/train --compile both --json bench.json

stdout is a block to paste into docs/benchmarks.md. Both training paths get the same random batch, already
on the device, so their ratio is the cost of the loop (Lightning + NoodleClassifier), not of data loading.

`--photo-size 4032x3024` times the loader on phone-sized photos instead: `--photos` synthetic JPEGs (some
with an EXIF rotation) per core (one process, one thread, like a DataLoader worker): ours (the data
module's decode: draft mode at the Resize size, then the write-up stack), data.cache=resized (a second
epoch), data.augment_on=gpu (the worker's part: decode + Resize; the rest timed on the device), and
data.decode=gpu (workers read bytes, nvJPEG decodes; CUDA only), each against a plain full decode
(`Image.open().convert("RGB")` + the same stack) in the same run, with the cores needed to feed
`--feed` img/s (the issue's 444: ConvNeXt-Base training at batch 16 on an H100).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import timm
import torch
from lightning.pytorch import Callback, Trainer
from machine import device_name, sync
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from noodlenext.data.datamodule import NoodleDataModule
from noodlenext.data.gpu_decode import collate_encoded
from noodlenext.data.images import load_rgb
from noodlenext.data.synthetic import render_dataset
from noodlenext.models.classifier import NoodleClassifier

CLASSES = ("spaghetti", "ramen", "udon")
TARGET_OVERHEAD = 0.10


# ------------------------------------------------------------------------------ 1. train loader
def data_root(data: str | None, tmp: Path, image_size: int, per_class: int) -> Path:
    """A root whose train/ is the ImageFolder tree `data`, else freshly rendered synthetic noodles."""
    if data is None:
        return render_dataset(tmp / "synthetic", per_class, min(image_size, 512), test_fraction=0.0)
    tree = Path(data).expanduser().resolve()
    tree = tree / "train" if (tree / "train").is_dir() else tree
    (tmp / "root").mkdir()
    (tmp / "root" / "train").symlink_to(tree, target_is_directory=True)
    return tmp / "root"


def forever(loader: DataLoader) -> Iterator[Any]:
    while True:
        yield from loader


def loader_throughput(args: argparse.Namespace, root: Path) -> dict[str, float]:
    dm = NoodleDataModule(
        root, args.image_size, batch_size=args.batch_size, num_workers=args.workers, val_fraction=0.0
    )
    dm.setup("fit")
    dataset = dm.train_set
    n = min(len(dataset), args.loader_images)
    # Main process, one thread, like a DataLoader worker: decode, then the write-up transform.
    threads, decode, transform = torch.get_num_threads(), 0.0, 0.0
    torch.set_num_threads(1)
    for path, _ in dataset.samples[:n]:
        t0 = time.perf_counter()
        image = load_rgb(path)
        t1 = time.perf_counter()
        dataset.transform(image)
        decode, transform = decode + t1 - t0, transform + time.perf_counter() - t1
    torch.set_num_threads(threads)
    # The real train loader (shuffle, persistent workers, pin_memory on CUDA); batch 1 pays worker start-up.
    loader = dm.train_dataloader()
    batches = forever(loader)
    next(batches)
    images, t0 = 0, time.perf_counter()
    while images < args.loader_images:
        images += len(next(batches)[1])
    rate = images / (time.perf_counter() - t0)
    del batches, loader  # stops the workers before the training part
    gc.collect()
    per_image = (decode + transform) / n
    return {
        "images": len(dataset),
        "decode_ms": 1e3 * decode / n,
        "transform_ms": 1e3 * transform / n,
        "main_process_img_s": 1 / per_image,
        "loader_img_s": rate,
        "worker_speedup": rate * per_image,
    }


# ------------------------------------------------------------------------------ 1b. phone-sized photos
def render_photos(folder: Path, size: tuple[int, int], n: int) -> Path:
    """n phone-sized JPEGs (q 90) in two class folders: synthetic noodles enlarged, with fine grain (a
    photo's entropy), every 4th stored sideways (EXIF 6), every 4th+2 upside down (EXIF 3)."""
    small = render_dataset(folder / "small", max(1, (n + 2) // 3), 256, test_fraction=0.0)
    sources = sorted(small.rglob("*.jpg"))[:n]
    rng = np.random.default_rng(0)
    grain = rng.integers(-10, 11, (size[1], size[0], 3), dtype=np.int16)
    root = folder / "photos"

    def render(i: int, source: Path) -> None:
        image = Image.open(source).convert("RGB").resize(size, Image.Resampling.BICUBIC)
        arr = np.asarray(image, dtype=np.int16) + np.roll(grain, 97 * i, axis=1)
        image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        orientation = {0: 6, 2: 3}.get(i % 4, 1)
        exif = Image.Exif()
        if orientation == 6:
            image, exif[0x0112] = image.transpose(Image.Transpose.ROTATE_90), 6
        elif orientation == 3:
            image, exif[0x0112] = image.transpose(Image.Transpose.ROTATE_180), 3
        out = root / "train" / ("0_spaghetti", "1_ramen")[i % 2] / f"photo_{i:03d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        image.save(out, "JPEG", quality=90, exif=exif.tobytes())

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL and numpy release the GIL
        list(pool.map(render, range(len(sources)), sources))
    return root


def per_core(fn: Callable[[Path], Any], paths: list[Path], repeats: int) -> float:
    """Best CPU seconds per image of fn over the paths on one thread (torch too): a loader worker's cost.
    CPU time of this thread, not wall time, so other jobs on a shared machine do not inflate it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = float("inf")
    try:
        for _ in range(repeats):
            start = time.thread_time()
            for path in paths:
                fn(path)
            best = min(best, (time.thread_time() - start) / len(paths))
    finally:
        torch.set_num_threads(threads)
    return best


def photo_throughput(args: argparse.Namespace, tmp: Path, device: torch.device) -> dict[str, Any]:
    """Per-core img/s of each loader variant on phone-sized photos, vs a plain full decode (same stack)."""
    size = tuple(int(v) for v in args.photo_size.lower().split("x"))
    root = render_photos(tmp, size, args.photos)
    common = {"batch_size": args.batch_size, "num_workers": 0, "val_fraction": 0.0}
    dm = NoodleDataModule(root, args.image_size, **common)
    dm.setup("fit")
    paths = [p for p, _ in dm.train_set.samples]
    stack = dm.train_set.transform
    index = {p: i for i, p in enumerate(paths)}
    reps = args.repeats
    mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
    rows: dict[str, dict[str, float]] = {}

    def row(name: str, seconds: float, **extra: float) -> None:
        rows[name] = {"per_core_img_s": 1 / seconds, "ms": 1e3 * seconds, **extra}

    plain = per_core(lambda p: stack(Image.open(p).convert("RGB")), paths, reps)
    row("plain: Image.open().convert('RGB') + write-up stack", plain)
    plain_decode = per_core(lambda p: Image.open(p).convert("RGB"), paths, reps)
    draft_decode = per_core(lambda p: load_rgb(p, dm.train_set.decode_size), paths, reps)
    ours = per_core(lambda p: dm.train_set[index[p]], paths, reps)
    row(
        "ours: draft decode + write-up stack",
        ours,
        decode_ms=1e3 * draft_decode,
        plain_decode_ms=1e3 * plain_decode,
    )

    cached = NoodleDataModule(root, args.image_size, cache="resized", cache_dir=tmp / "cache", **common)
    cached.setup("fit")
    build = per_core(lambda p: cached.train_set[index[p]], paths, 1)  # the first epoch writes the entries
    read = per_core(lambda p: cached.train_set[index[p]], paths, reps)
    row("ours, data.cache=resized: first epoch (writes the cache)", build)
    row("ours, data.cache=resized: later epochs", read)

    on_device = NoodleDataModule(root, args.image_size, augment_on="gpu", **common)
    on_device.setup("fit")
    worker = per_core(lambda p: on_device.train_set[index[p]], paths, reps)
    row("ours, data.augment_on=gpu: worker part (draft decode + Resize)", worker)
    both = NoodleDataModule(
        root, args.image_size, augment_on="gpu", cache="resized", cache_dir=tmp / "cache", **common
    )
    both.setup("fit")  # the cache entries of `cached` above: same files, same Resize
    both_s = per_core(lambda p: both.train_set[index[p]], paths, reps)
    row("ours, cache=resized + augment_on=gpu: worker part, later epochs", both_s)
    # The write-up stack after its Resize alone: PIL in a worker vs tensors (v2, per image) on the device.
    resized = [cached.train_set.cache.load(p) for p in paths[: args.batch_size]]
    pil_stack = T.Compose(stack.transforms[1:])
    pil_s = per_core(lambda p: pil_stack(resized[index[p] % len(resized)]), paths, reps)
    batch = torch.stack([on_device.train_set[i][0] for i in range(min(args.batch_size, len(paths)))])
    batch = batch.to(device)
    device_s = timed_per_image(
        lambda: on_device.augment_on_device(batch, training=True), device, len(batch), reps
    )
    out: dict[str, Any] = {
        "photo_size": list(size),
        "photos": len(paths),
        "mean_mb": mb,
        "image_size": args.image_size,
        "decode_size": list(dm.train_set.decode_size),
        "feed_img_s": args.feed,
        "rows": rows,
        "augment_on_device": {
            "device": device.type,
            "img_s": 1 / device_s,
            "batch": len(batch),
            "pil_per_core_img_s": 1 / pil_s,
        },
    }
    if device.type == "cuda":
        gpu = NoodleDataModule(root, args.image_size, augment_on="gpu", decode="gpu", **common)
        gpu.setup("fit")
        encoded = gpu.train_dataloader().dataset  # EncodedImages: what a worker does
        worker = per_core(lambda p: encoded[index[p]], paths, reps)
        row("ours, data.decode=gpu: worker part (read bytes + EXIF header)", worker)
        items = collate_encoded([encoded[i] for i in range(min(args.batch_size, len(paths)))])

        def decode_and_augment() -> torch.Tensor:
            images, _ = gpu.decode_on_device(items, device, training=True)
            return gpu.augment_on_device(images, training=True)

        gpu_s = timed_per_image(decode_and_augment, device, len(items[0]), reps)
        out["decode_on_device"] = {"device": torch.cuda.get_device_name(device), "img_s": 1 / gpu_s}
    else:
        out["decode_on_device"] = {"skipped": "no CUDA GPU: data.decode=gpu needs nvJPEG"}
    for r in rows.values():
        r["vs_plain"] = plain / (1 / r["per_core_img_s"])
        r["cores_to_feed"] = args.feed / r["per_core_img_s"]
    return out


def timed_per_image(fn: Callable[[], Any], device: torch.device, n: int, repeats: int) -> float:
    """Best seconds per image of fn (a whole batch of n) after one warm-up call: wall time on a GPU; on the
    CPU, CPU time of one thread (torch too), i.e. per core, as per_core."""
    cpu = device.type == "cpu"
    clock = time.thread_time if cpu else time.perf_counter
    threads = torch.get_num_threads()
    if cpu:
        torch.set_num_threads(1)
    try:
        fn()
        best = float("inf")
        for _ in range(max(1, repeats)):
            sync(device)
            start = clock()
            fn()
            sync(device)
            best = min(best, (clock() - start) / n)
    finally:
        torch.set_num_threads(threads)
    return best


def print_photos(r: dict[str, Any]) -> None:
    w, h = r["photo_size"]
    dw, dh = r["decode_size"]
    print(
        f"| {r['photos']} JPEGs of {w}x{h} ({r['mean_mb']:.1f} MB), write-up stack at {r['image_size']} px "
        f"(JPEGs decode for {dw}x{dh}) | ms/img | img/s per core | vs plain "
        f"| cores for {r['feed_img_s']:.0f} img/s |"
    )
    print("|---|---|---|---|---|")
    for name, v in r["rows"].items():
        print(
            f"| {name} | {v['ms']:.1f} | {v['per_core_img_s']:.1f} | {v['vs_plain']:.2f}x | "
            f"{math.ceil(v['cores_to_feed'])} |"
        )
    d = r["augment_on_device"]
    where = "the CPU, per core" if d["device"] == "cpu" else d["device"]
    print(
        f"\n- the write-up stack after its Resize: PIL (a worker) {d['pil_per_core_img_s']:.0f} img/s per "
        f"core; tensors (data.augment_on=gpu, per image) on {where}: {d['img_s']:.0f} img/s"
    )
    g = r["decode_on_device"]
    if "skipped" in g:
        print(f"- data.decode=gpu: skipped ({g['skipped']})")
    else:
        print(f"- data.decode=gpu, nvJPEG decode + Resize + stack on {g['device']}: {g['img_s']:.0f} img/s")
    ours = r["rows"]["ours: draft decode + write-up stack"]
    print(
        f"- decode alone: plain {ours['plain_decode_ms']:.1f} ms, draft {ours['decode_ms']:.1f} ms a photo\n"
    )


# ------------------------------------------------------------------------------ 2. training step
def plain_rate(args: argparse.Namespace, device: torch.device, batch: tuple, compiled: bool) -> float:
    """img/s of a hand-written loop: AdamW, label-smoothed CE, clip 1.0; bf16 + channels_last on CUDA."""
    cuda = device.type == "cuda"
    model = timm.create_model(args.model, pretrained=False, num_classes=len(CLASSES)).to(device).train()
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.03)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.2)
    x, y = batch
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync(device)
            start = time.perf_counter()
        xb = x.contiguous(memory_format=torch.channels_last) if cuda else x  # as NoodleClassifier.forward
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = criterion(forward(xb), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - start)


class SameBatch(Dataset):
    """The same (x, y) batch `length` times; DataLoader(batch_size=None) passes it through as is."""

    def __init__(self, batch: tuple, length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple:
        return self.batch


class StepTimer(Callback):
    """Seconds from the start of batch `warmup` to the end of the last batch (optimizer step included)."""

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.last, self.device = warmup, warmup + steps - 1, device
        self.start = self.seconds = 0.0

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        if idx == self.last:
            sync(self.device)
            self.seconds = time.perf_counter() - self.start


def lightning_rate(
    args: argparse.Namespace, device: torch.device, batch: tuple, compiled: bool, tmp: Path
) -> float:
    """img/s of NoodleClassifier under a real Trainer, configured as conf/trainer/default.yaml does."""
    model = NoodleClassifier(
        args.model, len(CLASSES), CLASSES, image_size=args.image_size, pretrained=False, compile=compiled
    )
    total = args.warmup + args.steps
    timer = StepTimer(args.warmup, args.steps, device)
    trainer = Trainer(
        accelerator=device.type,
        devices=[device.index or 0] if device.type == "cuda" else 1,
        max_steps=total,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=tmp,
        callbacks=[timer],
    )
    trainer.fit(model, train_dataloaders=DataLoader(SameBatch(batch, total), batch_size=None))
    return args.steps * args.batch_size / timer.seconds


# ------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="convnext_atto")
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="timed training steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--compile", nargs="?", const="on", default="off", choices=("off", "on", "both"))
    p.add_argument("--data", help="ImageFolder tree (or a root holding train/); default: synthetic noodles")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--loader-images", type=int, default=256, help="images timed through the loader")
    p.add_argument("--repeats", type=int, default=1, help="alternate plain/Lightning runs, keep the best")
    p.add_argument("--skip", choices=("loader", "train"), help="leave one part out")
    p.add_argument("--photo-size", help="WxH, e.g. 4032x3024: the loader on phone-sized JPEGs (see above)")
    p.add_argument("--photos", type=int, default=32, help="how many phone-sized JPEGs (--photo-size)")
    p.add_argument("--feed", type=float, default=444.0, help="img/s the loader must feed (cores needed)")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available" banners
    torch.set_float32_matmul_precision("high")  # the same for both loops
    settings = ("model", "image_size", "batch_size", "steps", "warmup", "workers", "repeats")
    out: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="minutes"),
        "device": device_name(device),
        "versions": {m.__name__: m.__version__ for m in (torch, lightning, timm)},
        **{k: getattr(args, k) for k in settings},
    }
    precision = "bf16-mixed, channels_last" if device.type == "cuda" else "fp32"
    print(f"### Training throughput, {out['date']}\n\n- device: {out['device']}")
    print("- " + ", ".join(f"{k} {v}" for k, v in out["versions"].items()))
    print(f"- {args.model}, {args.image_size} px, batch {args.batch_size}, {precision}")
    if args.skip != "train":
        print(f"- train: {args.steps} steps timed after {args.warmup} warm-up, best of {args.repeats} run(s)")
    if args.photo_size and args.skip != "loader":
        print(
            f"- loader on {args.photos} photos of {args.photo_size}: one process, one thread, "
            f"best of {args.repeats}\n"
        )
    else:
        print(f"- train loader: {args.workers} workers\n" if args.skip != "loader" else "")
    with tempfile.TemporaryDirectory(prefix="noodle-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        if args.skip != "loader" and args.photo_size:
            out["photos"] = photo_throughput(args, tmp, device)
            if args.json:
                args.json.write_text(json.dumps(out, indent=2) + "\n")
            print_photos(out["photos"])
        elif args.skip != "loader":
            root = data_root(args.data, tmp, args.image_size, per_class=max(1, args.loader_images // 3))
            out["data"] = args.data or f"synthetic {min(args.image_size, 512)} px JPEGs"
            out["loader"] = r = loader_throughput(args, root)
            cost = f"{r['decode_ms']:.2f} ms decode + {r['transform_ms']:.2f} ms write-up transform per image"
            print(f"| train loader, {args.image_size} px, {r['images']} images of {out['data']} | img/s |")
            print(f"|---|---|\n| main process, 1 thread: {cost} | {r['main_process_img_s']:.0f} |")
            print(
                f"| DataLoader, {args.workers} workers ({r['worker_speedup']:.2f}x the main process) | "
                f"{r['loader_img_s']:.0f} |\n"
            )
        if args.skip != "train":
            torch.manual_seed(0)
            x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
            batch = (x, torch.randint(0, len(CLASSES), (args.batch_size,), device=device))
            print("| mode | plain PyTorch img/s | Lightning img/s | lightning / plain | Lightning overhead |")
            print("|---|---|---|---|---|")
            for compiled in {"off": [False], "on": [True], "both": [False, True]}[args.compile]:
                plain = ours = 0.0
                for _ in range(args.repeats):  # interleaved, best of: a busy machine only ever slows a run
                    plain = max(plain, plain_rate(args, device, batch, compiled))
                    ours = max(ours, lightning_rate(args, device, batch, compiled, tmp))
                ratio, mode = ours / plain, "compiled" if compiled else "eager"
                out[mode] = {
                    "plain_img_s": plain,
                    "lightning_img_s": ours,
                    "ratio": ratio,
                    "overhead": 1 - ratio,
                }
                if args.json:  # after every mode: a timeout in the next still leaves this one
                    args.json.write_text(json.dumps(out, indent=2) + "\n")
                verdict = "ok" if 1 - ratio < TARGET_OVERHEAD else "ABOVE TARGET"
                overhead = f"{1 - ratio:+.1%} (target < {TARGET_OVERHEAD:.0%}: {verdict})"
                print(f"| {mode} | {plain:.1f} | {ours:.1f} | {ratio:.3f} | {overhead} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()

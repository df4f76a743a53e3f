"""Training throughput: the write-up train loader, and a Lightning step vs a plain PyTorch loop.

    .venv/bin/python bench/train_throughput.py --model convnext_atto --image-size 384 --batch-size 16 \
        --data /work/shared/data/noodles/train --compile both --json bench.json

stdout is a block to paste into docs/benchmarks.md. Both training paths get the same random batch, already
on the device, so their ratio is the cost of the loop (Lightning + NoodleClassifier), not of data loading.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning
import timm
import torch
from lightning.pytorch import Callback, Trainer
from machine import device_name, sync
from torch import nn
from torch.utils.data import DataLoader, Dataset

from noodlenext.data.datamodule import NoodleDataModule
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
    print(f"- train loader: {args.workers} workers\n" if args.skip != "loader" else "")
    with tempfile.TemporaryDirectory(prefix="noodle-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        if args.skip != "loader":
            root = data_root(args.data, tmp, args.image_size, per_class=max(1, args.loader_images // 3))
            out["data"] = args.data or f"synthetic {min(args.image_size, 512)} px JPEGs"
            out["loader"] = r = loader_throughput(args, root)
            cost = f"{r['decode_ms']:.2f} ms decode + {r['transform_ms']:.2f} ms write-up transform per image"
            print(f"| train loader, {args.image_size} px, {r['images']} images of {out['data']} | img/s |")
            print(f"|---|---|\n| main process, 1 thread: {cost} | {r['main_process_img_s']:.0f} |")
            print(f"| DataLoader, {args.workers} workers ({r['worker_speedup']:.2f}x the main process) | "
                  f"{r['loader_img_s']:.0f} |\n")  # fmt: skip
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
                verdict = "ok" if 1 - ratio < TARGET_OVERHEAD else "ABOVE TARGET"
                overhead = f"{1 - ratio:+.1%} (target < {TARGET_OVERHEAD:.0%}: {verdict})"
                print(f"| {mode} | {plain:.1f} | {ours:.1f} | {ratio:.3f} | {overhead} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()

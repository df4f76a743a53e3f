"""What users run and the other tests do not: the default data loader (2 persistent worker processes, not
the tests' num_workers=0), data.cache=resized filled by those workers, early stopping that ends a run,
debug=overfit, and the csv and tensorboard loggers. All of them train: `slow`."""

from __future__ import annotations

import csv
import pickle
import struct
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import CLASSES, SYNTHETIC_ARGS, run_main
from torch.utils.data import DataLoader

import noodlenext.train
from noodlenext.data.datamodule import NoodleDataModule
from noodlenext.models.classifier import NoodleClassifier

pytestmark = pytest.mark.slow

SIZE = 32


def workers_of(loader: DataLoader) -> list[int]:
    """The process ids of a loader's worker processes (its iterator's, while it has one)."""
    iterator = getattr(loader, "_iterator", None)
    return sorted(w.pid for w in getattr(iterator, "_workers", []))


class Seen(L.Callback):
    """Per epoch: how many training images came, whether every batch was finite, and the loader's workers."""

    def __init__(self) -> None:
        self.images: list[int] = []
        self.finite: list[bool] = []
        self.workers: list[list[int]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.images.append(0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.images[-1] += len(batch[1])
        self.finite.append(bool(torch.isfinite(batch[0]).all()))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.workers.append(workers_of(trainer.train_dataloader))


def fit(datamodule: NoodleDataModule, epochs: int, callbacks: list[L.Callback]) -> L.Trainer:
    model = NoodleClassifier(
        "convnext_atto", 3, ["spaghetti", "ramen", "udon"], image_size=SIZE, pretrained=False
    )
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    return trainer


def test_training_with_two_persistent_workers_skips_a_bad_image_and_fills_the_cache_from_them(
    make_tree, tmp_path: Path
) -> None:
    root = make_tree({"train": 4, "val": 1})  # 12 training images (3 batches of 4: each seen every epoch)
    bad = root / "train" / CLASSES[1] / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    dm = NoodleDataModule(root, image_size=SIZE, batch_size=4, cache="resized")  # num_workers: 2, the default
    dm.setup("fit")
    assert [path for path, _ in dm.report.skipped] == [bad] and len(dm.train_set) == 12
    seen = Seen()
    trainer = fit(dm, 2, [seen])

    loader = trainer.train_dataloader
    assert loader.num_workers == 2 and loader.persistent_workers
    assert (
        len(seen.workers[0]) == 2 and seen.workers[0] == seen.workers[1]
    )  # the same 2 processes, both epochs
    assert seen.images == [12, 12] and all(seen.finite)
    # The workers decoded and resized every image once, into the cache: this process never did.
    train_cache, val_cache = dm.train_set.cache, dm.val_set.cache
    assert train_cache.misses == train_cache.hits == val_cache.misses == 0
    entries = {p: p.stat().st_mtime_ns for p in train_cache.folder.rglob("*.npy")}
    assert len(entries) == 12 and len(list(val_cache.folder.rglob("*.npy"))) == 3
    assert not list(train_cache.folder.rglob("*.tmp"))  # concurrent writers left no half-written entry
    # A third epoch (new persistent workers: a new fit) reads the entries: none is written again.
    fit(dm, 1, [])
    assert {p: p.stat().st_mtime_ns for p in train_cache.folder.rglob("*.npy")} == entries


def test_an_image_damaged_after_setup_stops_the_run_in_a_worker_naming_it(make_tree) -> None:
    root = make_tree({"train": 4, "val": 1})  # 12 training images: batches of 4, every image every epoch
    dm = NoodleDataModule(root, image_size=SIZE, batch_size=4, num_workers=2)
    dm.setup("fit")
    damaged = dm.train_set.samples[5][0]
    damaged.write_bytes(b"overwritten since setup")
    with pytest.raises(RuntimeError, match=r"DataLoader worker") as error:
        fit(dm, 1, [])
    assert f"could not read {damaged} (it was readable at setup)" in str(error.value)


def test_the_datasets_survive_pickling_into_spawned_workers(make_tree) -> None:
    """fork copies a dataset into a worker; spawn and forkserver (Python 3.14's default on Linux, macOS's
    and Windows' spawn) pickle it, its transforms and its cache."""
    root = make_tree({"train": 3, "val": 1})
    dm = NoodleDataModule(root, image_size=SIZE, batch_size=2, num_workers=2, cache="resized")
    dm.setup("fit")
    again = pickle.loads(pickle.dumps(dm.val_set))
    assert torch.equal(again[0][0], dm.val_set[0][0]) and again.samples == dm.val_set.samples
    spawned = DataLoader(dm.train_set, batch_size=3, num_workers=1, multiprocessing_context="spawn")
    images = torch.cat([x for x, _ in spawned])
    assert images.shape == (len(dm.train_set), 3, SIZE, SIZE) and torch.isfinite(images).all()


# ------------------------------------------------------------------------------ runs of the train command
def csv_metrics(run_dir: Path) -> list[dict[str, str]]:
    (metrics,) = run_dir.glob("csv/version_*/metrics.csv")
    return list(csv.DictReader(metrics.open()))


def tensorboard_scalars(run_dir: Path) -> dict[str, list[float]]:
    """The scalars in a run's tensorboard event files, by tag, in the order written (TFRecord framing:
    length, its CRC, an Event proto, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list[float]] = {}
    for path in sorted(run_dir.glob("tensorboard/**/events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = Event.FromString(data[at + 12 : at + 12 + length])
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(value.simple_value)
            at += 12 + length + 4
    return scalars


def test_early_stopping_ends_a_run_that_stops_improving_and_the_csv_logger_shows_it(
    synthetic_noodles: Path, tmp_path: Path
) -> None:
    """Learning rates of 0: val/acc never improves after the first epoch, so patience 1 ends the run after
    the second of its 6 epochs."""
    run_dir = tmp_path / "run"
    status, output = run_main(
        noodlenext.train.main, "experiment=quickstart", f"data.root={synthetic_noodles}", *SYNTHETIC_ARGS,
        "data.image_size=32", "data.num_workers=0", "data.batch_size=8", "trainer=cpu",
        "trainer.max_epochs=6", "llm=none", "model.optim.head_lr=0", "model.optim.backbone_lr=0",
        "callbacks.early_stopping.patience=1", "callbacks.heatmap_gallery=null", "callbacks.mistakes=null",
        "logger=csv", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert status == 0, output[-3000:]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1  # stopped after epochs 0 and 1, not 6
    rows = csv_metrics(run_dir)
    assert sorted({int(r["epoch"]) for r in rows if r.get("val/acc")}) == [0, 1]
    assert any(r.get("test/acc") for r in rows)  # then tested, as every run


def test_debug_overfit_fits_its_few_batches_and_the_tensorboard_logger_records_it(
    synthetic_noodles: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    status, output = run_main(
        noodlenext.train.main, "experiment=quickstart", "debug=overfit", "logger=tensorboard",
        "trainer.overfit_batches=1", "trainer.max_epochs=15", f"data.root={synthetic_noodles}",
        *SYNTHETIC_ARGS,
        "data.image_size=32", "data.batch_size=8", "llm=none", "callbacks.heatmap_gallery=null",
        "callbacks.mistakes=null", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert status == 0, output[-3000:]
    scalars = tensorboard_scalars(run_dir)
    assert {"val/acc", "test/acc"} <= set(scalars), sorted(scalars)
    losses = scalars["train/loss_epoch"] if "train/loss_epoch" in scalars else scalars["train/loss"]
    assert len(losses) == 15 and losses[-1] < losses[0] / 2  # it fits its one batch

"""Shared fixtures: small image trees built on the fly, and configs composed the way Hydra composes them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image

from noodlenext.core.config import CONFIG_DIR

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the suite never reaches for a hub

CLASSES = ("0_spaghetti", "1_ramen", "2_udon")


def write_image(
    path: Path, size: tuple[int, int] = (40, 32), seed: int = 0, mode: str = "RGB", **save: object
) -> Path:
    """A random image whose mean colour depends on the class folder, so a model can learn it."""
    rng = np.random.default_rng(seed)
    base = {"0_spaghetti": 60, "1_ramen": 130, "2_udon": 200}.get(path.parent.name, 128)
    arr = np.clip(rng.normal(base, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGB").convert(mode).save(path, **save)
    return path


@pytest.fixture
def make_tree(tmp_path: Path) -> Callable[..., Path]:
    """make_tree({"train": 8, "test": 3}) -> root with <split>/<class>/*.png images."""

    def make(
        splits: dict[str, int], classes: Iterable[str] = CLASSES, size: tuple[int, int] = (40, 32)
    ) -> Path:
        root = tmp_path / "noodles"
        for split, n in splits.items():
            for c, cls in enumerate(classes):
                for i in range(n):
                    write_image(
                        root / split / cls / f"{i:03d}.png",
                        size,
                        seed=1000 * c + i + {"train": 0, "val": 300, "test": 600}.get(split, 900),
                    )
        return root

    return make


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose a config like `python -m noodlenext.<task>` would, with outputs under tmp_path."""

    def make(config_name: str = "train", overrides: Iterable[str] = ()) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
            cfg.hydra.runtime.cwd = str(tmp_path)
            cfg.hydra.job.num = 0
        HydraConfig().set_config(cfg)
        return cfg

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    they gain nothing from threads, and on a busy 2-core box OpenMP hand-offs cost 10-50x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ConvNeXt-Atto checkpoint at 32 px (classes spaghetti, ramen, udon), untrained, saved as training
    saves one and read back through the real loading code by whoever uses it. Built once per session."""
    from noodlenext.models.classifier import NoodleClassifier

    torch.manual_seed(0)
    names = ["spaghetti", "ramen", "udon"]
    model = NoodleClassifier("convnext_atto", 3, names, image_size=32, pretrained=False)
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    path = tmp_path_factory.mktemp("tiny_checkpoint") / "atto32.ckpt"
    torch.save(checkpoint, path)
    return path


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry under root: a file's bytes, None for a folder (an added empty folder shows too)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None for p in root.rglob("*")}


def user_photos(root: Path, splits: Iterable[str] = ("train", "test"), per_class: int = 2) -> Path:
    """A user's ImageFolder as the README lays it out (JPEGs, class folders ramen and udon), nothing else."""
    for s, split in enumerate(splits):
        for c, cls in enumerate(("ramen", "udon")):
            for i in range(per_class):
                seed = 1000 * s + 100 * c + i
                write_image(root / split / cls / f"IMG_{i:04d}.jpg", (40, 32), seed=seed, quality=90)
    return root

"""NoodleDataModule: an ImageFolder tree checked at setup, split, augmented and batched."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision import transforms as T

from noodlenext.core.ownership import is_empty_dir
from noodlenext.data.cache import CACHE_FOLDER, CACHE_TAG, CACHE_TAG_TEXT, ResizedCache
from noodlenext.data.fingerprints import hash_files
from noodlenext.data.gpu_decode import EncodedImages, collate_encoded, decode_batch, require_cuda
from noodlenext.data.images import (
    ScanReport,
    check_images,
    class_folders,
    display_name,
    list_files,
    load_rgb,
)
from noodlenext.data.rules import HashedImage, duplicate_groups
from noodlenext.data.samplers import ShardedEvalSampler
from noodlenext.data.scan import UNKNOWN_FOLDER
from noodlenext.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augmentation,
    DeviceAugmentation,
    augmentation_of,
    decode_size,
    eval_transform,
    first_resize,
    load_augmentation,
    split_for_device,
)

log = logging.getLogger(__name__)

UNLABELLED = -1
# UNKNOWN_FOLDER ("unknown", imported above): test/unknown/* is the course competition's unlabelled test set


class NoodleImages(Dataset):
    """(path, label) samples decoded to RGB and transformed; label -1 means unlabelled.

    When the transform starts with a Resize, JPEGs decode in draft mode at the smallest DCT scale not
    below its size (load_rgb). cache_dir (data.cache=resized): decoded-and-resized copies are kept there
    and read back in later epochs (noodlenext.data.cache); a transform without a first Resize is not cached.
    """

    def __init__(
        self, samples: Sequence[tuple[Path, int]], transform: Any, cache_dir: str | Path | None = None
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.decode_size = decode_size(transform)
        resize = first_resize(transform)
        self.cache = ResizedCache(cache_dir, resize) if cache_dir is not None and resize is not None else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            image = self.cache.load(path) if self.cache is not None else load_rgb(path, self.decode_size)
        except Exception as e:  # checked at setup, so only a file changed since then lands here
            raise RuntimeError(f"could not read {path} (it was readable at setup): {e}") from e
        return self.transform(image), label


class NoodleDataModule(LightningDataModule):
    """Reads root/train/<class>/*, optional root/val/<class>/*, and root/test/<class>/* or test/unknown/*.

    Args:
        root: the ImageFolder tree (with `synthetic`, where the embedded dataset is rendered).
        image_size: the model's input side in pixels; mean, std: its per-channel normalisation (0..1 scale).
        batch_size: images per step and process; num_workers: loader processes.
        val_fraction: share of each training class held out for validation when there is no val/ folder.
        split_seed: seeds that split. augment: an `augment` group choice by name (`writeup`,
            `randaugment`, `none`), what Hydra composes from it ({train, mixup}), or an Augmentation.
        sampler: None, or `weighted` (inverse class frequency). on_bad_image: `skip` or `error`.
        classes: the class names in label order (from a checkpoint); default: train/'s folders.
        allow_leakage: train and test even when test images are byte-identical to train/val ones.
        file_list: root-relative paths of the only images to use (the data doctor's fix=list).
        relabel: a CSV of `file,label` rows (root-relative path, class name): those train/ or val/ images
            are trained on as that class, their files untouched (`noodlenext.improve`'s relabel fix). A
            test/ image is refused: the test labels are the yardstick.
        folds, fold: k-fold cross-validation (experiment=crossval): train/'s images are split into `folds`
            stratified, seeded (split_seed) folds; with `fold` = i, fold i is held out (`heldout_set`,
            never trained on nor validated on) and val comes from the other folds. null: no folds.
        cache: None (or "none"), or "resized": every image decoded and resized (the stacks' first Resize)
            once, into cache_dir (default: <root>/.noodlenext_cache), and read back from there.
        decode: "cpu" (loader workers, JPEGs in draft mode) or "gpu": workers read the bytes and nvJPEG
            decodes each batch on the GPU (needs CUDA and augment_on="gpu").
        augment_on: "cpu" (loader workers) or "gpu": workers decode and resize, and the rest of the training
            stack runs per image on the training device after the batch is moved there.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int = 384,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batch_size: int = 16,
        num_workers: int = 2,
        val_fraction: float = 0.1,
        split_seed: int = 42,
        augment: str | Augmentation | Mapping[str, Any] | None = "writeup",
        sampler: str | None = None,
        on_bad_image: str = "skip",
        classes: Sequence[str] | None = None,
        synthetic: dict | None = None,
        allow_leakage: bool = False,
        file_list: str | Path | None = None,
        relabel: str | Path | None = None,
        folds: int = 5,
        fold: int | None = None,
        cache: str | None = None,
        cache_dir: str | Path | None = None,
        decode: str = "cpu",
        augment_on: str = "cpu",
    ) -> None:
        super().__init__()
        cache = None if cache in (None, "none") else cache
        if cache not in (None, "resized"):
            raise ValueError(f"data.cache={cache!r} is not known; use none or resized")
        if decode not in ("cpu", "gpu"):
            raise ValueError(f"data.decode={decode!r} is not known; use cpu or gpu")
        if augment_on not in ("cpu", "gpu"):
            raise ValueError(f"data.augment_on={augment_on!r} is not known; use cpu or gpu")
        if decode == "gpu" and augment_on != "gpu":
            raise ValueError(
                "data.decode=gpu decodes on the GPU, so the training augmentation must run there too: "
                "add data.augment_on=gpu"
            )
        if decode == "gpu" and cache is not None:
            raise ValueError(
                "data.cache=resized and data.decode=gpu: choose one (the cache's small copies decode on the "
                "CPU; decode=gpu reads the original JPEGs)"
            )
        if sampler not in (None, "weighted"):
            raise ValueError(f"data.sampler={sampler!r} is not known; use null or 'weighted'")
        if on_bad_image not in ("skip", "error"):
            raise ValueError(f"data.on_bad_image={on_bad_image!r} is not known; use 'skip' or 'error'")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={val_fraction} must be in [0, 1)")
        if fold is not None and (int(folds) < 2 or not 0 <= int(fold) < int(folds)):
            raise ValueError(
                f"data.fold={fold} with data.folds={folds}: need folds >= 2 and 0 <= fold < folds"
            )
        self.root = Path(root).expanduser()
        self.image_size = int(image_size)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.sampler, self.on_bad_image = sampler, on_bad_image
        # A name loads conf/augment/<name>.yaml (for Python users); Hydra passes the composed group.
        self.augment = (
            load_augmentation(augment, self.image_size, self.mean, self.std)
            if isinstance(augment, str)
            else augmentation_of(augment)
        )
        self._mixup: Any = None
        self.synthetic = dict(synthetic) if synthetic else None
        self._own_photos_said = False
        self._classes = list(classes) if classes is not None else None
        self.allow_leakage = bool(allow_leakage)
        self.file_list = Path(file_list).expanduser() if file_list else None
        self._listed: set[Path] | None = None
        self.file_list_left_out = 0
        self._listed_found = 0
        self.relabel = Path(relabel).expanduser() if relabel else None
        self._relabels: dict[Path, int] | None = None
        self.relabelled = 0
        self.train_set: NoodleImages | None = None
        self.val_set: NoodleImages | None = None
        self.test_set: NoodleImages | None = None
        self.folds, self.fold = int(folds), None if fold is None else int(fold)
        self.heldout_set: NoodleImages | None = None  # data.fold's images of train/ (cross-validation)
        self.cache = cache
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else self.root / CACHE_FOLDER
        self.decode, self.augment_on = decode, augment_on
        self._digests: dict[Path, str] = {}  # content hashes from the duplicate check, for the cache
        self._device_train: DeviceAugmentation | None = None  # augment_on=gpu: the stack after its Resize
        self._device_eval: DeviceAugmentation | None = None  # decode=gpu: the eval transform after its Resize
        self._resize: dict[bool, Any] = {}  # decode=gpu: training? -> the first Resize
        self.test_is_labelled = False
        self.report = ScanReport()
        self._scanned = False

    # ----------------------------------------------------------------------------- classes
    def prepare_data(self) -> None:
        """Render the embedded synthetic dataset on first use (data=synthetic), unless data.root is the
        user's own ImageFolder: then train on it, as data=noodles would (said in one log line). A data.root
        that is neither is refused by the renderer (NotSynthetic), untouched."""
        if self.synthetic is None:
            return
        from noodlenext.data.synthetic import looks_like_image_folder, marker_state, render_dataset

        if marker_state(self.root) is None and looks_like_image_folder(self.root):
            if self._own_photos_said:  # Lightning calls prepare_data again for fit and test
                return
            self._own_photos_said = True
            log.info(
                "data.root=%s is an ImageFolder of your own photos, not a synthetic render: training on "
                "them with this experiment's model and schedule, as data=noodles would (data.synthetic is "
                "not used)",
                self.root,
            )
            return
        render_dataset(self.root, **self.synthetic)

    @property
    def class_names(self) -> list[str]:
        """Display names in label order: given (from a checkpoint), else train/'s class folders."""
        if self._classes is None:
            self._classes = [display_name(p.name) for p in self._train_class_folders()]
        return list(self._classes)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def transform_config(self) -> dict[str, Any]:
        """What eval and predict need to rebuild the exact eval transform (stored in checkpoints)."""
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std)}

    def _train_class_folders(self) -> list[Path]:
        train_dir = self.root / "train"
        if not train_dir.is_dir():
            hint = " (data=synthetic renders one)" if not self.root.exists() else ""
            raise FileNotFoundError(
                f"{train_dir} does not exist: data.root must hold train/<class>/ folders of images{hint}"
            )
        folders = class_folders(train_dir)
        if len(folders) < 2:
            raise ValueError(f"{train_dir} has {len(folders)} class folder(s); a classifier needs at least 2")
        names = [display_name(p.name) for p in folders]
        if len(set(names)) != len(names):
            raise ValueError(f"{train_dir}: class folders {[p.name for p in folders]} repeat a class name")
        return folders

    # ----------------------------------------------------------------------------- scanning
    def _label_of(self, folder: Path) -> int:
        name = display_name(folder.name)
        if name not in self.class_names:
            raise ValueError(
                f"{folder}: class '{name}' is not one of the training classes {self.class_names}; "
                "rename the folder to a training class or remove it"
            )
        return self.class_names.index(name)

    def _scan_split(self, split_dir: Path, required: bool) -> list[tuple[Path, int]]:
        folders = class_folders(split_dir)
        labelled = [f for f in folders if f.name != UNKNOWN_FOLDER]
        if not labelled and split_dir.name == "test" and folders:
            images, others = list_files(split_dir / UNKNOWN_FOLDER)
            self.report.non_images += others
            candidates = [(p, UNLABELLED) for p in images]
        else:
            if split_dir.name == "test" and len(labelled) != len(folders):
                raise ValueError(
                    f"{split_dir}: mixes labelled class folders with {UNKNOWN_FOLDER}/; keep one"
                )
            candidates = []
            for folder in labelled:
                label = self._label_of(folder)
                images, others = list_files(folder)
                self.report.non_images += others
                if not images:
                    if required:
                        raise ValueError(
                            f"{folder} has no images: add images of '{display_name(folder.name)}' "
                            "or remove the folder"
                        )
                    self.report.empty_folders.append(folder)
                candidates += [(p, label) for p in images]
        candidates = self._apply_file_list(candidates)
        if split_dir.name != "test":
            candidates = self._apply_relabel(candidates)
        kept, checks = [], check_images(p for p, _ in candidates)
        for (path, label), (problem, (w, h)) in zip(candidates, checks, strict=True):
            if problem is None:
                kept.append((path, label))
                self.report.smaller_than_input += min(w, h) < self.image_size
            elif self.on_bad_image == "error":
                raise ValueError(f"{path}: {problem}. Fix or remove it, or set data.on_bad_image=skip")
            else:
                self.report.skipped.append((path, problem))
        if required:
            counts = np.bincount([label for _, label in kept], minlength=self.num_classes)
            for name, count in zip(self.class_names, counts, strict=True):
                if count == 0:
                    raise ValueError(f"{split_dir}: class '{name}' has no readable images")
        return kept

    def _read_file_list(self) -> set[Path]:
        """data.file_list: one path a line, relative to data.root (or absolute); `#` starts a comment."""
        if self._listed is None:
            if not self.file_list.is_file():
                raise FileNotFoundError(
                    f"data.file_list={self.file_list} does not exist; write one with "
                    f"`python -m noodlenext.data.check root={self.root} fix=list` or set data.file_list=null"
                )
            root = self.root.resolve()
            lines = (line.strip() for line in self.file_list.read_text().splitlines())
            self._listed = {(root / line).resolve() for line in lines if line and not line.startswith("#")}
            if not self._listed:
                raise ValueError(f"data.file_list={self.file_list} lists no files")
        return self._listed

    def _apply_file_list(self, candidates: list[tuple[Path, int]]) -> list[tuple[Path, int]]:
        """Keep only the listed images (data.file_list), counting the rest."""
        if self.file_list is None:
            return candidates
        listed = self._read_file_list()
        kept = [(p, label) for p, label in candidates if p.resolve() in listed]
        self.file_list_left_out += len(candidates) - len(kept)
        self._listed_found += len(kept)
        return kept

    def _read_relabel(self) -> dict[Path, int]:
        """data.relabel: `file,label` rows (a header row `file,label` is allowed); `#` starts a comment."""
        if self._relabels is None:
            import csv

            if not self.relabel.is_file():
                raise FileNotFoundError(
                    f"data.relabel={self.relabel} does not exist: give a CSV of file,label rows "
                    "(e.g. an improve run's relabel.csv) or set data.relabel=null"
                )
            root, out = self.root.resolve(), {}
            with self.relabel.open(newline="") as f:
                for n, row in enumerate(csv.reader(f), start=1):
                    if (
                        not row
                        or row[0].strip().startswith("#")
                        or [c.strip() for c in row] == ["file", "label"]
                    ):
                        continue
                    if len(row) != 2:
                        raise ValueError(
                            f"data.relabel={self.relabel}, line {n}: expected file,label; got {row}"
                        )
                    path, name = (root / row[0].strip()).resolve(), row[1].strip()
                    if name not in self.class_names:
                        raise ValueError(
                            f"data.relabel={self.relabel}, line {n}: '{name}' is not one of the classes "
                            f"{self.class_names}"
                        )
                    if path.is_relative_to(root / "test"):
                        raise ValueError(
                            f"data.relabel={self.relabel}, line {n}: {row[0].strip()} is a test image; "
                            "test labels are never changed (they are what every fix is measured on)"
                        )
                    out[path] = self.class_names.index(name)
            self._relabels = out
        return self._relabels

    def _apply_relabel(self, candidates: list[tuple[Path, int]]) -> list[tuple[Path, int]]:
        """Train the data.relabel images as their new class (the files stay where they are)."""
        if self.relabel is None:
            return candidates
        new = self._read_relabel()
        out = []
        for path, label in candidates:
            to = new.get(path.resolve(), label)
            self.relabelled += to != label
            out.append((path, to))
        return out

    def _check_duplicates(self, splits: dict[str, list[tuple[Path, int]]]) -> None:
        """The cheap part of `noodlenext.data.check`: SHA-256 of every image, judged by the doctor's own
        duplicate rule (rules.duplicate_groups). Refuses byte-identical images in test and train/val
        (test scores would be inflated) unless data.allow_leakage=true; warns about identical images
        under two classes and within train/val."""
        named = [(split, path, label) for split, samples in splits.items() for path, label in samples]
        if len(named) < 2:
            return
        digests = hash_files([p for _, p, _ in named])
        self._digests = {p: d for (_, p, _), d in zip(named, digests, strict=True)}  # data.cache reuses them
        groups = duplicate_groups(
            HashedImage(split, path, label, digest, labelled=label != UNLABELLED)
            for (split, path, label), digest in zip(named, digests, strict=True)
        )
        leaks = [g for g in groups if g.leaks_into_test]
        conflicts = [g for g in groups if g.label_conflict]
        copies = sum(g.extra_train_val_copies for g in groups)
        leaked = sum(len(g.in_test) for g in leaks)
        fix = f"python -m noodlenext.data.check root={self.root} fix=quarantine"
        if conflicts:
            log.warning(
                "%d image(s) appear under two classes (same bytes): %s; `%s` moves them aside",
                len(conflicts),
                "; ".join(" = ".join(str(im.name) for im in g.images) for g in conflicts[:5]),
                fix,
            )
        if copies:
            log.warning(
                "%d train/val file(s) are byte-identical copies of others; `%s` names them", copies, fix
            )
        if not leaks:
            return
        shown = "; ".join(" = ".join(str(im.name) for im in g.images) for g in leaks[:5]) + (
            f"; and {len(leaks) - 5} more" if len(leaks) > 5 else ""
        )
        message = f"{leaked} test image(s) are byte-identical to train/val images: {shown}"
        # An error leak has a labelled (scored) test copy; an unlabelled test set only gets a warning.
        if self.allow_leakage or not any(g.leak_severity == "error" for g in leaks):
            log.warning("%s (data.allow_leakage=%s)", message, self.allow_leakage)
            return
        raise ValueError(
            f"{message}. Test scores would be inflated. Take the copies out with `{fix}` "
            "(or fix=list, then data.file_list=<the list>), or set data.allow_leakage=true to go on anyway"
        )

    def _split_train(self, samples: list[tuple[Path, int]]) -> tuple[list, list]:
        """Stratified, seeded: the same fraction of every class goes to val."""
        rng = np.random.default_rng(self.split_seed)
        train, val = [], []
        for label in range(self.num_classes):
            mine = [s for s in samples if s[1] == label]
            order = rng.permutation(len(mine))
            n_val = (
                max(1, round(self.val_fraction * len(mine))) if self.val_fraction > 0 and len(mine) > 1 else 0
            )
            val += [mine[i] for i in order[:n_val]]
            train += [mine[i] for i in order[n_val:]]
        return train, val

    def _fold_split(self, samples: list[tuple[Path, int]]) -> tuple[list, list]:
        """(the other folds, fold `self.fold`): each class's images shuffled by split_seed and dealt
        round-robin into `folds` folds, so every fold has the same share of every class and all jobs of
        a cross-validation (same split_seed) agree on the folds."""
        rng = np.random.default_rng([self.split_seed, self.folds])
        rest, held = [], []
        for label in range(self.num_classes):
            mine = [s for s in samples if s[1] == label]
            if len(mine) < self.folds:
                raise ValueError(
                    f"data.folds={self.folds}: class '{self.class_names[label]}' has only {len(mine)} "
                    "training image(s); every fold needs one. Lower data.folds or add images"
                )
            for position, i in enumerate(rng.permutation(len(mine))):
                (held if position % self.folds == self.fold else rest).append(mine[i])
        return rest, held

    def _scan(self) -> None:
        if self._scanned:
            return
        tf_eval = eval_transform(self.image_size, self.mean, self.std)
        tf_train = self._train_transform(tf_eval)
        cache = self._cache_folder()
        train_dir, val_dir, test_dir = (self.root / s for s in ("train", "val", "test"))
        scanned: dict[str, list[tuple[Path, int]]] = {}
        if train_dir.is_dir():
            train = scanned["train"] = self._scan_split(train_dir, required=True)
            if self.fold is not None:
                train, held = self._fold_split(train)
                self.heldout_set = NoodleImages(held, tf_eval, cache)
            if val_dir.is_dir():
                val = scanned["val"] = self._scan_split(val_dir, required=False)
            else:
                train, val = self._split_train(train)
            self.train_set = NoodleImages(train, tf_train, cache)
            self.val_set = NoodleImages(val, tf_eval, cache)
        elif self._classes is None:
            self._train_class_folders()  # raises the clear "no train/" error
        if test_dir.is_dir():
            test = scanned["test"] = self._scan_split(test_dir, required=False)
            self.test_set = NoodleImages(test, tf_eval, cache)
            self.test_is_labelled = bool(test) and test[0][1] != UNLABELLED
        for line in self.report.lines(self.image_size):
            log.warning(line)
        if self.file_list is not None:
            log.info("data.file_list=%s left out %d image(s)", self.file_list, self.file_list_left_out)
            missing = len(self._read_file_list()) - self._listed_found
            if missing:
                log.warning(
                    "%d path(s) in data.file_list=%s are not images under %s (moved or renamed since the "
                    "list was written?)",
                    missing,
                    self.file_list,
                    self.root,
                )
        if self.relabel is not None:
            log.info("data.relabel=%s gave %d image(s) another class", self.relabel, self.relabelled)
        if "train" in scanned:  # prediction (test/ only, classes from a checkpoint) has nothing to leak from
            self._check_duplicates(scanned)
        for dataset in (self.train_set, self.val_set, self.test_set, self.heldout_set):
            if dataset is not None and dataset.cache is not None:
                dataset.cache.remember(self._digests)  # the files were hashed once already
        self._scanned = True

    def _train_transform(self, tf_eval: Any) -> Any:
        """The training set's per-image transform; with augment_on=gpu only its first Resize (then uint8),
        the rest kept for the device (and with decode=gpu the Resizes too, for the GPU decoder)."""
        tf_train = self.augment.train or tf_eval
        if self.augment_on == "gpu":
            resize, self._device_train = split_for_device(tf_train)
            tf_train = T.Compose([resize, T.PILToTensor()])
            if self.decode == "gpu":
                eval_resize, self._device_eval = split_for_device(tf_eval)
                self._resize = {True: resize, False: eval_resize}
        return tf_train

    def _cache_folder(self) -> Path | None:
        """data.cache=resized: the cache folder, created (a clear error where it cannot be written)."""
        if self.cache is None:
            return None
        try:
            # Entries only ever add files (<size>/<sha256[:2]>/<sha256>.npy, named by content), so any
            # folder will do; one that noodlenext creates (or finds empty) gets the cache tag.
            if not self.cache_dir.exists() or is_empty_dir(self.cache_dir):
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                (self.cache_dir / CACHE_TAG).write_text(CACHE_TAG_TEXT)
            with tempfile.TemporaryFile(dir=self.cache_dir):  # can we write there? (no name to collide)
                pass
        except OSError as e:
            raise ValueError(
                f"data.cache=resized: cannot write to the cache folder {self.cache_dir} ({e}); set "
                "data.cache_dir to a writable folder, or data.cache=none"
            ) from e
        if self.augment.train is not None and first_resize(self.augment.train) is None:
            log.warning(
                "data.cache=resized: the training stack does not start with a Resize (it crops the full "
                "image), so training images are decoded in full every epoch; val/test images are cached"
            )
        return self.cache_dir

    def setup(self, stage: str | None = None) -> None:
        if self.decode == "gpu":
            require_cuda()
        self._scan()
        if stage in (None, "fit") and self.train_set is None:
            raise FileNotFoundError(f"{self.root / 'train'} does not exist: nothing to train on")
        if stage == "test" and (self.test_set is None or not self.test_is_labelled):
            raise FileNotFoundError(f"{self.root / 'test'} has no labelled class folders to evaluate on")
        if stage in (None, "fit") and self.augment.mixup is not None and self._mixup is None:
            if self.batch_size % 2:
                raise ValueError(
                    f"data.batch_size={self.batch_size}: mixup/cutmix (data.augment.mixup) pairs the images "
                    "of a batch and needs an even batch size"
                )
            self._mixup = self.augment.mixup(num_classes=self.num_classes)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """data.decode=gpu: the batch's JPEG bytes decoded (and resized) on the training device."""
        if self.decode != "gpu":
            return batch
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cuda")
        return self.decode_on_device(batch, device, training=trainer is not None and trainer.training)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """On the device: the training stack after its Resize (augment_on=gpu) or the eval transform after
        its Resize (decode=gpu), then mixup/cutmix, for training batches only: labels become (B, classes)
        mixtures."""
        trainer = self.trainer
        training = trainer is not None and trainer.training
        mix = self._mixup is not None and training
        if not mix and (self._device_train if training else self._device_eval) is None:
            return batch  # nothing to do on the device
        images, labels = batch
        images = self.augment_on_device(images, training)
        if mix:
            return self._mixup(images, labels)
        return images, labels

    def decode_on_device(self, batch: Any, device: str | torch.device, training: bool) -> tuple:
        """decode=gpu: a loader batch (bytes, orientations, labels) -> ((B, 3, H, W) uint8 on `device`,
        labels), resized to the training (training=True) or eval stack's first Resize."""
        data, orientations, labels = batch
        return decode_batch(data, orientations, self._resize[bool(training)], device), labels

    def augment_on_device(self, images: torch.Tensor, training: bool) -> torch.Tensor:
        """What is left of the transform on the device: the training stack after its Resize (augment_on=gpu),
        per image; for eval batches of decode=gpu, the eval transform after its Resize; else unchanged."""
        if training and self._device_train is not None:
            return self._device_train(images)
        if not training and self._device_eval is not None:
            return self._device_eval(images)
        return images

    @property
    def class_counts(self) -> list[int]:
        """Training images per class, after the split and skips."""
        self._scan()
        labels = [label for _, label in self.train_set.samples] if self.train_set else []
        return np.bincount(labels, minlength=self.num_classes).tolist()

    # ----------------------------------------------------------------------------- loaders
    def _loader(
        self, dataset: Dataset, shuffle: bool = False, sampler: Any = None, train: bool = False
    ) -> DataLoader:
        collate = None
        if self.decode == "gpu":  # workers read bytes; on_before_batch_transfer decodes on the GPU
            dataset, collate = EncodedImages(dataset.samples, self._resize[train]), collate_encoded
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            collate_fn=collate,
            shuffle=shuffle,
            sampler=sampler,
            # A short last training batch adds noise and makes torch.compile recompile for its shape.
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        if self.sampler == "weighted":
            counts = np.asarray(self.class_counts, dtype=np.float64)
            weights = [1.0 / counts[label] for _, label in self.train_set.samples]
            generator = torch.Generator().manual_seed(self.split_seed)
            sampler = WeightedRandomSampler(weights, len(weights), replacement=True, generator=generator)
            return self._loader(self.train_set, sampler=sampler, train=True)
        return self._loader(self.train_set, shuffle=True, train=True)

    # Each val/test image on exactly one process, so metrics under DDP count it once (no padding).
    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, sampler=ShardedEvalSampler(self.val_set))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, sampler=ShardedEvalSampler(self.test_set))

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

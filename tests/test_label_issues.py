"""Which labels are wrong? k-fold splits, out-of-fold predictions, cleanlab, and the fixes it feeds."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import snapshot, user_photos
from test_train_e2e import SHRUNK, run_module

from noodlenext.data.check import run as run_check
from noodlenext.data.confident_learning import (
    CLEAN_LIST,
    ISSUES_CSV,
    ISSUES_LIST,
    OOF_CSV,
    read_out_of_fold,
    write_label_issues,
    write_out_of_fold,
)
from noodlenext.data.datamodule import NoodleDataModule
from noodlenext.data.label_issues import main as label_issues_main


def datamodule(root: Path, **kwargs: object) -> NoodleDataModule:
    kwargs = {"image_size": 16, "augment": "none", "num_workers": 0, "batch_size": 8, **kwargs}
    dm = NoodleDataModule(root, **kwargs)
    dm.setup("fit")
    return dm


def names(dataset: object) -> set[str]:
    return {str(p) for p, _ in dataset.samples} if dataset is not None else set()


# --- folds -----------------------------------------------------------------------------------------


def test_folds_are_stratified_disjoint_seeded_and_cover_train(make_tree) -> None:
    root = make_tree({"train": 10})
    everything = {str(p) for p in (root / "train").rglob("*.png")}
    held = []
    for fold in range(5):
        dm = datamodule(root, folds=5, fold=fold, val_fraction=0.25)
        out = names(dm.heldout_set)
        assert not out & names(dm.train_set) and not out & names(dm.val_set)  # never trained or validated on
        assert names(dm.train_set) | names(dm.val_set) | out == everything
        assert np.bincount([label for _, label in dm.heldout_set.samples]).tolist() == [2, 2, 2]  # stratified
        held.append(out)
    assert set.union(*held) == everything and sum(len(h) for h in held) == len(everything)  # each image once
    assert names(datamodule(root, folds=5, fold=3).heldout_set) == held[3]  # seeded: every job agrees
    assert names(datamodule(root, folds=5, fold=3, split_seed=7).heldout_set) != held[3]
    assert datamodule(root).heldout_set is None  # no fold: nothing held out


def test_fold_settings_are_checked(make_tree) -> None:
    root = make_tree({"train": 3})
    with pytest.raises(ValueError, match=r"data.fold=5 with data.folds=5"):
        NoodleDataModule(root, folds=5, fold=5)
    with pytest.raises(ValueError, match=r"class 'spaghetti' has only 3 training image\(s\)"):
        datamodule(root, folds=4, fold=0)


def test_crossval_experiment_sweeps_every_fold(compose_cfg) -> None:
    cfg = compose_cfg("train", ["experiment=crossval"])
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.task_name == "crossval"
    assert cfg.hydra.sweeper.params["data.fold"] == "range(5)"
    assert cfg.data.fold is None and cfg.data.folds == 5
    assert cfg.callbacks.heatmap_gallery is None and cfg.callbacks.out_of_fold is not None
    assert cfg.hydra.callbacks.label_issues._target_ == "noodlenext.callbacks.crossval.CrossvalLabelIssues"
    cfg = compose_cfg("train", ["experiment=[quickstart,crossval]", "data.folds=3"])
    assert cfg.hydra.sweeper.params["data.fold"] == "range(3)" and cfg.model.name.startswith("convnext_atto")


# --- confident learning on a real (tiny) cross-validation --------------------------------------------


def plant_flips(root: Path, moves: dict[str, str]) -> set[str]:
    """Move train images to another class folder: their given label becomes wrong (the colour stays)."""
    planted = set()
    for src, cls in moves.items():
        dst = root / "train" / cls / f"flipped_{Path(src).parent.name}_{Path(src).name}"
        shutil.move(root / "train" / src, dst)
        planted.add(dst.relative_to(root).as_posix())
    return planted


def cross_validate(root: Path, sweep: Path, folds: int = 3, split_seed: int = 42) -> None:
    """A real k-fold training: per fold, a softmax regression on each image's mean colour (numpy gradient
    descent), trained on the other folds, writes the held-out fold's probabilities as a crossval job does."""
    for fold in range(folds):
        dm = datamodule(root, folds=folds, fold=fold, val_fraction=0.0, split_seed=split_seed)

        def features(dataset: object) -> np.ndarray:
            x = np.stack([dataset[i][0].mean(dim=(1, 2)).numpy() for i in range(len(dataset))])
            return np.hstack([x, np.ones((len(x), 1))])  # + a bias

        x, y = features(dm.train_set), np.array([label for _, label in dm.train_set.samples])
        onehot = np.eye(dm.num_classes)[y]
        w = np.zeros((x.shape[1], dm.num_classes))
        for _ in range(2000):
            w -= 0.5 * x.T @ (softmax(x @ w) - onehot) / len(x)
        probs = softmax(features(dm.heldout_set) @ w)
        write_out_of_fold(
            sweep / str(fold), dm.heldout_set.samples, probs, dm.class_names, root, fold, folds, dm.file_list
        )


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def flipped(make_tree, tmp_path: Path) -> tuple[Path, Path, set[str]]:
    """60 train images (3 classes), 3 of them (5%) under a wrong class, cross-validated in 3 folds."""
    root = make_tree({"train": 20, "test": 2})
    planted = plant_flips(
        root, {"0_spaghetti/003.png": "2_udon", "1_ramen/011.png": "0_spaghetti", "2_udon/017.png": "1_ramen"}
    )
    sweep = tmp_path / "multirun"
    cross_validate(root, sweep)
    return root, sweep, planted


def test_out_of_fold_predictions_cover_train_once(flipped) -> None:
    root, sweep, _ = flipped
    oof = read_out_of_fold(sweep)
    assert oof.root == root.resolve() and oof.classes == ["spaghetti", "ramen", "udon"]
    assert sorted(oof.files) == sorted(
        p.relative_to(root).as_posix() for p in (root / "train").rglob("*.png")
    )
    assert oof.probs.shape == (60, 3) and np.allclose(oof.probs.sum(axis=1), 1)
    assert sorted(set(oof.folds_of.tolist())) == [0, 1, 2] and oof.missing_folds == []


def test_cleanlab_finds_the_planted_flips(flipped, capsys) -> None:
    root, sweep, planted = flipped
    assert label_issues_main([str(sweep)]) == 0
    rows = list(csv.DictReader((sweep / ISSUES_CSV).open()))
    flagged = {r["file"] for r in rows}
    assert flagged == planted  # every flip found, nothing else
    likely = {r["file"]: (r["given_label"], r["likely_label"]) for r in rows}
    assert likely["train/2_udon/flipped_0_spaghetti_003.png"] == ("udon", "spaghetti")
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores) and max(scores) < 0.5  # ranked by self-confidence, most suspect first
    listed = [line for line in (sweep / ISSUES_LIST).read_text().splitlines() if not line.startswith("#")]
    assert set(listed) == planted
    out = capsys.readouterr().out
    assert "3 likely label issue(s) of 60" in out and "fix=quarantine fix_kinds=[] files=" in out

    # clean_files.txt: every image but the flagged, test/ included, for data.file_list=
    dm = datamodule(root, file_list=sweep / CLEAN_LIST, val_fraction=0.0)
    assert len(dm.train_set) == 57 and len(dm.test_set) == 6
    assert not {Path(p).relative_to(root).as_posix() for p in names(dm.train_set)} & planted


def test_the_data_doctor_quarantines_the_flagged_files(flipped, compose_cfg) -> None:
    root, sweep, planted = flipped
    write_label_issues(sweep)
    qdir = root.parent / "quarantine"
    cfg = compose_cfg(
        "check",
        [
            f"root={root}",
            "fix=quarantine",
            "fix_kinds=[]",
            f"files={sweep / ISSUES_LIST}",
            f"quarantine_dir={qdir}",
            "near_threshold=null",
            "progress=false",
        ],
    )
    run_check(cfg)
    records = [json.loads(line) for line in (qdir / "moves.jsonl").read_text().splitlines()]
    moves = [r for r in records if r["op"] == "move"]
    assert {m["from"] for m in moves} == planted  # logged relative to the dataset root
    assert {m["reason"] for m in moves} == {"listed"}
    assert all(not (root / p).exists() and (qdir / p).is_file() for p in planted)
    assert sum(1 for _ in (root / "train").rglob("*.png")) == 57


def test_gathering_refuses_overlapping_folds_and_warns_about_missing_ones(flipped, caplog) -> None:
    _, sweep, _ = flipped
    lost = json.loads((sweep / "2" / "oof_probs.json").read_text())["images"]
    shutil.rmtree(sweep / "2")  # a failed job
    with caplog.at_level(logging.WARNING):
        oof = read_out_of_fold(sweep)
    assert oof.missing_folds == [2] and len(oof.files) == 60 - lost and "folds [2] of 3" in caplog.text
    shutil.copytree(sweep / "1", sweep / "1_again")
    with pytest.raises(ValueError, match="both hold out fold 1"):
        read_out_of_fold(sweep)


def test_label_issues_command_names_what_is_missing(tmp_path: Path, capsys) -> None:
    assert label_issues_main([str(tmp_path)]) == 2
    assert "experiment=crossval" in capsys.readouterr().err
    assert label_issues_main([str(tmp_path / "nope")]) == 2


# --- the real thing: experiment=crossval ----------------------------------------------------------------


@pytest.mark.slow
def test_crossval_multirun_writes_out_of_fold_predictions_and_label_issues(tmp_path: Path) -> None:
    """[quickstart,crossval] on a user's ImageFolder (train/ and test/ only): it trains on their photos
    and leaves every byte of them as it was (issue 21: the synthetic experiment used to re-render it)."""
    sweep, root = tmp_path / "multirun", user_photos(tmp_path / "my_noodles", ("train", "test"), per_class=6)
    before = snapshot(root)
    run_module(
        "noodlenext.train",
        "experiment=[quickstart,crossval]",
        "data.folds=2",
        "llm=none",
        "logger=none",
        f"data.root={root}",
        *SHRUNK,
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert snapshot(root) == before
    oof = read_out_of_fold(sweep)  # the jobs' held-out predictions, from their best checkpoints
    train = sorted(p.relative_to(root).as_posix() for p in (root / "train").rglob("*.jpg"))
    assert sorted(oof.files) == train and oof.folds == 2 and oof.missing_folds == []
    for job in ("0", "1"):
        assert (sweep / job / OOF_CSV).is_file() and (sweep / job / "metrics.json").is_file()
    assert (sweep / ISSUES_CSV).is_file() and (sweep / CLEAN_LIST).is_file()  # the Hydra callback ran
    assert "| fold |" in (sweep / "comparison.md").read_text()


def test_repeated_cross_validations_are_averaged(flipped, tmp_path: Path, capsys) -> None:
    """A second cross-validation of the same data with other folds: each image's out-of-fold
    probabilities are the mean of the two (an ensemble of models that never trained on it), and the
    command writes the list from both; a repeat of other data is refused."""
    from noodlenext.data.confident_learning import average_out_of_fold

    root, sweep, planted = flipped
    again = tmp_path / "again"
    cross_validate(root, again, split_seed=7)
    a, b = read_out_of_fold(sweep), read_out_of_fold(again)
    assert sorted(a.files) == sorted(b.files) and not np.array_equal(
        a.folds_of, b.folds_of[[b.files.index(f) for f in a.files]]
    )
    mean = average_out_of_fold([a, b])
    at = {f: i for i, f in enumerate(b.files)}
    assert np.allclose(mean.probs, (a.probs + b.probs[[at[f] for f in a.files]]) / 2)
    assert label_issues_main([str(sweep), str(again)]) == 0
    head = (sweep / ISSUES_LIST).read_text().splitlines()[0]
    assert "averaged over 2 cross-validations" in head
    flagged = {r["file"] for r in csv.DictReader((sweep / ISSUES_CSV).open())}
    assert planted <= flagged
    other = tmp_path / "other"
    shutil.copytree(root, other)
    cross_validate(other, tmp_path / "other_cv")
    with pytest.raises(ValueError, match="only repeats of one cross-validation's data can be averaged"):
        average_out_of_fold([a, read_out_of_fold(tmp_path / "other_cv")], ["first", "other"])

"""noodlenext never deletes or overwrites a file it did not create (issue 21): every place a user names
(data.root, data.cache_dir, input=, output=, report=, file_list=, quarantine_dir=, chat.transcript=,
--out-dir) is checked with real files, through the real commands where they can be called in-process."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import snapshot, user_photos, write_image

from noodlenext.chat import chat
from noodlenext.core.ownership import OUTPUT_MARKER, NotOurs, claim_folder, guard_file, new_folder
from noodlenext.data.cache import CACHE_TAG
from noodlenext.data.check import run as check_run
from noodlenext.data.datamodule import NoodleDataModule
from noodlenext.data.label_issues import main as label_issues_main
from noodlenext.data.synthetic import NotSynthetic
from noodlenext.explain.__main__ import explain_images
from noodlenext.predict import predict

MINE = b"my own notes, not a noodlenext file\n"


# ------------------------------------------------------------------------------ the helpers
def test_claim_folder_creates_takes_empty_reuses_its_own_and_refuses_the_rest(tmp_path: Path) -> None:
    new = claim_folder(tmp_path / "new" / "out", "output")
    assert (new / OUTPUT_MARKER).is_file()
    assert claim_folder(new, "output") == new  # an earlier claim's folder: reused
    (tmp_path / "empty").mkdir()
    assert (claim_folder(tmp_path / "empty", "output") / OUTPUT_MARKER).is_file()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / ".hidden").write_bytes(MINE)  # even a hidden file makes it somebody's
    with pytest.raises(NotOurs, match=r"output=.*theirs.*nothing in it was changed"):
        claim_folder(theirs, "output")
    assert snapshot(theirs) == {".hidden": MINE}
    (tmp_path / "a_file").write_bytes(MINE)
    with pytest.raises(NotOurs, match="is a file"):
        claim_folder(tmp_path / "a_file", "output")


def test_guard_file_lets_through_only_a_missing_file_or_one_that_starts_like_ours(tmp_path: Path) -> None:
    assert guard_file(tmp_path / "new.csv", "output", r"file,label,") == tmp_path / "new.csv"
    ours = tmp_path / "ours.csv"
    ours.write_text("file,label,confidence\na.jpg,ramen,0.9\n")
    assert guard_file(ours, "output", r"file,label,") == ours
    theirs = tmp_path / "theirs.csv"
    theirs.write_bytes(MINE)
    with pytest.raises(NotOurs, match=r"output=.*theirs.csv exists and is not a file noodlenext wrote"):
        guard_file(theirs, "output", r"file,label,")
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(NotOurs):
        guard_file(tmp_path / "folder.csv", "output", r"")
    link = tmp_path / "link.csv"
    link.symlink_to(ours)  # a link may point at anything of the user's: never written through
    with pytest.raises(NotOurs):
        guard_file(link, "output", r"file,label,")


def test_new_folder_never_reuses_a_folder_that_exists(tmp_path: Path) -> None:
    (tmp_path / "sessions").mkdir()
    (tmp_path / "sessions" / "notes.txt").write_bytes(MINE)
    first, second = new_folder(tmp_path / "sessions"), new_folder(tmp_path / "sessions")
    assert (first.name, second.name) == ("sessions-1", "sessions-2")
    assert (tmp_path / "sessions" / "notes.txt").read_bytes() == MINE


# ------------------------------------------------------------------------------ data.root, data.cache_dir
SYNTHETIC = {"images_per_class": 6, "image_size": 32}


def test_a_synthetic_experiment_on_a_users_imagefolder_trains_on_it_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = user_photos(tmp_path / "my_noodles", ("train", "val", "test"))
    before = snapshot(root)
    dm = NoodleDataModule(root, image_size=32, num_workers=0, augment="none", synthetic=SYNTHETIC)
    with caplog.at_level(logging.INFO, logger="noodlenext.data.datamodule"):
        dm.prepare_data()
    said = [r.getMessage() for r in caplog.records if "ImageFolder of your own photos" in r.getMessage()]
    assert len(said) == 1 and str(root) in said[0] and "data=noodles" in said[0]
    dm.setup("fit")
    assert dm.class_names == ["ramen", "udon"] and len(dm.train_set) == 4 and len(dm.val_set) == 4
    assert snapshot(root) == before


def test_a_data_root_that_is_neither_is_refused_with_the_layout_expected(tmp_path: Path) -> None:
    root = tmp_path / "holiday"
    write_image(root / "beach.jpg")
    (root / "notes.txt").write_bytes(MINE)
    before = snapshot(root)
    dm = NoodleDataModule(root, image_size=32, num_workers=0, augment="none", synthetic=SYNTHETIC)
    with pytest.raises(NotSynthetic) as caught:
        dm.prepare_data()
    message = str(caught.value)
    assert str(root) in message and "train/<class>/*.jpg" in message and "test/unknown/" in message
    assert "remove" not in message.lower() and "delete" not in message.lower()
    assert snapshot(root) == before


def test_the_resized_cache_only_adds_its_own_files_to_a_users_folder(tmp_path: Path) -> None:
    root = user_photos(tmp_path / "my_noodles")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "notes.txt").write_bytes(MINE)
    plain = {"image_size": 32, "num_workers": 0, "augment": "none", "cache": "resized"}
    dm = NoodleDataModule(root, cache_dir=scratch, **plain)
    dm.setup("fit")
    list(dm.train_dataloader())
    assert (scratch / "notes.txt").read_bytes() == MINE and not (scratch / CACHE_TAG).exists()
    assert len(list(scratch.rglob("*.npy"))) == len(dm.train_set) > 0
    fresh = NoodleDataModule(root, **plain)
    fresh.setup("fit")  # the default folder, created by noodlenext: tagged as a cache
    assert (root / ".noodlenext_cache" / CACHE_TAG).read_text().startswith("Signature: 8a477f597d28d172")


# ------------------------------------------------------------------------------ the commands' outputs
def test_predict_never_overwrites_a_users_file_and_refuses_before_any_work(
    tmp_path: Path, tiny_checkpoint: Path, compose_cfg
) -> None:
    photos = user_photos(tmp_path / "photos", ("test",))
    theirs = tmp_path / "preds.csv"
    theirs.write_bytes(MINE)
    overrides = [f"ckpt_path={tiny_checkpoint}", f"input={photos}", "device=cpu"]
    with pytest.raises(NotOurs, match="output="):
        predict(compose_cfg("predict", [*overrides, f"output={theirs}"]))
    assert theirs.read_bytes() == MINE
    ours = tmp_path / "ours.csv"
    predict(compose_cfg("predict", [*overrides, f"output={ours}"]))
    predict(compose_cfg("predict", [*overrides, f"output={ours}"]))  # its own CSV: replaced
    assert ours.read_text().startswith("file,label,confidence,") and len(ours.read_text().splitlines()) == 5


def test_explain_fills_only_a_new_empty_or_earlier_explain_folder(
    tmp_path: Path, tiny_checkpoint: Path, compose_cfg
) -> None:
    photos = user_photos(tmp_path / "photos", ("test",), per_class=1)
    overrides = [f"ckpt_path={tiny_checkpoint}", f"input={photos}", "device=cpu", "method=gradcam"]
    with pytest.raises(NotOurs, match="output="):  # the photos' own folder: never filled with overlays
        explain_images(compose_cfg("explain", [*overrides, f"output={photos}"]))
    out = tmp_path / "overlays"
    explain_images(compose_cfg("explain", [*overrides, f"output={out}"]))
    explain_images(compose_cfg("explain", [*overrides, f"output={out}"]))  # its own folder again: fine
    assert len(json.loads((out / "facts.json").read_text())) == 2
    assert sorted(p.name for p in photos.rglob("*")) == ["IMG_0000.jpg"] * 2 + ["ramen", "test", "udon"]


def test_the_data_doctor_never_replaces_a_users_report_list_or_move_log(tmp_path: Path, compose_cfg) -> None:
    root = user_photos(tmp_path / "my_noodles")
    theirs = tmp_path / "mine.txt"
    theirs.write_bytes(MINE)
    base = [f"root={root}", "image_size=16", "progress=false", "near_threshold=null"]
    for option in ("report", "file_list"):
        with pytest.raises(NotOurs, match=f"{option}="):
            check_run(compose_cfg("check", [*base, "fix=list", f"{option}={theirs}"]))
    qdir = tmp_path / "q"
    qdir.mkdir()
    (qdir / "moves.jsonl").write_bytes(MINE)
    with pytest.raises(NotOurs, match="quarantine_dir="):
        check_run(compose_cfg("check", [*base, "fix=quarantine", f"quarantine_dir={qdir}"]))
    assert theirs.read_bytes() == MINE and (qdir / "moves.jsonl").read_bytes() == MINE
    listed = tmp_path / "clean.txt"
    for _ in range(2):  # its own list and report: replaced
        check_run(compose_cfg("check", [*base, "fix=list", f"file_list={listed}", f"report={theirs}.json"]))
    assert listed.read_text().startswith("# noodlenext data check of")


def test_label_issues_refuses_an_out_dir_holding_a_users_file_of_the_same_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "clean_files.txt").write_bytes(MINE)
    code = label_issues_main([str(tmp_path / "no_sweep"), "--out-dir", str(out)])
    assert code == 2 and "--out-dir=" in capsys.readouterr().err
    assert snapshot(out) == {"clean_files.txt": MINE}


def test_the_chat_never_saves_over_a_users_file_and_says_so_before_the_analysis(
    tmp_path: Path, tiny_checkpoint: Path, compose_cfg
) -> None:
    photo = write_image(tmp_path / "bowl.jpg", (40, 40))
    theirs = tmp_path / "notes.json"
    theirs.write_bytes(MINE)
    cfg = compose_cfg("chat", [f"ckpt_path={tiny_checkpoint}", f"image={photo}", f"chat.transcript={theirs}"])
    with pytest.raises(NotOurs, match="chat.transcript="):
        chat(cfg, questions=[])
    assert theirs.read_bytes() == MINE
    assert not (tmp_path / "run").exists()  # refused before anything was computed or written


def test_a_sweep_comparison_replaces_only_its_own_thumbnails(tmp_path: Path) -> None:
    from noodlenext.callbacks.sweep_comparison import THUMBS_DIR, save_disagreements

    thumbs = tmp_path / THUMBS_DIR
    write_image(thumbs / "0_a_0.png")  # a thumbnail of the last comparison: replaced
    write_image(thumbs / "holiday.png")
    write_image(thumbs / "0_a_0_edited.png")
    save_disagreements(tmp_path, [])
    assert sorted(p.name for p in thumbs.iterdir()) == ["0_a_0_edited.png", "holiday.png"]

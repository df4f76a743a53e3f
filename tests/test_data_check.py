"""The data doctor: each planted problem is found and names its files, a clean tree is clean, fixes
never delete, and the data module refuses train/test leakage."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import run_main, write_image
from PIL import ExifTags, Image

from noodlenext.data.check import run
from noodlenext.data.datamodule import NoodleDataModule
from noodlenext.data.fingerprints import (
    HASH_CHUNK,
    NEAR_SIMILARITY,
    NEAR_THRESHOLD,
    content_hash,
    hash_words,
    near_pairs,
    phash,
)
from noodlenext.data.fixes import default_quarantine_dir, quarantine, undo_quarantine, write_file_list
from noodlenext.data.rules import CheckReport, check_dataset
from noodlenext.data.scan import inspect_file

SIZE = 32  # the "model input size" for these trees: the default 40x32 images are not too small


def smooth_image(path: Path, seed: int, size: tuple[int, int] = (96, 80), fmt: str | None = None) -> Path:
    """A photo-like image (smooth blobs): pHash needs low-frequency structure, which noise lacks."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), "RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    small.resize(size, Image.Resampling.BICUBIC).save(path, fmt)
    return path


def near_copy(src: Path, dst: Path) -> Path:
    """Half the size, re-encoded as JPEG q=70: other bytes, the same picture."""
    with Image.open(src) as im:
        copy = im.convert("RGB").resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR)
    dst.parent.mkdir(parents=True, exist_ok=True)
    copy.save(dst, "JPEG", quality=70)
    return dst


def clean_tree(root: Path, counts: dict[str, int] | None = None, test: int = 2) -> Path:
    counts = counts or {"0_spaghetti": 4, "1_ramen": 4, "2_udon": 4}
    for c, (cls, n) in enumerate(counts.items()):
        for i in range(n):
            smooth_image(root / "train" / cls / f"{i:03d}.png", seed=100 * c + i)
        for i in range(test):
            smooth_image(root / "test" / cls / f"t{i:03d}.png", seed=10_000 + 100 * c + i)
    return root


@pytest.fixture(scope="module")
def problems(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CheckReport]:
    """One tree with every problem planted once, checked once."""
    root = clean_tree(
        tmp_path_factory.mktemp("problems") / "noodles", {"0_spaghetti": 3, "1_ramen": 5, "2_udon": 10}
    )
    train, test = root / "train", root / "test"
    (train / "1_ramen" / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(2000))
    write_image(train / "1_ramen" / "truncated.jpg", size=(160, 120))
    data = (train / "1_ramen" / "truncated.jpg").read_bytes()
    (train / "1_ramen" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (train / "2_udon" / "notes.txt").write_text("where I got these")
    smooth_image(train / "2_udon" / "photo.dat", seed=7, fmt="PNG")  # an image the data module ignores
    write_image(train / "2_udon" / "tiny.png", size=(16, 16), seed=1)
    shutil.copy(train / "2_udon" / "000.png", train / "2_udon" / "000_copy.png")  # exact duplicate
    near_copy(train / "2_udon" / "001.png", train / "2_udon" / "001_small.jpg")  # near duplicate
    shutil.copy(train / "2_udon" / "002.png", test / "2_udon" / "leak_exact.png")  # exact leakage
    near_copy(train / "2_udon" / "003.png", test / "2_udon" / "leak_near.jpg")  # near leakage
    shutil.copy(
        train / "0_spaghetti" / "000.png", train / "1_ramen" / "really_spaghetti.png"
    )  # label conflict
    smooth_image(train / "2_udon" / "panorama.png", seed=8, size=(160, 40))
    smooth_image(train / "2_udon" / "misnamed.jpg", seed=9, fmt="PNG")
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # rotate 90 degrees to display
    with Image.open(smooth_image(train / "2_udon" / "rotated.png", seed=10)) as im:
        im.convert("RGB").save(train / "2_udon" / "rotated.jpg", exif=exif)
    (train / "2_udon" / "rotated.png").unlink()
    return root, check_dataset(root, image_size=SIZE, workers=2)


def _found(report: CheckReport, kind: str) -> list[list[str]]:
    return [f.files for f in report.findings if f.kind == kind]


# ----------------------------------------------------------------------------------------- finding
def test_clean_tree_gets_a_clean_report(tmp_path: Path) -> None:
    report = check_dataset(clean_tree(tmp_path / "noodles"), image_size=SIZE)
    assert report.clean, [f.message for f in report.findings]
    assert report.worst() is None
    stats = report.stats()
    assert set(stats) == {"train", "test"}
    spaghetti = stats["train"]["classes"]["spaghetti"]
    assert spaghetti["count"] == 4 and spaghetti["share"] == pytest.approx(1 / 3)
    assert spaghetti["median_size"] == [96, 80] and spaghetti["formats"] == {"PNG": 4}
    assert spaghetti["modes"] == {"RGB": 4} and spaghetti["smallest"]["size"] == [96, 80]


def test_unreadable_and_truncated_files(problems) -> None:
    _, report = problems
    assert sorted(_found(report, "unreadable")) == [
        ["train/1_ramen/corrupt.jpg"],
        ["train/1_ramen/truncated.jpg"],
    ]
    assert all(f.severity == "error" for f in report.findings if f.kind == "unreadable")


def test_non_image_files_say_whether_they_are_images(problems) -> None:
    _, report = problems
    found = {f.files[0]: f.message for f in report.findings if f.kind == "non_image"}
    assert set(found) == {"train/2_udon/notes.txt", "train/2_udon/photo.dat"}
    assert "not an image" in found["train/2_udon/notes.txt"]
    assert "PNG image" in found["train/2_udon/photo.dat"] and ".png" in found["train/2_udon/photo.dat"]


def test_images_below_the_input_size(problems) -> None:
    _, report = problems
    assert _found(report, "too_small") == [["train/2_udon/tiny.png"]]


def test_exact_duplicate_within_a_split(problems) -> None:
    _, report = problems
    (finding,) = [f for f in report.findings if f.kind == "exact_duplicate"]
    assert finding.files == ["train/2_udon/000.png", "train/2_udon/000_copy.png"]
    assert finding.remove == ["train/2_udon/000_copy.png"]  # the first (by path) stays


def test_near_duplicate_within_a_split(problems) -> None:
    _, report = problems
    (finding,) = [f for f in report.findings if f.kind == "near_duplicate"]
    assert finding.files == ["train/2_udon/001.png", "train/2_udon/001_small.jpg"]
    assert finding.details["max_distance"] <= NEAR_THRESHOLD
    assert finding.details["min_similarity"] >= NEAR_SIMILARITY


def test_train_test_leakage_exact_and_near(problems) -> None:
    _, report = problems
    leaks = {f.details["match"]: f for f in report.findings if f.kind == "leakage"}
    assert leaks["exact"].files == ["train/2_udon/002.png", "test/2_udon/leak_exact.png"]
    assert leaks["near"].files == ["train/2_udon/003.png", "test/2_udon/leak_near.jpg"]
    assert all(f.severity == "error" and f.remove == [f.files[0]] for f in leaks.values())  # train side goes


def test_label_conflict(problems) -> None:
    _, report = problems
    (finding,) = [f for f in report.findings if f.kind == "label_conflict"]
    assert finding.files == ["train/0_spaghetti/000.png", "train/1_ramen/really_spaghetti.png"]
    assert finding.details["classes"] == ["ramen", "spaghetti"] and finding.remove == finding.files


def test_class_imbalance(problems) -> None:
    _, report = problems
    (finding,) = [f for f in report.findings if f.kind == "class_imbalance"]
    assert finding.details["split"] == "train" and "data.sampler=weighted" in finding.message
    assert finding.files == ["train/spaghetti", "train/ramen", "train/udon"]


def test_extreme_aspect_exif_orientation_and_wrong_extension(problems) -> None:
    _, report = problems
    assert _found(report, "extreme_aspect") == [["train/2_udon/panorama.png"]]
    assert _found(report, "exif_orientation") == [["train/2_udon/rotated.jpg"]]
    assert _found(report, "wrong_extension") == [["train/2_udon/misnamed.jpg"]]


def test_nothing_else_is_flagged(problems) -> None:
    _, report = problems
    expected = {
        "unreadable": 2,
        "non_image": 2,
        "too_small": 1,
        "exact_duplicate": 1,
        "near_duplicate": 1,
        "leakage": 2,
        "label_conflict": 1,
        "class_imbalance": 1,
        "extreme_aspect": 1,
        "exif_orientation": 1,
        "wrong_extension": 1,
    }
    assert dict(report.kinds()) == expected
    assert report.findings[0].severity == "error"  # most severe first


def test_size_by_class_flags_a_resolution_shortcut(tmp_path: Path) -> None:
    root = tmp_path / "noodles"
    for i in range(3):
        smooth_image(root / "train" / "ramen" / f"{i}.png", seed=i, size=(150, 150))
        smooth_image(root / "train" / "spaghetti" / f"{i}.png", seed=50 + i, size=(64, 64))
    report = check_dataset(root, image_size=SIZE)
    assert dict(report.kinds()) == {"size_by_class": 1}


def test_missing_split_folders_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no train/, val/ or test/"):
        check_dataset(tmp_path)


# ----------------------------------------------------------------------------------------- hashing
def test_near_pairs_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    base = [int.from_bytes(rng.bytes(8), "big") for _ in range(60)]
    hashes = base + [h ^ (1 << int(rng.integers(64))) ^ (1 << int(rng.integers(64))) for h in base[:10]]
    i, j, d = near_pairs(hash_words(hashes), 12, block_elements=64)  # small blocks: many block edges
    brute = {
        (a, b): bin(hashes[a] ^ hashes[b]).count("1")
        for a in range(len(hashes))
        for b in range(a + 1, len(hashes))
        if bin(hashes[a] ^ hashes[b]).count("1") <= 12
    }
    assert dict(zip(zip(i.tolist(), j.tolist(), strict=True), d.tolist(), strict=True)) == brute
    assert len(brute) >= 10


def test_hashing_a_huge_file_reads_it_in_chunks(tmp_path: Path) -> None:
    small = tmp_path / "small.bin"
    small.write_bytes(np.random.default_rng(0).bytes(3 * HASH_CHUNK + 17))  # chunk edges are hashed right
    assert content_hash(small) == hashlib.sha256(small.read_bytes()).hexdigest()

    huge = tmp_path / "train" / "0_spaghetti" / "holiday.mp4.jpg"  # 200 MB, sparse: no disk used
    huge.parent.mkdir(parents=True)
    with huge.open("wb") as f:
        f.truncate(200 << 20)
    Image.init()  # PIL imports its format plugins on first use: not the memory measured here
    peaks = []
    tracemalloc.start()
    try:
        for step in (
            lambda: content_hash(huge),  # the data module's leakage check
            lambda: inspect_file(huge, is_image=True),  # the data doctor, as an image and not
            lambda: inspect_file(huge, is_image=False),
        ):
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            peaks.append((step(), tracemalloc.get_traced_memory()[1] - before))
    finally:
        tracemalloc.stop()
    (digest, _), (facts_image, _), (facts_other, _) = peaks
    assert max(peak for _, peak in peaks) < 4 << 20, [f"{p / 2**20:.1f} MiB" for _, p in peaks]  # not 200
    assert facts_image["sha256"] == facts_other["sha256"] == digest
    assert "unreadable image" in facts_image["problem"]


def test_phash_follows_exif_orientation(tmp_path: Path) -> None:
    upright = smooth_image(tmp_path / "up.png", seed=3)
    with Image.open(upright) as im:
        stored = im.rotate(90, expand=True)  # what a phone stores, with orientation 6 = rotate back
    assert bin(phash(Image.open(upright)) ^ phash(stored, orientation=6)).count("1") <= 4  # resampling
    assert bin(phash(Image.open(upright)) ^ phash(stored)).count("1") > NEAR_THRESHOLD


# ----------------------------------------------------------------------------------------- fixes
def _copy(problems, tmp_path: Path) -> Path:
    root = tmp_path / "noodles"
    shutil.copytree(problems[0], root)
    return root


def test_file_list_leaves_out_offending_files_and_the_data_module_reads_it(problems, tmp_path: Path) -> None:
    root = _copy(problems, tmp_path)
    report = check_dataset(root, image_size=SIZE)
    path, left_out = write_file_list(report, tmp_path / "clean.txt")
    listed = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    gone = {
        "train/1_ramen/corrupt.jpg",
        "train/1_ramen/truncated.jpg",
        "train/2_udon/000_copy.png",
        "train/2_udon/001_small.jpg",
        "train/2_udon/002.png",
        "train/2_udon/003.png",
        "train/0_spaghetti/000.png",
        "train/1_ramen/really_spaghetti.png",
    }
    assert left_out == len(gone) and not gone & set(listed)
    assert {"test/2_udon/leak_exact.png", "train/2_udon/tiny.png"} <= set(listed)
    with pytest.raises(ValueError, match="allow_leakage"):
        NoodleDataModule(root, image_size=SIZE, num_workers=0).setup("fit")
    dm = NoodleDataModule(root, image_size=SIZE, num_workers=0, file_list=path, val_fraction=0.0)
    dm.setup("fit")  # no leakage left
    used = {p.relative_to(root).as_posix() for p, _ in dm.train_set.samples + dm.test_set.samples}
    assert used == set(listed) and dm.file_list_left_out == len(gone)
    assert all(root.joinpath(rel).exists() for rel in gone)  # nothing deleted


def test_quarantine_moves_files_beside_the_dataset_and_undo_restores_them(problems, tmp_path: Path) -> None:
    root = _copy(problems, tmp_path)
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    moves = quarantine(check_dataset(root, image_size=SIZE))
    qdir = default_quarantine_dir(root)
    assert qdir == tmp_path / "quarantine" / "noodles"
    moved = {m["from"]: m["reason"] for m in moves}
    assert (
        moved["train/1_ramen/corrupt.jpg"] == "unreadable" and moved["train/2_udon/notes.txt"] == "non_image"
    )
    assert moved["train/2_udon/002.png"] == "leakage" and len(moved) == 10
    assert (qdir / "train/2_udon/notes.txt").is_file() and not (root / "train/2_udon/notes.txt").exists()
    logged = [json.loads(line) for line in (qdir / "moves.jsonl").read_text().splitlines()]
    # Each move: its intent, then its done record; the paths are relative (to the root, to qdir).
    assert [e["op"] for e in logged] == ["move", "moved"] * 10
    assert [e["to"] for e in logged[::2]] == [m["to"] for m in moves]
    assert [e["id"] for e in logged[1::2]] == [m["id"] for m in moves]
    assert not any(Path(m["from"]).is_absolute() or Path(m["to"]).is_absolute() for m in moves)

    after = check_dataset(root, image_size=SIZE)
    assert not {"unreadable", "non_image", "leakage", "label_conflict", "exact_duplicate"} & set(
        after.kinds()
    )
    NoodleDataModule(root, image_size=SIZE, num_workers=0).setup("fit")  # no leakage refusal any more

    undone, problems_left = undo_quarantine(qdir)
    assert len(undone) == 10 and problems_left == []
    assert {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def _quarantined(tmp_path: Path, bad: tuple[str, ...] = ("a.jpg", "b.jpg")) -> tuple[Path, Path, dict]:
    """A small tree with unreadable files in train/1_ramen/, quarantined: (root, qdir, contents before)."""
    root = clean_tree(tmp_path / "noodles", {"0_spaghetti": 2, "1_ramen": 2})
    for name in bad:
        (root / "train" / "1_ramen" / name).write_bytes(f"not a photo: {name}".encode())
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    quarantine(check_dataset(root, image_size=SIZE, near_threshold=None))
    assert not any((root / "train" / "1_ramen" / name).exists() for name in bad)
    return root, default_quarantine_dir(root), before


def _contents(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_undo_skips_a_torn_line_with_a_warning_and_appends_after_it(tmp_path: Path, caplog) -> None:
    root, qdir, before = _quarantined(tmp_path, ("a.jpg",))
    log = qdir / "moves.jsonl"
    with log.open("ab") as f:
        f.write(b'{"op": "moved", "id": "12ab')  # a write cut short: no closing brace, no newline
    (root / "train" / "1_ramen" / "b.jpg").write_bytes(b"not a photo: b.jpg")
    before[Path("train/1_ramen/b.jpg")] = b"not a photo: b.jpg"
    quarantine(check_dataset(root, image_size=SIZE, near_threshold=None))  # appends after the torn line
    assert not (root / "train" / "1_ramen" / "b.jpg").exists()
    with caplog.at_level(logging.WARNING):
        undone, problems_left = undo_quarantine(qdir)
    assert len(undone) == 2 and problems_left == [] and _contents(root) == before
    assert f"{log} line 3 is not a complete record" in caplog.text  # named, then skipped
    assert caplog.text.count("is not a complete record") == 1


def test_undo_restores_into_a_dataset_moved_since(tmp_path: Path) -> None:
    root, qdir, before = _quarantined(tmp_path)
    # The dataset and its quarantine folder moved together: undo finds the dataset beside it.
    project = tmp_path / "moved"
    project.mkdir()
    shutil.move(root, project / "noodles")
    shutil.move(tmp_path / "quarantine", project / "quarantine")
    undone, problems_left = undo_quarantine(project / "quarantine" / "noodles")
    assert len(undone) == 2 and problems_left == [] and _contents(project / "noodles") == before
    assert not root.exists()  # nothing went back to the old place

    # The dataset alone moved (and renamed): root= says where it is now.
    root, qdir, before = _quarantined(tmp_path / "again")
    elsewhere = tmp_path / "elsewhere" / "noodles_v2"
    elsewhere.parent.mkdir()
    shutil.move(root, elsewhere)
    with pytest.raises(FileNotFoundError, match="root="):
        undo_quarantine(qdir)  # the recorded root is gone, and the quarantine folder is not beside it
    undone, problems_left = undo_quarantine(qdir, elsewhere)
    assert len(undone) == 2 and problems_left == [] and _contents(elsewhere) == before


def test_a_kill_between_the_intent_and_the_done_record_loses_nothing(tmp_path: Path) -> None:
    root, qdir, before = _quarantined(tmp_path, ("a.jpg",))
    ramen = root / "train" / "1_ramen"
    log = qdir / "moves.jsonl"

    def intent(name: str) -> None:  # what quarantine writes (and fsyncs) before it moves a file
        record = {"op": "move", "id": name, "from": f"train/1_ramen/{name}", "to": f"train/1_ramen/{name}"}
        with log.open("a") as f:
            f.write(json.dumps({**record, "reason": "unreadable", "root": str(root)}) + "\n")

    # Killed after the intent, before the move: the file is still at its source.
    (ramen / "c.jpg").write_bytes(b"c")
    intent("c.jpg")
    # Killed after the move, before the done record: the file is in quarantine.
    (qdir / "train" / "1_ramen" / "d.jpg").write_bytes(b"d")
    intent("d.jpg")
    undone, problems_left = undo_quarantine(qdir)
    assert sorted(u["to"] for u in undone) == ["train/1_ramen/a.jpg", "train/1_ramen/d.jpg"]
    assert problems_left == []
    c, d = Path("train/1_ramen/c.jpg"), Path("train/1_ramen/d.jpg")
    assert _contents(root) == {**before, c: b"c", d: b"d"}  # c stayed, a and d came back
    assert not any(p.is_file() for p in qdir.rglob("*.jpg"))

    # Killed during an undo, after its intent (and the move back), before its done record: a second
    # undo finds the file home and leaves it there.
    (qdir / "train" / "1_ramen" / "e.jpg").write_bytes(b"e")
    intent("e.jpg")
    with log.open("a") as f:
        f.write(json.dumps({"op": "undo", "id": "e.jpg"}) + "\n")
    (qdir / "train" / "1_ramen" / "e.jpg").rename(ramen / "e.jpg")
    undone, problems_left = undo_quarantine(qdir)
    assert undone == [] and problems_left == [] and (ramen / "e.jpg").read_bytes() == b"e"


def test_quarantine_across_filesystems_copies_whole_files_then_removes_them(
    tmp_path: Path, monkeypatch
) -> None:
    def cross_device(src: object, dst: object) -> None:  # what os.rename says between two filesystems
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    root = clean_tree(tmp_path / "noodles", {"0_spaghetti": 2, "1_ramen": 2})
    bad = root / "train" / "1_ramen" / "bad.jpg"
    bad.write_bytes(b"not a photo")
    os.utime(bad, (1_000_000_000, 1_000_000_000))
    before = _contents(root)
    monkeypatch.setattr(os, "rename", cross_device)
    (move,) = quarantine(check_dataset(root, image_size=SIZE, near_threshold=None))
    moved = default_quarantine_dir(root) / move["to"]
    assert not bad.exists() and moved.read_bytes() == b"not a photo"
    assert moved.stat().st_mtime == 1_000_000_000  # a copy keeps the file's times (and mode)
    assert not list(moved.parent.glob(".*.tmp"))  # the copy went through a temp file, renamed whole
    undone, problems_left = undo_quarantine(default_quarantine_dir(root))
    assert len(undone) == 1 and problems_left == [] and _contents(root) == before


def test_undo_reads_the_old_logs_of_absolute_paths(tmp_path: Path) -> None:
    root = clean_tree(tmp_path / "noodles", {"0_spaghetti": 2, "1_ramen": 2})
    qdir = default_quarantine_dir(root)
    (qdir / "train").mkdir(parents=True)
    (qdir / "train" / "old.jpg").write_bytes(b"old")
    old = {"op": "move", "from": str(root / "train" / "old.jpg"), "to": str(qdir / "train" / "old.jpg")}
    (qdir / "moves.jsonl").write_text(json.dumps({**old, "reason": "unreadable", "at": "then"}) + "\n")
    undone, problems_left = undo_quarantine(qdir)
    assert len(undone) == 1 and problems_left == [] and (root / "train" / "old.jpg").read_bytes() == b"old"


def test_quarantine_never_overwrites(tmp_path: Path) -> None:
    root = clean_tree(tmp_path / "noodles")
    bad = root / "train" / "1_ramen" / "bad.jpg"
    for content in (b"first", b"second"):
        bad.write_bytes(content)
        quarantine(check_dataset(root, image_size=SIZE, near_threshold=None))
    qdir = default_quarantine_dir(root) / "train" / "1_ramen"
    assert (qdir / "bad.jpg").read_bytes() == b"first" and (qdir / "bad.1.jpg").read_bytes() == b"second"


# ----------------------------------------------------------------------------------------- entry point
def test_hydra_entry_writes_the_report_and_the_file_list(
    problems, compose_cfg, tmp_path: Path, capsys
) -> None:
    root = problems[0]
    cfg = compose_cfg("check", [f"root={root}", f"image_size={SIZE}", "fix=list", "progress=false"])
    report = run(cfg)
    out = capsys.readouterr().out
    assert "spaghetti" in out and "label_conflict" in out and "data.file_list=" in out
    saved = json.loads((tmp_path / "run" / "data_check.json").read_text())
    assert saved["counts"] == dict(report.kinds()) and not saved["clean"]
    assert (
        saved["splits"]["train"]["classes"]["udon"]["count"]
        == report.stats()["train"]["classes"]["udon"]["count"]
    )
    assert {f["kind"] for f in saved["findings"]} >= {"leakage", "unreadable", "near_duplicate"}
    assert (tmp_path / "run" / "clean_files.txt").is_file()


def test_unknown_fix_is_a_clear_error(problems, compose_cfg) -> None:
    cfg = compose_cfg("check", [f"root={problems[0]}", "fix=delete"])
    with pytest.raises(ValueError, match="fix='delete' is not known"):
        run(cfg)


def test_command_line_exits_1_on_errors_with_fail_on(problems, tmp_path: Path) -> None:
    import noodlenext.data.check

    args = [f"root={problems[0]}", f"hydra.run.dir={tmp_path}", "fail_on=error", "progress=false"]
    status, output = run_main(noodlenext.data.check.main, *args)  # `python -m noodlenext.data.check`, here
    assert status == 1, output[-3000:]
    assert "leakage" in output and (tmp_path / "data_check.json").is_file()


# ----------------------------------------------------------------------------------------- data module
def test_data_module_refuses_exact_train_test_leakage(tmp_path: Path, caplog) -> None:
    root = clean_tree(tmp_path / "noodles")
    shutil.copy(root / "train/1_ramen/001.png", root / "test/1_ramen/copy.png")
    with pytest.raises(ValueError, match=r"1 test image\(s\) are byte-identical.*data.allow_leakage=true"):
        NoodleDataModule(root, image_size=SIZE, num_workers=0).setup("fit")
    with caplog.at_level(logging.WARNING, logger="noodlenext.data.datamodule"):
        NoodleDataModule(root, image_size=SIZE, num_workers=0, allow_leakage=True).setup("fit")
    assert "byte-identical" in caplog.text


def test_data_module_only_warns_for_an_unlabelled_test_set(tmp_path: Path, caplog) -> None:
    root = clean_tree(tmp_path / "noodles", test=0)
    (root / "test/unknown").mkdir(parents=True)
    shutil.copy(root / "train/1_ramen/001.png", root / "test/unknown/copy.png")
    smooth_image(root / "test/unknown/other.png", seed=999)
    with caplog.at_level(logging.WARNING, logger="noodlenext.data.datamodule"):
        NoodleDataModule(root, image_size=SIZE, num_workers=0).setup("fit")
    assert "byte-identical" in caplog.text


def test_data_module_warns_about_label_conflicts(tmp_path: Path, caplog) -> None:
    root = clean_tree(tmp_path / "noodles")
    shutil.copy(root / "train/1_ramen/001.png", root / "train/2_udon/copy.png")
    with caplog.at_level(logging.WARNING, logger="noodlenext.data.datamodule"):
        NoodleDataModule(root, image_size=SIZE, num_workers=0).setup("fit")
    assert "appear under two classes" in caplog.text and "fix=quarantine" in caplog.text


def test_data_module_refuses_exactly_the_leaks_the_doctor_reports(tmp_path: Path) -> None:
    root = clean_tree(tmp_path / "noodles")
    for c, cls in enumerate(("0_spaghetti", "1_ramen", "2_udon")):
        smooth_image(root / "val" / cls / "v000.png", seed=20_000 + c)
    shutil.copy(root / "train/1_ramen/001.png", root / "test/1_ramen/copy.png")
    shutil.copy(root / "train/1_ramen/001.png", root / "test/1_ramen/copy_again.png")
    shutil.copy(root / "val/2_udon/v000.png", root / "test/2_udon/from_val.png")
    with pytest.raises(ValueError, match="allow_leakage") as refused:
        NoodleDataModule(root, image_size=SIZE, num_workers=0).setup("fit")
    message = str(refused.value)
    named = message.split(": ", 1)[1].split(". Test scores")[0]  # "a = b; c = d"
    refused_files = {
        Path(p).resolve().relative_to(root.resolve()).as_posix()
        for group in named.split("; ")
        for p in group.split(" = ")
    }
    leaks = [f for f in check_dataset(root, image_size=SIZE).findings if f.kind == "leakage"]
    assert all(f.severity == "error" and f.details["match"] == "exact" for f in leaks)
    assert {rel for f in leaks for rel in f.files} == refused_files
    leaked_test = [rel for f in leaks for rel in f.files if rel.startswith("test/")]
    assert message.startswith(f"{len(leaked_test)} test image(s)") and len(leaked_test) == 3


def test_file_list_entries_that_are_gone_are_reported(tmp_path: Path, caplog) -> None:
    root = clean_tree(tmp_path / "noodles")
    listed = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    (tmp_path / "list.txt").write_text("\n".join(["# a comment", *listed[1:], "train/2_udon/gone.png"]))
    dm = NoodleDataModule(root, image_size=SIZE, num_workers=0, file_list=tmp_path / "list.txt")
    with caplog.at_level(logging.WARNING, logger="noodlenext.data.datamodule"):
        dm.setup("fit")
    assert dm.file_list_left_out == 1 and "1 path(s) in data.file_list" in caplog.text
    assert root / listed[0] not in {
        p for p, _ in dm.train_set.samples + dm.val_set.samples + dm.test_set.samples
    }


def test_missing_file_list_is_a_clear_error(tmp_path: Path) -> None:
    root = clean_tree(tmp_path / "noodles")
    with pytest.raises(FileNotFoundError, match="data.file_list=.*fix=list"):
        NoodleDataModule(root, image_size=SIZE, num_workers=0, file_list=tmp_path / "nope.txt").setup("fit")


def test_synthetic_data_passes_the_setup_check(tmp_path: Path) -> None:
    from noodlenext.data.synthetic import render_dataset

    root = render_dataset(tmp_path / "synthetic", images_per_class=12, image_size=48)
    NoodleDataModule(root, image_size=48, num_workers=0).setup("fit")  # no leakage refusal
    report = check_dataset(root, image_size=48)
    assert not {"leakage", "exact_duplicate", "near_duplicate", "label_conflict"} & set(report.kinds())


def test_jpeg_reencode_of_a_photo_is_within_the_threshold(tmp_path: Path) -> None:
    src = smooth_image(tmp_path / "a.png", seed=5)
    buf = io.BytesIO()
    Image.open(src).convert("RGB").save(buf, "JPEG", quality=50)
    other = smooth_image(tmp_path / "b.png", seed=6)
    assert bin(phash(Image.open(src)) ^ phash(Image.open(buf))).count("1") <= NEAR_THRESHOLD
    assert bin(phash(Image.open(src)) ^ phash(Image.open(other))).count("1") > NEAR_THRESHOLD

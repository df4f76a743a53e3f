"""`python -m noodlenext.explain` on a folder: every image gets its own overlays, whatever the names."""

from __future__ import annotations

from pathlib import Path

from conftest import write_image
from PIL import Image

from noodlenext.explain.folder import explain_files, output_names
from noodlenext.models.classifier import NoodleClassifier

# Names that collided when folders were joined with `__` and the extension dropped.
CLASHING = ("a__b/c.jpg", "a/b__c.jpg", "x.jpg", "x.png", "deep/er/x.jpg")


def test_overlay_names_keep_the_relative_path_and_the_extension(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    paths = [write_image(root / rel, size=(40, 32), seed=i) for i, rel in enumerate(CLASHING)]
    model = NoodleClassifier("convnext_atto", 3, ["a", "b", "c"], image_size=32, pretrained=False).eval()
    out = tmp_path / "explained"
    records = explain_files(model, paths, out, methods="gradcam", root=root)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == sorted(f"{rel}_gradcam.png" for rel in CLASHING)  # one each: nothing overwritten
    assert [r["overlays"] for r in records] == [{"gradcam": f"{rel}_gradcam.png"} for rel in CLASHING]
    for record in records:  # each record names the overlay made from its own image
        with Image.open(out / record["overlays"]["gradcam"]) as im:
            assert im.size == (32, 32)
        assert record["file"].endswith(record["overlays"]["gradcam"].removesuffix("_gradcam.png"))


def test_overlay_names_are_unique_even_ignoring_case_and_without_a_root(tmp_path: Path) -> None:
    names = output_names([tmp_path / "X.jpg", tmp_path / "x.jpg", tmp_path / "sub" / "x.jpg"], tmp_path)
    assert names == ["X.jpg", "x.jpg~2", "sub/x.jpg"]  # a case-insensitive disk would merge the first two
    # A single file (no root folder) is named by its file name; the same name twice still differs.
    assert output_names([tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg"], None) == ["x.jpg", "x.jpg~2"]
    # A path outside the root keeps its name alone.
    assert output_names([tmp_path / "x.png"], tmp_path / "elsewhere") == ["x.png"]

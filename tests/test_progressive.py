"""Explanations as they are made: the prediction and GradCAM first, then ScoreCAM with its progress and
an estimate, stoppable between mask batches without losing what was shown or written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import write_image
from PIL import Image

from noodlenext.core.durations import clock
from noodlenext.explain import ScoreCAM
from noodlenext.explain.folder import explain_files
from noodlenext.explain.photo import STAGES, PhotoExplainer
from noodlenext.explain.settings import HeatmapSettings

NAMES = ["ramen", "spaghetti", "udon"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


class ForwardCounter:
    """Counts a model's forward passes (a hook on the real model, which runs unchanged)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self._count)

    def _count(self, module: torch.nn.Module, args: tuple) -> None:
        self.calls += 1


@pytest.fixture
def checkpoint(tiny_checkpoint: Path) -> Path:
    """The session's ConvNeXt-Atto checkpoint at 32 px (conftest), read through the real loading code."""
    return tiny_checkpoint


def photo(seed: int = 0, size: int = 40) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------ ScoreCAM, a batch at a time
def test_scorecam_steps_count_up_to_the_same_maps_as_one_call() -> None:
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cam = ScoreCAM(model, "stages.1.blocks.1.conv_dw", batch_size=16)  # 2 images x 80 channels
    steps = list(cam.steps(x, [0, 2]))
    first, last = steps[0], steps[-1]
    assert (first.done, first.total) == (0, 160) and first.left_s is not None and first.left_s > 0
    assert [s.done for s in steps] == [0, *range(16, 160, 16), 160]  # one step per mask batch
    assert all(s.maps is None for s in steps[:-1]) and last.left_s == 0.0 and last.fraction == 1.0
    assert all(a.elapsed_s <= b.elapsed_s for a, b in zip(steps, steps[1:], strict=False))
    assert torch.equal(last.maps, cam(x, [0, 2]))


def test_stopping_scorecam_midway_runs_no_more_forward_passes_and_restores_the_model() -> None:
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=3).train()
    counter = ForwardCounter(model)
    steps = ScoreCAM(model, "stages.1.blocks.1.conv_dw", batch_size=8).steps(torch.randn(1, 3, 32, 32))
    next(steps), next(steps)  # the activations' pass, then the first mask batch
    # Between steps the caller's own grad mode holds: ScoreCAM keeps no no_grad or autocast open.
    assert torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
    assert not model.training  # eval inside, while it runs
    passes = counter.calls
    assert passes == 2
    steps.close()
    assert counter.calls == passes and model.training  # nothing more ran; the train flags are back


# ------------------------------------------------------------------------------ one photo, stage by stage
def test_a_photo_shows_its_prediction_and_gradcam_first_then_scorecam_counting_then_evidence(
    checkpoint: Path,
) -> None:
    # No preview (its time estimate depends on the machine's load): ScoreCAM is exact at once.
    no_preview = HeatmapSettings(preview_after_s=float("inf"))
    explainer = PhotoExplainer(checkpoint, device="cpu", methods="both", settings=no_preview)
    steps, had = [], []  # each step, and the maps and evidence its analysis had at the time
    for step in explainer.steps(photo()):
        steps.append(step)
        had.append((set(step.analysis.heatmaps), step.analysis.evidence is not None, step.describe()))
    stages = [s.stage for s in steps]
    assert stages[0] == "first look" and stages[-2:] == ["evidence", "done"]
    assert [st for st in STAGES if st in stages] == sorted(set(stages), key=stages.index)  # in order
    assert steps[0].progress is None and had[0][:2] == ({"gradcam"}, False)  # ScoreCAM not yet
    predicted = steps[0].analysis.predicted
    assert had[0][2].startswith(f"{predicted} (") and "GradCAM in" in had[0][2]
    assert had[-2][:2] == ({"gradcam", "scorecam"}, False) and had[-1][1]  # the evidence comes last
    counting = [s for s in steps if s.stage == "scorecam"]
    assert counting[0].progress.done == 0 and counting[-1].progress.maps is not None
    assert [s.progress.done for s in counting] == sorted(s.progress.done for s in counting)
    assert "masked images" in had[stages.index("scorecam")][2] and "left" in had[stages.index("scorecam")][2]

    analysis = steps[-1].analysis
    whole = explainer(photo())  # the same work in one call gives the same analysis
    assert list(analysis.heatmaps) == ["scorecam", "gradcam"]  # the order asked for
    for method in analysis.heatmaps:
        np.testing.assert_array_equal(analysis.heatmaps[method].cam, whole.heatmaps[method].cam)
    assert analysis.evidence.lines() == whole.evidence.lines()
    assert analysis.preview is None
    t = analysis.timings
    assert list(t) == ["first look", "scorecam", "evidence", "done"]
    assert t["first look"] <= t["scorecam"] <= t["evidence"] <= t["done"]


def test_a_slow_exact_map_is_previewed_from_a_few_channels_and_labelled_with_its_correlation(
    checkpoint: Path,
) -> None:
    settings = HeatmapSettings(preview_top_k=16, preview_after_s=0.0)  # a preview whatever the machine
    explainer = PhotoExplainer(checkpoint, device="cpu", settings=settings)
    steps = list(explainer.steps(photo(1)))
    stages = [s.stage for s in steps]
    assert stages.index("preview") < stages.index("scorecam")
    previewed = next(s for s in steps if s.stage == "preview" and s.progress.maps is not None)
    preview = previewed.analysis.preview
    channels = steps[-1].analysis.preview.channels
    assert preview.top_k == 16 and channels > 32 and previewed.progress.total == 16
    # Until the exact map is there, the preview says it is approximate; after, how close it came.
    exact = next(s for s in steps if s.stage == "scorecam" and s.progress.maps is not None)
    assert exact.analysis.preview.correlation is not None
    r = np.corrcoef(preview.heatmap.cam.ravel(), exact.analysis.heatmaps["scorecam"].cam.ravel())[0, 1]
    assert preview.correlation == pytest.approx(r)
    assert f"r = {r:.2f}" in preview.describe() and "16 most active of" in preview.describe()
    assert list(steps[-1].analysis.timings)[:3] == ["first look", "preview", "scorecam"]
    # An approximate exact map (explain.top_k) needs no preview.
    approximate = HeatmapSettings(top_k=8, preview_top_k=4, preview_after_s=0.0)
    quick = PhotoExplainer(checkpoint, device="cpu", settings=approximate)
    assert "preview" not in [s.stage for s in quick.steps(photo(1))]


def test_stopping_a_photo_midway_keeps_what_was_shown_and_runs_nothing_more(checkpoint: Path) -> None:
    explainer = PhotoExplainer(checkpoint, device="cpu", methods="both",
                               settings=HeatmapSettings(mask_batch_size=4))  # fmt: skip
    counter = ForwardCounter(explainer.model.net)
    steps = explainer.steps(photo())
    first = next(steps)
    gradcam = first.analysis.heatmaps["gradcam"].cam.copy()
    while (step := next(steps)).stage != "scorecam" or step.progress.done == 0:
        pass
    passes = counter.calls
    steps.close()
    assert counter.calls == passes
    assert first.analysis.evidence is None and "scorecam" not in first.analysis.heatmaps
    np.testing.assert_array_equal(first.analysis.heatmaps["gradcam"].cam, gradcam)


def test_durations_read_as_a_person_reads_them() -> None:
    assert [clock(s) for s in (0.4, 42, 61, 245, 3730)] == ["0 s", "42 s", "1:01", "4:05", "1:02:10"]


# ------------------------------------------------------------------------------ explain on a folder
def interrupt_on_forward(model: torch.nn.Module, n: int) -> None:
    """Ctrl+C arriving during the model's n-th forward pass from now (a KeyboardInterrupt, as Python
    raises it in the main thread)."""
    calls = {"n": 0}

    def hook(module: torch.nn.Module, args: tuple) -> None:
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt

    model.register_forward_pre_hook(hook)


def test_explain_files_records_each_first_look_before_its_scorecam(tmp_path: Path, checkpoint: Path) -> None:
    from noodlenext.models.classifier import load_classifier

    root = tmp_path / "photos"
    paths = [write_image(root / f"{i}.jpg", size=(40, 32), seed=i) for i in range(3)]
    settings = HeatmapSettings(mask_batch_size=40)
    model = load_classifier(checkpoint)
    counter = ForwardCounter(model.net)
    explain_files(model, paths, tmp_path / "whole", "both", settings, batch_size=2, root=root,
                  show_progress=False)  # fmt: skip
    counter.handle.remove()
    # Batches of 2 and 1: Ctrl+C during the last forward pass, a mask batch of the last image's ScoreCAM.
    interrupt_on_forward(model.net, counter.calls)
    out = tmp_path / "explained"
    records: list[dict] = []
    with pytest.raises(KeyboardInterrupt):
        explain_files(model, paths, out, "both", settings, batch_size=2, root=root, records=records,
                      show_progress=False)  # fmt: skip
    assert [Path(r["file"]).name for r in records] == ["0.jpg", "1.jpg", "2.jpg"]
    assert [r.get("unfinished") for r in records] == [None, None, ["scorecam"]]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["0.jpg_gradcam.png", "0.jpg_scorecam.png", "1.jpg_gradcam.png",
                       "1.jpg_scorecam.png", "2.jpg_gradcam.png"]  # fmt: skip
    for record in records:  # every record names only overlays that exist, and vice versa
        assert all((out / o).is_file() for o in record["overlays"].values())
    assert list(records[0]["overlays"]) == ["scorecam", "gradcam"]  # the order asked for
    assert set(records[2]["overlays"]) == {"gradcam"}


def ctrl_c_as_in_a_terminal() -> None:
    """In the child: SIGINT's default action. A shell without job control starts background jobs with SIGINT
    ignored, a pytest run so started passes that on, and Python then installs no KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_ctrl_c_stops_the_explain_command_and_keeps_facts_of_everything_written(
    tmp_path: Path, checkpoint: Path
) -> None:
    """The command in a process of its own gets a real SIGINT while the first photo's ScoreCAM runs (the
    child waits there for it: tests/ctrl_c_child.py)."""
    root = tmp_path / "photos"
    for i in range(3):
        write_image(root / f"{i:02d}.jpg", size=(40, 32), seed=i)
    out, ready = tmp_path / "explained", tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "ctrl_c_child.py"), str(ready), str(out),
         f"ckpt_path={checkpoint}", f"input={root}", f"output={out}", "batch_size=1",
         f"hydra.run.dir={tmp_path / 'run'}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=ctrl_c_as_in_a_terminal,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not ready.is_file():  # the first photo's first look is written; its ScoreCAM waits
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=30)[0]
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, output
    assert "stopped: 0 of 3 image(s) explained in full, 1 cut off before ScoreCAM" in output
    assert "facts.json" in output
    (record,) = json.loads((out / "facts.json").read_text())
    assert Path(record["file"]).name == "00.jpg" and record["unfinished"] == ["scorecam"]
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert on_disk == set(record["overlays"].values()) == {"00.jpg_gradcam.png"}  # facts name every overlay

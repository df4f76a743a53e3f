"""The web app in a real browser (Debian's Chromium driven by Playwright), against a real server."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image
from tiny_llms import END_OF_TURN, EOS, save_tiny_llama
from torch.utils.data import DataLoader, TensorDataset

from noodlenext.app import Deadline, NoodleApp, PageLimits, forget, image_files, open_photo, run_examples
from noodlenext.explain.photo import PhotoExplainer
from noodlenext.explain.settings import HeatmapSettings
from noodlenext.llm.base import LLMError
from noodlenext.models.classifier import NoodleClassifier

CHROMIUM = os.environ.get("NOODLENEXT_CHROMIUM", "/usr/bin/chromium")  # .ci/run installs it
NAMES = ["spaghetti", "ramen", "udon"]


def test_open_photo_refuses_what_it_cannot_show(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a photo")
    Image.new("RGB", (40, 30), "red").save(tmp_path / "ok.png")
    Image.new("RGB", (1200, 1000)).save(tmp_path / "big.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:60])
    assert open_photo(tmp_path / "ok.png", 10_000).size == (40, 30)
    with pytest.raises(ValueError, match="notes.txt is not an image"):
        open_photo(tmp_path / "notes.txt", 10_000)
    with pytest.raises(ValueError, match=r"big.png is 1200×1000 pixels, more than the 1,000,000 allowed"):
        open_photo(tmp_path / "big.png", 1_000_000)
    with pytest.raises(ValueError, match="cut.png is a damaged image"):
        open_photo(tmp_path / "cut.png", 10_000)


def test_examples_default_to_the_runs_worst_mistakes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    photo = tmp_path / "udon.png"
    Image.new("RGB", (8, 8)).save(photo)
    (tmp_path / "secrets.txt").write_text("not for the page")
    records = [{"file": str(photo)}, {"file": str(tmp_path / "gone.png")}, {"file": str(photo)},
               {"file": str(tmp_path / "secrets.txt")}, {"file": None}]  # fmt: skip
    (run / "explanations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert run_examples(run / "checkpoints" / "last.ckpt") == [str(photo)]  # image files that exist, once
    assert run_examples(tmp_path / "elsewhere" / "checkpoints" / "x.ckpt") == []
    assert image_files([tmp_path / "secrets.txt", photo]) == [str(photo)]  # nothing else is served


def test_the_page_limits_come_from_the_config_and_refuse_nonsense(compose_cfg) -> None:
    cfg = compose_cfg("app", ["ckpt_path=x.ckpt", "app.generation_timeout_s=7.5"])
    limits = PageLimits.of(cfg.app)
    assert limits.generation_timeout_s == 7.5 and limits.queue_size == cfg.app.queue_size
    for option, value in (("generation_timeout_s", 0), ("max_question_chars", -1), ("queue_size", 2.5)):
        with pytest.raises(ValueError, match=rf"app.{option}={value}: use a"):
            PageLimits.of({option: value})


def test_forgetting_a_session_removes_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "sessions" / "abc"
    folder.mkdir(parents=True)
    (folder / "chat.json").write_text("{}")
    forget({"folder": folder, "session": None})
    assert not folder.exists()
    forget(None)  # a session that never analysed a photo
    forget({"folder": folder})  # already gone


# ---------------------------------------------------------------------------- the analysis, as it is made
def page_of(work: Path, tmp_path: Path) -> NoodleApp:
    """The page's handlers over the tiny checkpoint, no language model, built (not served)."""
    # No preview: whether the exact map is slow enough for one depends on the machine's load.
    settings = HeatmapSettings(preview_after_s=float("inf"))
    explainer = PhotoExplainer(work / "run" / "checkpoints" / "tiny.ckpt", "cpu", "both", settings)
    app = NoodleApp(explainer, None, {}, {}, tmp_path / "sessions", 10**6, [])
    app.build()
    return app


def test_the_page_shows_the_prediction_and_gradcam_before_scorecam_and_a_stop_keeps_them(
    work: Path, tmp_path: Path
) -> None:
    app = page_of(work, tmp_path)
    ui = app.ui
    updates = app.analyze(str(work / "examples" / "bowl_a.png"), 0.5, None)
    first = next(updates)
    assert re.fullmatch(r"bowl_a.png: \w+ \(\d+%\)", first[ui.status])
    assert first[ui.gradcam] is not None and first[ui.scorecam] is None  # GradCAM first, ScoreCAM next
    assert "<progress" in first[ui.progress] and "and GradCAM in" in first[ui.progress]
    state = first[ui.state]
    assert "stopping" in app.stop(state)[ui.progress]
    rest = list(updates)  # the handler stops at its next step
    assert len(rest) == 1 and "stopped during the exact ScoreCAM map" in rest[0][ui.status]
    assert "stopped:" in rest[0][ui.explanation] and "prediction and GradCAM after" in rest[0][ui.progress]
    assert not (tmp_path / "sessions").exists()  # nothing saved for an analysis that did not finish
    # The shown maps stay and can still be reblended; a question is told why there is no chat.
    assert set(app.reblend(0.8, state)) == {ui.gradcam}
    (asked,) = app.ask("why?", state)
    assert "the analysis was stopped" in asked[ui.status]

    # Left to run, the same photo ends with every map, the evidence and how long each stage took.
    *shown, last = app.analyze(str(work / "examples" / "bowl_a.png"), 0.5, state)
    assert any(u.get(ui.scorecam) is not None for u in shown) and last[ui.contrastive] is not None
    assert last[ui.evidence].startswith("1. The classifier predicted")
    assert re.search(
        r"Shown: prediction and GradCAM after \d+ s, exact ScoreCAM after \d+ s", last[ui.progress]
    )
    assert app.stop(last[ui.state]) == {}  # nothing left to stop


# ---------------------------------------------------------------------------- the deadline
def save_slow_llama(path: Path) -> Path:
    """The suite's tiny Llama, room for the page's long prompt (4096 positions: RoPE learns none) and no
    way to end an answer early (its end tokens suppressed in its generation config): it writes until
    max_new_tokens, a few milliseconds a token on a CPU."""
    save_tiny_llama(path)
    for name, changes in (("config.json", {"max_position_embeddings": 4096}),
                          ("generation_config.json", {"suppress_tokens": [EOS, END_OF_TURN]})):  # fmt: skip
        config = json.loads((path / name).read_text())
        (path / name).write_text(json.dumps({**config, **changes}))
    return path


def llm_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in ("llm-stream", "llm-deadline")]


QUESTION = [{"role": "user", "content": "Why did the model confuse udon with ramen?"}]


def test_an_answer_past_its_deadline_is_cut_there_and_the_model_stops(tmp_path: Path) -> None:
    from noodlenext.llm.transformers_backend import TransformersBackend

    backend = TransformersBackend(str(save_slow_llama(tmp_path / "llama")), device="cpu")
    roomy = Deadline(backend, 60.0)
    roomy.arm()
    assert roomy.generate([QUESTION], max_new_tokens=4) == backend.generate([QUESTION], max_new_tokens=4)
    assert not roomy.stopped  # an answer within its time is the model's own

    clock = Deadline(backend, 1.0)
    clock.arm()
    start = time.monotonic()
    clock.generate([QUESTION], max_new_tokens=4000)  # minutes, if it were let run
    assert clock.stopped and 0.9 < time.monotonic() - start < 4
    assert clock.generate([QUESTION], max_new_tokens=4) == [""]  # the answer's time is spent: the retry too
    deadline = time.monotonic() + 10
    while llm_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not llm_threads()  # the model stopped at its next token, not after 4000


def test_a_server_that_never_answers_is_given_up_on_at_the_deadline() -> None:
    from noodlenext.llm.openai_backend import OpenAIBackend

    with socket.socket() as silent:  # accepts connections (the kernel does) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        clock = Deadline(OpenAIBackend(url, "noodle", timeout=60, max_retries=0), 1.0)
        clock.arm()
        start = time.monotonic()
        assert clock.generate([QUESTION], max_new_tokens=8) == [""]
        assert clock.stopped and time.monotonic() - start < 4
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: the backend's error, in our thread
    clock = Deadline(OpenAIBackend(closed, "noodle", timeout=5, max_retries=0), 10.0)
    clock.arm()
    with pytest.raises(LLMError, match="no OpenAI-compatible server answers"):
        clock.generate([QUESTION], max_new_tokens=8)


# ---------------------------------------------------------------------------- the server and browser
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint (ConvNeXt-Atto, 64 px, one training step) and two example photos."""
    root = tmp_path_factory.mktemp("app")
    model = NoodleClassifier("convnext_atto", 3, NAMES, image_size=64, pretrained=False)
    data = TensorDataset(torch.randn(8, 3, 64, 64), torch.randint(0, 3, (8,)))
    quiet = {"enable_progress_bar": False, "enable_model_summary": False, "enable_checkpointing": False}
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, default_root_dir=root, **quiet)
    trainer.fit(model, DataLoader(data, batch_size=8))
    (root / "run" / "checkpoints").mkdir(parents=True)
    trainer.save_checkpoint(root / "run" / "checkpoints" / "tiny.ckpt")
    (root / "examples").mkdir()
    for name, colour in (("bowl_a.png", (200, 180, 120)), ("bowl_b.png", (120, 60, 40))):
        Image.new("RGB", (96, 80), colour).save(root / "examples" / name)
    (root / "notes.txt").write_text("not a photo")
    return root


def launch_app(
    work: Path, run_dir: Path, *overrides: str, ckpt: Path | None = None, **env: str
) -> Iterator[tuple[str, Path]]:
    """`python -m noodlenext.app` on a free loopback port with the tiny checkpoint (or `ckpt`), until
    the caller is done: (url, run dir)."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", **env}
    ckpt = ckpt or work / "run" / "checkpoints" / "tiny.ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "noodlenext.app", f"ckpt_path={ckpt}",
         f"app.port={port}", f"app.examples={work / 'examples'}", "app.max_pixels=1000000",
         f"hydra.run.dir={run_dir}", *overrides],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the app exited:\n{proc.stdout.read()[-4000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("the app did not answer within 180 s")
    yield url, run_dir
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(work: Path) -> Iterator[tuple[str, Path]]:
    """The page with SmolLM2, answering in a second or two."""
    yield from launch_app(work, work / "app_run", "llm=smollm2", "llm.max_new_tokens=24")


SLOW_TIMEOUT_S = 5  # long enough for the second upload to queue behind the first answer


@pytest.fixture(scope="module")
def slow_server(work: Path) -> Iterator[tuple[str, Path]]:
    """The page with a language model that would write for a minute (the slow tiny Llama), stopped at a
    5 s deadline, and questions of at most 120 characters. GRADIO_IS_E2E_TEST is Gradio's own switch
    for its tests: a closed tab's state goes after 1 s rather than an hour."""
    llama = save_slow_llama(work / "slow_llama")
    yield from launch_app(
        work, work / "slow_run", "llm=transformers", f"llm.model={llama}", "llm.max_new_tokens=2000",
        "llm.backend.device=cpu", f"app.generation_timeout_s={SLOW_TIMEOUT_S}", "app.max_question_chars=120",
        GRADIO_IS_E2E_TEST="1",
    )  # fmt: skip


@pytest.fixture(scope="module")
def slow_maps_server(work: Path) -> Iterator[tuple[str, Path]]:
    """The page over a model whose exact ScoreCAM takes seconds, as a big one's takes minutes on a CPU:
    ConvNeXt-Atto at 256 px (320 channels in the last stage), one masked image per forward pass, and a
    preview however quick the machine."""
    model = NoodleClassifier("convnext_atto", 3, NAMES, image_size=256, pretrained=False)
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    ckpt = work / "run" / "checkpoints" / "atto256.ckpt"
    torch.save(checkpoint, ckpt)
    yield from launch_app(work, work / "slow_maps_run", "llm=none", "explain.mask_batch_size=1",
                          "explain.preview_after_s=0", ckpt=ckpt)  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no browser at {CHROMIUM}: apt-get install chromium, or set NOODLENEXT_CHROMIUM")
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"]  # fmt: skip
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield browser
        browser.close()


def conversation_files(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "sessions").glob("*/chat.json"))


@pytest.mark.slow
def test_a_user_uploads_a_photo_reads_the_explanation_and_asks_a_follow_up(
    server: tuple[str, Path], browser, work: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    url, run_dir = server
    page = browser.new_page()
    page.goto(url)
    page.locator("#photo input[type=file]").set_input_files(str(work / "examples" / "bowl_a.png"))
    expect(page.locator("#status textarea")).to_have_value(
        re.compile(r"bowl_a.png: \w+ \(\d+%\)"), timeout=120_000
    )
    assert (
        "is in the" in page.locator("#facts textarea").input_value()
        or "empty" in page.locator("#facts textarea").input_value()
    )
    expect(page.locator("#download-transcript")).to_be_visible()
    deadline = time.monotonic() + 120
    while not conversation_files(run_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    (saved,) = conversation_files(run_dir)
    explanation = json.loads(saved.read_text())["transcript"][2]["content"]
    shown = re.compile(
        re.escape(explanation) + r"\n\n\((checked against the evidence|from the evidence template)"
    )
    expect(page.locator("#explanation textarea")).to_have_value(shown, timeout=30_000)
    # The evidence the model produced, numbered; every map (the contrastive one too) at least 320 px tall.
    assert page.locator("#evidence textarea").input_value().startswith("1. The classifier predicted")
    for box in ("#photo-view", "#scorecam", "#gradcam", "#contrastive"):
        assert page.locator(f"{box} img").get_attribute("src")
        assert page.locator(box).bounding_box()["height"] >= 320, box
        # The 64 px model's maps fill their box, not a 64 px stamp in its middle.
        assert page.locator(f"{box} img").bounding_box()["height"] >= 240, box

    page.locator("#question textarea").fill("Why not udon?")
    page.locator("#ask").click()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(json.loads(saved.read_text())["transcript"]) < 5:
        time.sleep(0.5)
    transcript = json.loads(saved.read_text())["transcript"]
    assert [m["role"] for m in transcript[3:]] == ["user", "assistant"]
    assert transcript[3]["content"].startswith("Why not udon?")  # with the test's lines, as the model saw it
    # The answer rests on a test run on the photo: shown beside the chat, its lines numbered.
    expect(page.locator("#test")).to_contain_text("why_not(other='udon')", timeout=30_000)
    expect(page.locator("#test")).to_contain_text("Asked why not udon")
    first_words = " ".join(transcript[4]["content"].split()[:3])
    expect(page.locator("#chat")).to_contain_text("Why not udon?", timeout=30_000)
    expect(page.locator("#chat")).to_contain_text(first_words, timeout=30_000)
    assert page.locator("#status textarea").input_value().startswith("bowl_a.png: ")  # still shown
    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # Another browser session sees none of this conversation.
    other = browser.new_context().new_page()
    other.goto(url)
    other.locator("#question textarea").fill("What did the other user ask?")
    other.locator("#ask").click()
    expect(other.locator("#status textarea")).to_have_value(
        re.compile("upload a photo first"), timeout=30_000
    )
    assert "Why not udon?" not in other.locator("#chat").inner_text()


@pytest.mark.slow
def test_bad_uploads_are_explained_in_the_page(
    server: tuple[str, Path], browser, work: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    url, _ = server
    big = tmp_path / "huge.png"
    Image.new("RGB", (1500, 1000)).save(big)
    for upload, message in (
        (work / "notes.txt", "notes.txt is not an image"),
        (big, "more than the 1,000,000"),
    ):
        page = browser.new_page()  # a fresh page: the file box holds its last upload
        page.goto(url)
        page.locator("#photo input[type=file]").set_input_files(str(upload))
        expect(page.locator("#status textarea")).to_have_value(re.compile(message), timeout=60_000)
        page.close()


@pytest.mark.slow
def test_a_missing_checkpoint_stops_the_app_with_a_clear_message(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "noodlenext.app", "ckpt_path=/nowhere/model.ckpt", "llm=none",
         f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0 and "/nowhere/model.ckpt" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_an_example_can_be_picked_and_the_overlay_reblended(server: tuple[str, Path], browser) -> None:
    from playwright.sync_api import expect

    url, _ = server
    page = browser.new_page()
    page.goto(url)
    page.locator("#example input").click()
    page.get_by_role("option", name=re.compile("bowl_b.png")).click()
    expect(page.locator("#status textarea")).to_have_value(re.compile(r"bowl_b.png: \w+"), timeout=120_000)
    before = page.locator("#scorecam img").get_attribute("src")
    page.locator("#alpha input[type=range]").fill("0.9")
    page.locator("#alpha input[type=range]").dispatch_event("pointerup")
    expect(page.locator("#scorecam img")).not_to_have_attribute("src", before, timeout=30_000)


@pytest.mark.slow
def test_binding_beyond_loopback_warns(work: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "noodlenext.app", f"ckpt_path={work / 'run' / 'checkpoints' / 'tiny.ckpt'}",
         "llm=none", "app.host=0.0.0.0", f"app.port={free_port()}", f"hydra.run.dir={tmp_path}"],
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "noodlenext app on" in line:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert any(
        "app.host=0.0.0.0: the page" in line and "reachable from the network" in line for line in lines
    )


@pytest.mark.slow
def test_two_users_take_turns_and_a_slow_answer_stops_at_the_deadline(
    slow_server: tuple[str, Path], browser, work: Path
) -> None:
    from playwright.sync_api import expect

    url, run_dir = slow_server
    first, second = browser.new_context().new_page(), browser.new_context().new_page()
    for page in (first, second):
        page.goto(url)
    first.locator("#photo input[type=file]").set_input_files(str(work / "examples" / "bowl_a.png"))
    expect(first.locator("#explanation textarea")).to_have_value(
        re.compile("writing the explanation"), timeout=120_000
    )  # the classifier is done, the language model is writing: the second user has to wait
    (first_folder,) = (run_dir / "sessions").iterdir()
    second.locator("#photo input[type=file]").set_input_files(str(work / "examples" / "bowl_b.png"))
    expect(second.locator("#status")).to_contain_text(
        re.compile(r"queue: 1/\d"), timeout=SLOW_TIMEOUT_S * 1000
    )

    # The first answer stops at the deadline: the template's explanation, marked, and the reason.
    past = f"the language model ran past the {SLOW_TIMEOUT_S} s limit (app.generation_timeout_s)"
    expect(first.locator("#explanation textarea")).to_have_value(
        re.compile(re.escape(f"(from the evidence template: {past}")), timeout=30_000
    )
    expect(first.locator("#status textarea")).to_have_value(re.compile(re.escape(f"⚠ {past}")))
    # Then the second user's turn: the photo classified and an explanation.
    expect(second.locator("#status textarea")).to_have_value(re.compile(r"bowl_b.png: \w+"), timeout=60_000)
    expect(second.locator("#explanation textarea")).to_have_value(re.compile(re.escape(past)), timeout=60_000)
    saved = json.loads(next(p for p in (run_dir / "sessions").glob("*/chat.json")
                            if p.parent != first_folder).read_text())  # fmt: skip
    assert [m["role"] for m in saved["transcript"]] == ["system", "user", "assistant"]
    assert saved["metadata"]["stopped"] == [{"turn": 2, "after_s": SLOW_TIMEOUT_S, "source": "template"}]

    # A question over app.max_question_chars is refused in the page and never reaches the model.
    second.locator("#question textarea").fill("Why? " * 30)
    second.locator("#ask").click()
    expect(second.locator("body")).to_contain_text("more than the 120 allowed (app.max_question_chars)")
    time.sleep(1)
    (second_chat,) = [p for p in (run_dir / "sessions").glob("*/chat.json") if p.parent != first_folder]
    assert len(json.loads(second_chat.read_text())["transcript"]) == 3

    # The first user leaves: their session's folder goes with their state.
    first.context.close()
    deadline = time.monotonic() + 30
    while first_folder.exists() and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not first_folder.exists() and second_chat.is_file()


@pytest.mark.slow
def test_a_slow_scorecam_shows_gradcam_first_then_a_preview_and_its_progress_and_can_be_stopped(
    slow_maps_server: tuple[str, Path], browser, work: Path
) -> None:
    from playwright.sync_api import expect

    url, run_dir = slow_maps_server
    page = browser.new_page()
    page.goto(url)
    page.locator("#photo input[type=file]").set_input_files(str(work / "examples" / "bowl_a.png"))
    # The prediction and GradCAM at once; ScoreCAM's box first shows a preview from a few channels.
    expect(page.locator("#status textarea")).to_have_value(re.compile(r"bowl_a.png: \w+ \(\d+%\)"),
                                                            timeout=60_000)  # fmt: skip
    assert page.locator("#gradcam img").get_attribute("src")
    expect(page.locator("#progress")).to_contain_text("exact ScoreCAM:", timeout=60_000)
    expect(page.locator("#scorecam")).to_contain_text("ScoreCAM preview from the 32 most active of 320")
    expect(page.locator("#progress")).to_contain_text(re.compile(r"masked images, .* so far, about .* left"))
    fill = float(page.locator("#progress progress").get_attribute("value"))
    assert 0 <= fill < 1
    # Stopped midway: what was shown stays, and the page says what is missing.
    page.locator("#stop").click()
    expect(page.locator("#status textarea")).to_have_value(
        re.compile("stopped during the exact ScoreCAM map"), timeout=30_000
    )
    expect(page.locator("#explanation textarea")).to_have_value(re.compile(r"^\(stopped: "))
    assert page.locator("#gradcam img").get_attribute("src") and page.locator("#scorecam img").count() == 1
    assert not any((run_dir / "sessions").iterdir())  # nothing saved for a stopped analysis

    # Left to run, the exact map replaces the preview, labelled as ScoreCAM, with the preview's measured
    # correlation to it and the time each stage took.
    page.locator("#example input").click()
    page.get_by_role("option", name=re.compile("bowl_b.png")).click()
    expect(page.locator("#progress")).to_contain_text(
        re.compile(r"^\s*Shown: prediction and GradCAM after .*, ScoreCAM preview after .*\(r = -?\d\.\d\d "
                   r"with the exact map\), exact ScoreCAM after"), timeout=120_000,
    )  # fmt: skip
    expect(page.locator("#scorecam")).to_contain_text("ScoreCAM (predicted class)")
    expect(page.locator("#evidence textarea")).to_have_value(re.compile("^1. The classifier predicted"))

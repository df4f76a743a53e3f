"""The web app: its handlers called directly, and the page in a real browser (Debian's Chromium driven by
Playwright) against a real server in this process (the page served on a port the system picks); one test
starts `python -m noodlenext.app` itself.

Where a test needs the model "still busy" (a second user queued behind a long answer, a Stop during
ScoreCAM), the test holds it there (tests/gated.py, `Paced`) and decides when time is up
(`Deadline.expire`), so nothing depends on how fast the machine is.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import model_answered, run_main, save_tiny_checkpoint
from gated import Gated
from PIL import Image

import noodlenext.app as app_command
from noodlenext.app import (
    NoodleApp,
    PageLimits,
    SessionState,
    forget,
    image_files,
    listen,
    open_photo,
    page_server,
    page_url,
    run_examples,
)
from noodlenext.explain.photo import PhotoExplainer, Step
from noodlenext.explain.settings import HeatmapSettings
from noodlenext.llm.deadline import Deadline

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
    forget(SessionState(folder=folder))
    assert not folder.exists()
    forget(None)  # a session that never analysed a photo
    forget(SessionState(folder=folder))  # already gone
    forget(SessionState())  # one whose analysis never finished: no folder


def test_the_page_port_is_the_one_the_system_picked() -> None:
    with listen("127.0.0.1", 0) as listener:
        port = listener.getsockname()[1]
        assert port > 0 and page_url(listener) == f"http://127.0.0.1:{port}/"
        with pytest.raises(RuntimeError, match=rf"app.port={port}: cannot serve there .*app.port=0"):
            listen("127.0.0.1", port)  # taken: a clear error, not a second server on it


# ---------------------------------------------------------------------------- the analysis, as it is made
@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint (ConvNeXt-Atto at 64 px, untrained) in a run's checkpoints/, and example photos."""
    root = tmp_path_factory.mktemp("app")
    save_tiny_checkpoint(root / "run" / "checkpoints" / "tiny.ckpt", image_size=64)
    (root / "examples").mkdir()
    for name, colour in (("bowl_a.png", (200, 180, 120)), ("bowl_b.png", (120, 60, 40))):
        Image.new("RGB", (96, 80), colour).save(root / "examples" / name)
    (root / "notes.txt").write_text("not a photo")
    return root


def explainer_of(work: Path, **settings: Any) -> PhotoExplainer:
    # No preview unless asked: whether the exact map is slow enough for one would depend on the machine.
    settings = {"preview_after_s": float("inf"), **settings}
    return PhotoExplainer(
        work / "run" / "checkpoints" / "tiny.ckpt", "cpu", "both", HeatmapSettings(**settings)
    )


def test_the_page_shows_the_prediction_and_gradcam_before_scorecam_and_a_stop_keeps_them(
    work: Path, tmp_path: Path
) -> None:
    app = NoodleApp(explainer_of(work), None, {}, {}, tmp_path / "sessions", 10**6, [])
    app.build()
    ui = app.ui
    updates = app.analyze(str(work / "examples" / "bowl_a.png"), 0.5, None)
    first = next(updates)
    assert re.fullmatch(r"bowl_a.png: \w+ \(\d+%\)", first[ui.status])
    assert first[ui.gradcam] is not None and first[ui.scorecam] is None  # GradCAM first, ScoreCAM next
    assert "<progress" in first[ui.progress] and "and GradCAM in" in first[ui.progress]
    state = first[ui.state]
    assert isinstance(state, SessionState) and state.partial is not None and state.analysis is None
    assert "stopping" in app.stop(state)[ui.progress]
    rest = list(updates)  # the handler stops at its next step
    assert len(rest) == 1 and "stopped during the exact ScoreCAM map" in rest[0][ui.status]
    assert "stopped:" in rest[0][ui.explanation] and "prediction and GradCAM after" in rest[0][ui.progress]
    assert not (tmp_path / "sessions").exists()  # nothing saved for an analysis that did not finish
    # The shown maps stay and can still be reblended; a question is told why there is no chat.
    assert set(app.reblend(0.8, state)) == {ui.gradcam} and state.alpha == 0.8
    (asked,) = app.ask("why?", state)
    assert "the analysis was stopped" in asked[ui.status]

    # Left to run, the same photo ends with every map, the evidence and how long each stage took.
    *shown, last = app.analyze(str(work / "examples" / "bowl_a.png"), 0.5, state)
    assert any(u.get(ui.scorecam) is not None for u in shown) and last[ui.contrastive] is not None
    assert last[ui.evidence].startswith("1. The classifier predicted")
    assert re.search(
        r"Shown: prediction and GradCAM after \d+ s, exact ScoreCAM after \d+ s", last[ui.progress]
    )
    assert last[ui.state].analysis is not None and last[ui.state].folder.is_dir()
    assert app.stop(last[ui.state]) == {}  # nothing left to stop
    assert "(no language model: llm=none)" in last[ui.explanation]


def test_every_stage_is_shown_when_it_starts_however_fast_the_batches_come(
    work: Path, tmp_path: Path
) -> None:
    """The page redraws ScoreCAM's progress at most 5 times a second, but the start of each stage, and each
    map when it is done, always: what a reader sees does not depend on the machine's speed."""
    app = NoodleApp(explainer_of(work, preview_after_s=0.0), None, {}, {}, tmp_path / "sessions", 10**6, [])
    app.build()
    updates = app.analyze(str(work / "examples" / "bowl_b.png"), 0.5, None)
    progress = [u.get(app.ui.progress, "") for u in updates]
    for stage in ("and GradCAM in", "ScoreCAM preview: 0/", "ScoreCAM preview done", "exact ScoreCAM: 0/",
                  "testing the maps", "Shown: "):  # fmt: skip
        assert any(stage in p for p in progress), stage


# ---------------------------------------------------------------------------- the page in a browser
def wait_until(condition: Callable[[], Any], what: str, timeout_s: float = 120.0) -> Any:
    """Wait for something the test caused to happen (never for time to pass)."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s:g} s: {what}")
        time.sleep(0.05)
    return value


@contextmanager
def serving(app: NoodleApp, examples: list[str], queue_size: int = 16) -> Iterator[str]:
    """The page of `app` served from this process on a port the system picks, as serve() serves it;
    yields its URL."""
    page = app.build()
    page.queue(max_size=queue_size)
    listener = listen("127.0.0.1", 0)
    server = page_server(page, listener, 10, examples)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="page", daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), "the page server started", 60)
    assert thread.is_alive(), "the page server stopped at its start"
    try:
        yield page_url(listener)
    finally:
        server.should_exit = server.force_exit = True  # open tabs' connections are not waited for
        thread.join(timeout=30)
        listener.close()


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


@pytest.fixture(scope="module")
def e2e_sessions() -> Iterator[None]:
    """Gradio's own switch for its end-to-end tests: a closed tab's state goes after 1 s, not an hour."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_IS_E2E_TEST", "1")
        yield


def app_config(compose_cfg, *overrides: str) -> Any:  # noqa: ANN001
    return compose_cfg("app", ["ckpt_path=unused.ckpt", *overrides])


@pytest.mark.slow
def test_a_user_uploads_a_photo_reads_the_explanation_and_asks_a_follow_up(
    work: Path,
    tmp_path: Path,
    browser,
    smollm2,
    compose_cfg,
    e2e_sessions,  # noqa: ANN001
) -> None:
    from playwright.sync_api import expect

    cfg = app_config(compose_cfg, "llm=smollm2", "llm.max_new_tokens=24")
    sessions = tmp_path / "sessions"
    app = NoodleApp(explainer_of(work), smollm2, cfg.prompt, cfg.llm, sessions, 10**6, [],
                    PageLimits.of(cfg.app))  # fmt: skip
    with serving(app, []) as url:
        page = browser.new_page()
        page.goto(url)
        page.locator("#photo input[type=file]").set_input_files(str(work / "examples" / "bowl_a.png"))
        expect(page.locator("#status textarea")).to_have_value(
            re.compile(r"bowl_a.png: \w+ \(\d+%\)"), timeout=120_000
        )
        assert re.search(r"is in the|empty", page.locator("#facts textarea").input_value())
        expect(page.locator("#download-transcript")).to_be_visible()
        saved = wait_until(lambda: next(sessions.glob("*/chat.json"), None), "the session's chat.json")
        chat = json.loads(saved.read_text())
        (record,) = chat["metadata"]["grounding"]
        assert model_answered(record), record  # SmolLM2 wrote it (and the gate kept it, or the template)
        explanation = chat["transcript"][2]["content"]
        mark = (
            "checked against the evidence" if record["source"] != "template" else "from the evidence template"
        )
        expect(page.locator("#explanation textarea")).to_have_value(
            re.compile(re.escape(f"{explanation}\n\n({mark}")), timeout=30_000
        )
        # The evidence the model produced, numbered; every map (the contrastive one too) at least 320 px.
        assert page.locator("#evidence textarea").input_value().startswith("1. The classifier predicted")
        for box in ("#photo-view", "#scorecam", "#gradcam", "#contrastive"):
            assert page.locator(f"{box} img").get_attribute("src")
            assert page.locator(box).bounding_box()["height"] >= 320, box
            # The 64 px model's maps fill their box, not a 64 px stamp in its middle.
            assert page.locator(f"{box} img").bounding_box()["height"] >= 240, box

        page.locator("#question textarea").fill("Why not udon?")
        page.locator("#ask").click()
        wait_until(lambda: len(json.loads(saved.read_text())["transcript"]) >= 5, "the follow-up's answer")
        chat = json.loads(saved.read_text())
        transcript = chat["transcript"]
        assert [m["role"] for m in transcript[3:]] == ["user", "assistant"]
        assert transcript[3]["content"].startswith("Why not udon?")  # with the test's lines, as sent
        assert model_answered(chat["metadata"]["grounding"][1])
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
        other.context.close()


@pytest.fixture(scope="module")
def plain_page(work: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The page with no language model, its examples the two bowls."""
    examples = image_files(sorted((work / "examples").iterdir()))
    sessions = tmp_path_factory.mktemp("plain") / "sessions"
    app = NoodleApp(explainer_of(work), None, {}, {}, sessions, 10**6, examples)
    with serving(app, examples) as url:
        yield url


@pytest.mark.slow
def test_bad_uploads_are_explained_in_the_page(plain_page: str, browser, work: Path, tmp_path: Path) -> None:  # noqa: ANN001
    from playwright.sync_api import expect

    big = tmp_path / "huge.png"
    Image.new("RGB", (1500, 1000)).save(big)
    for upload, message in (
        (work / "notes.txt", "notes.txt is not an image"),
        (big, "more than the 1,000,000"),
    ):
        page = browser.new_page()  # a fresh page: the file box holds its last upload
        page.goto(plain_page)
        page.locator("#photo input[type=file]").set_input_files(str(upload))
        expect(page.locator("#status textarea")).to_have_value(re.compile(message), timeout=60_000)
        page.close()


@pytest.mark.slow
def test_an_example_can_be_picked_and_the_overlay_reblended(plain_page: str, browser) -> None:  # noqa: ANN001
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(plain_page)
    page.locator("#example input").click()
    page.get_by_role("option", name=re.compile("bowl_b.png")).click()
    expect(page.locator("#status textarea")).to_have_value(re.compile(r"bowl_b.png: \w+"), timeout=120_000)
    expect(page.locator("#explanation textarea")).to_have_value(
        re.compile("no language model"), timeout=60_000
    )
    before = page.locator("#scorecam img").get_attribute("src")
    page.locator("#alpha input[type=range]").fill("0.9")
    page.locator("#alpha input[type=range]").dispatch_event("pointerup")
    expect(page.locator("#scorecam img")).not_to_have_attribute("src", before, timeout=30_000)
    page.close()


def test_a_missing_checkpoint_stops_the_app_with_a_clear_message(tmp_path: Path) -> None:
    status, output = run_main(
        app_command.main, "ckpt_path=/nowhere/model.ckpt", "llm=none", f"hydra.run.dir={tmp_path}"
    )
    assert status != 0 and "/nowhere/model.ckpt" in output and "Traceback" not in output


@pytest.mark.slow
def test_the_command_serves_on_the_port_it_prints_warns_beyond_loopback_and_cleans_up_on_sigterm(
    work: Path, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "noodlenext.app", f"ckpt_path={work / 'run' / 'checkpoints' / 'tiny.ckpt'}",
         "llm=none", "app.host=0.0.0.0", "app.port=0", f"hydra.run.dir={tmp_path}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    address = threading.Event()

    def read() -> None:  # the output, read in a thread: a wait for a line has a deadline
        for line in proc.stdout:
            lines.append(line)
            if "noodlenext app on" in line:
                address.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert address.wait(timeout=180), "".join(lines)[-4000:]
        (url,) = re.findall(r"noodlenext app on (http://\S+)", "".join(lines))
        assert re.fullmatch(r"http://localhost:\d+/", url) and not url.endswith(":0/")
        with urllib.request.urlopen(url, timeout=60) as answer:
            assert answer.status == 200 and b"noodlenext" in answer.read()
        assert (tmp_path / "sessions").is_dir()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()
        reader.join(timeout=10)
    output = "".join(lines)
    assert "app.host=0.0.0.0: the page" in output and "reachable from the network" in output
    assert not (tmp_path / "sessions").exists()  # the sessions' folder went with the server


# ---------------------------------------------------------------------------- sharing one model
TIMEOUT_S = 600  # the page's generation_timeout_s: far away; the test expires answers itself


@pytest.mark.slow
def test_two_users_take_turns_and_a_slow_answer_stops_at_the_deadline(
    work: Path,
    tmp_path: Path,
    browser,
    tiny_llms,
    compose_cfg,
    e2e_sessions,  # noqa: ANN001
) -> None:
    from playwright.sync_api import expect

    from noodlenext.llm.transformers_backend import TransformersBackend

    # A language model that answers only when the test says so, and deadlines the test expires.
    gated = Gated(TransformersBackend(str(tiny_llms["endless"]), device="cpu"))
    deadlines: list[Deadline] = []

    def deadline(backend: Any, seconds: float) -> Deadline:
        deadlines.append(Deadline(backend, seconds))
        return deadlines[-1]

    def expire_answer(n: int) -> None:
        """Expire the n-th answer (1-based) once it is waiting for the model."""
        wait_until(lambda: gated.asked >= n and len(deadlines) >= min(n, 2), f"answer {n} under way")
        deadlines[-1].expire()

    cfg = app_config(compose_cfg, "llm=transformers", f"llm.model={tiny_llms['endless']}",
                     f"app.generation_timeout_s={TIMEOUT_S}", "app.max_question_chars=120")  # fmt: skip
    sessions = tmp_path / "sessions"
    limits = PageLimits.of(cfg.app)
    app = NoodleApp(
        explainer_of(work), gated, cfg.prompt, cfg.llm, sessions, 10**6, [], limits, deadline=deadline
    )
    try:
        with serving(app, []) as url:
            first, second = browser.new_context().new_page(), browser.new_context().new_page()
            for page in (first, second):
                page.goto(url)
            first.locator("#photo input[type=file]").set_input_files(str(work / "examples" / "bowl_a.png"))
            expect(first.locator("#explanation textarea")).to_have_value(
                re.compile("writing the explanation"), timeout=120_000
            )  # the classifier is done, the language model is writing: the second user has to wait
            (first_folder,) = sessions.iterdir()
            second.locator("#photo input[type=file]").set_input_files(str(work / "examples" / "bowl_b.png"))
            expect(second.locator("#status")).to_contain_text(re.compile(r"queue: 1/\d"), timeout=60_000)

            # The first answer stops at the deadline: the template's explanation, marked, and the reason.
            expire_answer(1)
            past = f"the language model ran past the {TIMEOUT_S} s limit (app.generation_timeout_s)"
            expect(first.locator("#explanation textarea")).to_have_value(
                re.compile(re.escape(f"(from the evidence template: {past}")), timeout=60_000
            )
            expect(first.locator("#status textarea")).to_have_value(re.compile(re.escape(f"⚠ {past}")))
            # Then the second user's turn: the photo classified and an explanation.
            expect(second.locator("#status textarea")).to_have_value(
                re.compile(r"bowl_b.png: \w+"), timeout=120_000
            )
            expire_answer(2)
            expect(second.locator("#explanation textarea")).to_have_value(
                re.compile(re.escape(past)), timeout=60_000
            )
            second_chat = wait_until(
                lambda: next((p for p in sessions.glob("*/chat.json") if p.parent != first_folder), None),
                "the second session's chat.json",
            )
            saved = json.loads(second_chat.read_text())
            assert [m["role"] for m in saved["transcript"]] == ["system", "user", "assistant"]
            assert saved["metadata"]["stopped"] == [{"turn": 2, "after_s": TIMEOUT_S, "source": "template"}]
            assert gated.asked == 2  # each answer asked the model once: the retry came too late to ask

            # A question over app.max_question_chars is refused in the page and never reaches the model:
            # the next question is the first one the conversation (and the model) gets.
            second.locator("#question textarea").fill("Why? " * 30)
            second.locator("#ask").click()
            expect(second.locator("body")).to_contain_text(
                "more than the 120 allowed (app.max_question_chars)"
            )
            second.locator("#question textarea").fill("Is it udon?")
            second.locator("#ask").click()
            expire_answer(3)
            wait_until(lambda: len(json.loads(second_chat.read_text())["transcript"]) >= 5, "the follow-up")
            asked = [
                m["content"] for m in json.loads(second_chat.read_text())["transcript"] if m["role"] == "user"
            ]
            assert len(asked) == 2 and asked[1].startswith("Is it udon?")
            assert gated.asked == 3

            # The first user leaves: their session's folder goes with their state.
            first.context.close()
            wait_until(lambda: not first_folder.exists(), "the closed session's folder removed", 60)
            assert second_chat.is_file()
            second.context.close()
    finally:
        gated.release()  # the threads still waiting for the model end


class Paced:
    """A PhotoExplainer whose analysis waits, once, right after exact ScoreCAM has started (the page shows
    its progress then), until `release()`: the test decides how long ScoreCAM "takes"."""

    def __init__(self, explainer: PhotoExplainer) -> None:
        self.explainer = explainer
        self.image_size, self.probe = explainer.image_size, explainer.probe
        self.released, self.waiting = threading.Event(), threading.Event()

    def release(self) -> None:
        self.released.set()

    def steps(self, photo: Image.Image) -> Iterator[Step]:
        steps = self.explainer.steps(photo)
        try:
            for step in steps:
                yield step
                if step.stage == "scorecam" and step.progress.maps is None and not self.released.is_set():
                    self.waiting.set()
                    self.released.wait()
        finally:
            steps.close()


@pytest.mark.slow
def test_a_slow_scorecam_shows_gradcam_first_then_a_preview_and_its_progress_and_can_be_stopped(
    work: Path,
    tmp_path: Path,
    browser,  # noqa: ANN001
) -> None:
    from playwright.sync_api import expect

    paced = Paced(explainer_of(work, preview_after_s=0.0))  # a preview however quick the machine
    examples = image_files(sorted((work / "examples").iterdir()))
    sessions = tmp_path / "sessions"
    app = NoodleApp(paced, None, {}, {}, sessions, 10**6, examples)
    try:
        with serving(app, examples) as url:
            page = browser.new_page()
            page.goto(url)
            page.locator("#photo input[type=file]").set_input_files(str(work / "examples" / "bowl_a.png"))
            # The prediction and GradCAM at once; ScoreCAM's box first shows a preview from a few channels.
            expect(page.locator("#status textarea")).to_have_value(
                re.compile(r"bowl_a.png: \w+ \(\d+%\)"), timeout=60_000
            )
            assert page.locator("#gradcam img").get_attribute("src")
            expect(page.locator("#progress")).to_contain_text("exact ScoreCAM:", timeout=60_000)
            wait_until(paced.waiting.is_set, "ScoreCAM under way")  # and so it stays until the test says
            expect(page.locator("#scorecam")).to_contain_text(
                re.compile(r"ScoreCAM preview from the 32 most active of \d+ channels")
            )
            expect(page.locator("#progress")).to_contain_text(
                re.compile(r"masked images, .* so far, about .* left")
            )
            fill = float(page.locator("#progress progress").get_attribute("value"))
            assert 0 <= fill < 1
            # Stopped midway: what was shown stays, and the page says what is missing.
            page.locator("#stop").click()
            expect(page.locator("#progress")).to_contain_text(
                "stopping after the current batch", timeout=30_000
            )
            paced.release()  # the current batch ends
            expect(page.locator("#status textarea")).to_have_value(
                re.compile("stopped during the exact ScoreCAM map"), timeout=60_000
            )
            expect(page.locator("#explanation textarea")).to_have_value(re.compile(r"^\(stopped: "))
            assert (
                page.locator("#gradcam img").get_attribute("src")
                and page.locator("#scorecam img").count() == 1
            )
            assert not sessions.exists() or not any(
                sessions.iterdir()
            )  # nothing saved for a stopped analysis

            # Left to run, the exact map replaces the preview, labelled as ScoreCAM, with the preview's
            # measured correlation to it and the time each stage took.
            page.locator("#example input").click()
            page.get_by_role("option", name=re.compile("bowl_b.png")).click()
            shown = (r"^\s*Shown: prediction and GradCAM after .*, ScoreCAM preview after .*\(r = -?\d\.\d\d "
                     r"with the exact map\), exact ScoreCAM after")  # fmt: skip
            expect(page.locator("#progress")).to_contain_text(re.compile(shown), timeout=120_000)
            expect(page.locator("#scorecam")).to_contain_text("ScoreCAM (predicted class)")
            expect(page.locator("#evidence textarea")).to_have_value(
                re.compile("^1. The classifier predicted")
            )
            page.close()
    finally:
        paced.release()

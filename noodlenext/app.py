"""python -m noodlenext.app ckpt_path=...: a local web page to classify a photo, see its heatmaps and chat.

Built on the public API only: PhotoExplainer classifies and computes heatmaps, evidence_session and
ChatSession hold the conversation. Each browser session keeps its own state (gr.State) and files.

On a CPU an exact ScoreCAM map of a big model takes minutes, so the page shows the work as it is done
(`PhotoExplainer.steps`): the prediction and GradCAM at once, then ScoreCAM's progress with the time left
(a preview from a few channels first, labelled as one), then the evidence and the explanation; the Stop
button (or a new photo) ends an analysis after its current batch, and what was shown stays.

Sharing one model between users: every event that uses the classifier or the language model waits in
Gradio's queue (one concurrency group, one event at a time, at most `app.queue_size` waiting, each
waiting page shown its place); every answer stops at `app.generation_timeout_s` (`Deadline`), so one
slow or hung generation holds the others up no longer than that; questions longer than
`app.max_question_chars` are refused before they queue. A session's folder goes with its state (a
closed tab's an hour later, an idle one's after `app.session_ttl_s`), Gradio's cached files after
`app.cache_max_age_s`, and everything when the server stops.
"""

from __future__ import annotations

import html
import json
import logging
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError

from noodlenext.core.config import CONFIG_DIR
from noodlenext.core.durations import clock
from noodlenext.core.ownership import new_folder
from noodlenext.data.images import IMAGE_EXTENSIONS, check_image, find_images, load_rgb
from noodlenext.explain.photo import PhotoAnalysis, PhotoExplainer, Step
from noodlenext.explain.settings import HeatmapSettings
from noodlenext.explain.templates import photo_template
from noodlenext.llm.base import Backend, text_of
from noodlenext.llm.deadline import Deadline
from noodlenext.llm.followups import FollowupAnswer, answer_followup
from noodlenext.llm.load import load_backend
from noodlenext.llm.prompt import PromptSettings
from noodlenext.llm.session import evidence_session

if TYPE_CHECKING:
    from noodlenext.explain.evidence import Evidence
    from noodlenext.explain.probes import PhotoProbe
    from noodlenext.llm.session import ChatSession

log = logging.getLogger(__name__)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def open_photo(path: str | Path, max_pixels: int, size: int | None = None) -> Image.Image:
    """The upload as RGB (upright; a JPEG decoded in draft mode for a resize to `size`, the model's input
    side), or a ValueError a person can act on (never a stack trace)."""
    name = Path(path).name
    try:
        with Image.open(path) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise ValueError(
                    f"{name} is {width}×{height} pixels, more than the {max_pixels:,} allowed "
                    "(app.max_pixels): scale it down and upload it again"
                )
        problem, _ = check_image(Path(path))  # what the data doctor refuses, the page refuses too
        if problem is not None:
            raise ValueError(f"{name} is a damaged image ({problem}): try another file")
        return load_rgb(path, size)
    except UnidentifiedImageError:
        raise ValueError(f"{name} is not an image: upload a photo (JPEG, PNG, WebP, ...)") from None
    except Image.DecompressionBombError:
        raise ValueError(f"{name} is too large to open safely: scale it down and upload it again") from None
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{name} is a damaged image ({err}): try another file") from None


def run_examples(ckpt_path: str | Path) -> list[str]:
    """The checkpoint run's worst test mistakes (explanations.jsonl, else heatmaps.json), image files
    that exist."""
    run_dir = Path(ckpt_path).expanduser().resolve().parent.parent
    files: list[str | None] = []
    if (run_dir / "explanations.jsonl").is_file():
        lines = (run_dir / "explanations.jsonl").read_text().splitlines()
        files = [json.loads(line).get("file") for line in lines]  # None: a record that failed early
    elif (run_dir / "heatmaps" / "test" / "heatmaps.json").is_file():
        samples = json.loads((run_dir / "heatmaps" / "test" / "heatmaps.json").read_text())["samples"]
        files = [s["file"] for s in samples]
    return image_files(f for f in files if f)


def image_files(paths: Iterable[str | Path]) -> list[str]:
    """The paths that are image files (by extension) and exist, once each, in order: the only files the
    page offers and lets Gradio serve (allowed_paths)."""
    kept = (str(p) for p in paths if Path(p).suffix.lower() in IMAGE_EXTENSIONS and Path(p).is_file())
    return list(dict.fromkeys(kept))


@dataclass(frozen=True)
class PageLimits:
    """How the page shares its one model between users (conf/app.yaml, `app.*`)."""

    queue_size: int = 16  # events waiting for the model at most; more are told the queue is full
    generation_timeout_s: float = 120.0  # the longest one answer (its retry included) may take
    max_question_chars: int = 500  # longer follow-up questions are refused, not sent
    session_ttl_s: float = 3600.0  # an idle session's state (and folder) is removed after this
    cache_every_s: int = 600  # how often Gradio's cached files are checked
    cache_max_age_s: int = 3600  # ... and removed once this old

    @classmethod
    def of(cls, app: Any) -> PageLimits:
        """The limits in an `app` config; a clear error naming the option for a value that is not > 0."""
        values = {}
        for name, default in cls.__dataclass_fields__.items():
            value = app.get(name, default.default)
            kind = int if isinstance(default.default, int) else float
            try:
                number = kind(value)
            except (TypeError, ValueError):
                number = 0
            if not number > 0 or (kind is int and number != value):
                raise ValueError(f"app.{name}={value}: use a {'whole ' if kind is int else ''}number > 0")
            values[name] = number
        return cls(**values)


@dataclass
class SessionState:
    """What one browser session keeps between events (Gradio's gr.State holds it): the photo it analyses,
    that analysis's files and conversation. A new photo starts a new one."""

    status: str = ""  # the status line
    stop: threading.Event = field(default_factory=threading.Event)  # set: end the analysis after its batch
    partial: PhotoAnalysis | None = None  # the analysis so far, while it runs (and after a stop)
    analysis: PhotoAnalysis | None = None  # the finished analysis
    stopped: bool = False  # the analysis was stopped before it finished
    alpha: float | None = None  # the opacity the slider was moved to while the analysis ran
    folder: Path | None = None  # the session's files (photo, overlay, chat.json): removed with the session
    probe: PhotoProbe | None = None  # the tests a follow-up can run on the photo
    evidence: Evidence | None = None  # the evidence so far: each follow-up's test joins it
    session: ChatSession | None = None  # the conversation; None: no language model, or no first answer
    clock: Deadline | None = None  # the deadline every answer of this session runs under
    failed: str | None = None  # why there is no conversation, when the language model failed
    shown: dict[int, str] = field(default_factory=dict)  # transcript index -> what the chat shows there
    test: FollowupAnswer | None = None  # the test the last follow-up ran, until it is shown


# Handlers return {component: new value}; components left out keep what they show (Gradio skips them).
Updates = dict[Any, Any]


@dataclass(frozen=True)
class PageComponents:
    """The components the handlers update, made by NoodleApp.build (Gradio is imported only there)."""

    state: Any  # gr.State, per browser session: a SessionState (None until the first photo)
    status: Any
    probabilities: Any
    photo: Any
    scorecam: Any
    gradcam: Any
    contrastive: Any
    facts: Any
    evidence: Any
    neighbours: Any
    explanation: Any
    chat: Any
    question: Any
    overlay_file: Any
    transcript_file: Any
    test: Any  # the test the last follow-up ran, in lines
    test_image: Any  # and its picture, beside the words
    progress: Any  # how far the analysis is: a bar, what runs, the time left; the stages' times after


class NoodleApp:
    """The page's behaviour, one method per event; the model and LLM are shared, conversations are not.

    Model work is serialised by Gradio's queue (`build`: one concurrency group, one event at a time), so
    the handlers take no lock; each session's answers go through its own `Deadline` over the backend
    (`deadline(backend, app.generation_timeout_s)`: a test hands in one that it expires itself).
    """

    def __init__(
        self,
        explainer: PhotoExplainer,
        backend: Backend | None,
        prompt: Any,
        llm: Any,
        work_dir: Path,
        max_pixels: int,
        examples: list[str],
        limits: PageLimits | None = None,
        deadline: Callable[[Backend, float], Deadline] = Deadline,
    ) -> None:
        self.explainer, self.backend, self.prompt, self.llm = explainer, backend, prompt, llm
        self.work_dir, self.max_pixels, self.examples = work_dir, max_pixels, examples
        self.limits = limits or PageLimits()
        self.deadline = deadline
        self.ui: PageComponents | None = None  # set by build()

    # ---------------------------------------------------------------------------- events
    def analyze(self, path: str | None, alpha: float, state: SessionState | None) -> Iterator[Updates]:
        """Classify and show GradCAM at once, then ScoreCAM with its progress (a preview first when the
        exact map takes long), then the evidence and the nearest training photos, then the explanation
        once the grounding gate has checked it. `stop` (the Stop button, or a new photo) ends it after
        the current mask batch; what was shown stays."""
        ui = self.ui
        if not path:
            return
        try:
            photo = open_photo(path, self.max_pixels, self.explainer.image_size)
        except ValueError as err:  # clear the page; the session state (and its conversation) stays
            yield {
                ui.status: f"⚠ {err}",
                ui.probabilities: None,
                ui.photo: None,
                ui.scorecam: None,
                ui.gradcam: None,
                ui.contrastive: None,
                ui.facts: "",
                ui.evidence: "",
                ui.neighbours: [],
                ui.explanation: "",
                ui.chat: [],
                ui.overlay_file: None,
                ui.transcript_file: None,
                ui.progress: "",
            }
            return
        forget(state)  # the photo this session analysed before: its folder goes
        name = Path(path).name
        state = SessionState(status=f"{name}: analysing")
        steps = self.explainer.steps(photo)
        analysis = None
        shown_at, stage = 0.0, None
        try:
            for step in steps:
                if state.stop.is_set() and step.stage != "done":  # at "done" all is computed: show it
                    yield self._stopped(step, name, state)
                    return
                alpha = state.alpha if state.alpha is not None else alpha  # the slider, moved meanwhile
                update = self._step_shown(step, name, alpha, state)
                now = time.monotonic()
                # A tiny model's mask batches come every few ms: the page redraws at most 5 times a second,
                # but a new stage, and a map when it is done, at once.
                new = step.stage != stage or step.progress is None or step.progress.maps is not None
                if new or now - shown_at > 0.2:
                    shown_at, stage = now, step.stage
                    yield update
                analysis = step.analysis
        finally:
            steps.close()  # a closed tab or a stop: no forward pass after the current one
        folder = self.work_dir / uuid.uuid4().hex
        images = analysis.save_images(folder)
        status = f"{name}: {analysis.predicted} ({analysis.confidence:.0%})"
        state.probe = self.explainer.probe(analysis) if analysis.evidence is not None else None
        state.analysis, state.folder, state.status = analysis, folder, status
        state.evidence = analysis.evidence
        alpha = state.alpha if state.alpha is not None else alpha
        # ScoreCAM and GradCAM are shown (and maybe reblended) already: the contrastive map is new.
        contrastive = (
            _displayed(analysis.overlay("contrastive", alpha)) if analysis.contrastive is not None else None
        )
        shown = {
            ui.status: status,
            ui.probabilities: analysis.probabilities,
            ui.photo: _displayed(analysis.photo),
            ui.contrastive: contrastive,
            ui.facts: _facts_text(analysis),
            ui.evidence: "\n".join(analysis.evidence.lines()) if analysis.evidence else "",
            ui.neighbours: _neighbour_thumbnails(analysis),
            ui.chat: [],
            ui.overlay_file: images[1],
            ui.transcript_file: None,
            ui.test: "",
            ui.test_image: None,
            ui.progress: _progress_html(_timings_line(analysis), 1.0),
            ui.state: state,
        }
        if self.backend is None:
            yield {**shown, ui.explanation: "(no language model: llm=none)"}
            return
        state.clock = self.deadline(self.backend, self.limits.generation_timeout_s)
        state.session, first = evidence_session(state.clock, analysis.evidence, self.prompt, self.llm, images)
        session = state.session
        # Nothing unchecked reaches the reader: the text shows once the grounding gate has passed it.
        yield {**shown, ui.explanation: "(writing the explanation and checking it against the evidence…)"}
        shown_text, problem = self._answer(state, first, first=True)
        if problem is not None and len(session.transcript) < 3:  # no first answer: nothing to follow up
            state.session, state.failed = None, problem
        transcript = session.save(folder / "chat.json")
        yield {
            ui.explanation: shown_text,
            ui.chat: self._history(state) if state.session else [],
            ui.transcript_file: str(transcript),
            ui.state: state,
            ui.status: status if problem is None else f"{status} ⚠ {problem}",
        }

    def stop(self, state: SessionState | None) -> Updates:
        """The Stop button (and a new photo): the session's running analysis ends after its current mask
        batch. Runs outside the model's queue, so it is heard while the analysis runs."""
        if state is None or state.stop.is_set() or state.analysis is not None:
            return {}
        state.stop.set()
        return {
            self.ui.progress: _progress_html(
                "stopping after the current batch of masked images…", None, bar=False
            )
        }

    def _step_shown(self, step: Step, name: str, alpha: float, state: SessionState) -> Updates:
        """What the page shows at one step of the analysis: the first look, ScoreCAM's progress (and its
        preview, then the exact map), the evidence being gathered."""
        ui, a = self.ui, step.analysis
        state.status = status = f"{name}: {a.predicted} ({a.confidence:.0%})"
        state.partial = a
        if step.stage == "first look":
            return {
                ui.status: status,
                ui.probabilities: a.probabilities,
                ui.photo: _displayed(a.photo),
                **self._overlays(a, alpha),
                ui.facts: _facts_text(a),
                ui.evidence: "",
                ui.neighbours: [],
                ui.chat: [],
                ui.overlay_file: None,
                ui.transcript_file: None,
                ui.test: "",
                ui.test_image: None,
                ui.explanation: "(the explanation follows ScoreCAM and the model's tests)",
                ui.progress: _progress_html(step.describe(), 0.0),
                ui.state: state,
            }
        shown: Updates = {ui.progress: _progress_html(_progress_line(step), _fraction(step))}
        done = step.progress is not None and step.progress.maps is not None
        if done and step.stage == "preview":
            shown[ui.scorecam] = _labelled_image(a.overlay("preview", alpha), a.preview.describe())
        elif done and step.stage == "scorecam":
            shown[ui.scorecam] = _labelled_image(a.overlay("scorecam", alpha), SCORECAM_LABEL)
            shown[ui.facts] = _facts_text(a)
        return shown

    def _stopped(self, step: Step, name: str, state: SessionState) -> Updates:
        """The page after a stop: what was computed stays, the rest says it was stopped."""
        ui, a = self.ui, step.analysis
        where = STAGE_WORDS.get(step.stage, step.stage)
        state.stopped = True
        state.status = status = f"{name}: {a.predicted} ({a.confidence:.0%}) · stopped during {where}"
        why = (
            "stopped: the explanation and the chat need the exact ScoreCAM map and the model's tests; "
            "upload the photo again to run them"
        )
        return {
            ui.status: status,
            ui.explanation: f"({why})",
            ui.progress: _progress_html(f"{why}. {_timings_line(a)}", None, bar=False),
            ui.state: state,
        }

    def ask(self, question: str, state: SessionState | None) -> Iterator[Updates]:
        """A follow-up about the same photo, checked against the evidence, into the chat; clears the
        question box."""
        ui = self.ui
        session = state.session if state is not None else None
        if session is None:
            why = state.failed if state is not None else None
            message = (
                f"⚠ {why}: upload the photo again to retry"
                if why
                else ("⚠ upload a photo first (and choose an llm) to ask about it")
            )
            if state is not None and state.partial is not None and state.analysis is None:  # stopped/running
                message = f"{state.status} ⚠ " + (
                    "the analysis was stopped: upload the photo again to ask about it"
                    if state.stopped
                    else "the analysis is still running: ask once it is done"
                )
            yield {ui.chat: [], ui.transcript_file: None, ui.status: message}
            return
        status = state.status
        if not question.strip():
            yield {
                ui.chat: self._history(state),
                ui.question: "",
                ui.transcript_file: None,
                ui.status: status,
            }
            return
        too_long = self._too_long(question)
        if too_long:  # the validator stops it before the queue; an API call may not have run it
            yield {ui.status: f"{status} ⚠ {too_long}"}
            return
        history = [*self._history(state), {"role": "user", "content": question}]
        checking = {
            "role": "assistant",
            "content": "(answering and checking the answer against the evidence…)",
        }
        yield {ui.chat: [*history, checking], ui.question: "", ui.status: status}
        before = len(session.transcript)
        shown_text, problem = self._answer(state, question)
        transcript = session.save(state.folder / "chat.json")
        chat = self._history(state)
        if len(session.transcript) != before + 2:  # no answer was recorded: say why under the question
            if not chat or chat[-1] != {"role": "user", "content": question}:
                chat.append({"role": "user", "content": question})
            chat.append({"role": "assistant", "content": shown_text})
        test, picture = _test_shown(state.test)
        state.test = None
        yield {
            ui.chat: chat,
            ui.question: "",
            ui.transcript_file: str(transcript),
            ui.test: test,
            ui.test_image: picture,
            ui.status: status if problem is None else f"{status} ⚠ {problem}",
        }

    def check_question(self, question: str, state: SessionState | None) -> list[dict[str, Any]]:
        """Gradio's validator of `ask` (run before the event queues): a question over
        `app.max_question_chars` is refused with the reason under the question box, and not sent."""
        import gradio as gr

        too_long = self._too_long(question)
        return [gr.validate(not too_long, too_long or ""), gr.validate(True, "")]

    def _too_long(self, question: str) -> str | None:
        limit = self.limits.max_question_chars
        if len(question) <= limit:
            return None
        return (
            f"the question has {len(question):,} characters, more than the {limit:,} allowed "
            "(app.max_question_chars): shorten it"
        )

    def _answer(
        self, state: SessionState, question: str | list[dict[str, Any]], first: bool = False
    ) -> tuple[str, str | None]:
        """The session's gated answer to `question` (the `first` explanation or a follow-up), within the
        deadline: the text the reader sees, marked, and what went wrong (None: nothing).

        Past the deadline the model is stopped: what it wrote by then, if it passes the gate, is shown
        marked as cut short, else the template's explanation, marked. A model that fails: the template's
        explanation for the first question, a note for a follow-up, and the error.
        """
        session, clock, evidence = state.session, state.clock, state.evidence
        clock.arm()
        try:
            if first:
                result = session.ask_grounded(question, evidence, self._settings)
            else:  # run the test the question needs on the photo; its result joins the evidence
                followup = answer_followup(session, str(question), state.probe, evidence, self._settings)
                result, state.evidence, state.test = followup.text, followup.evidence, followup
                # The model got the question with the test's lines; the chat shows the question.
                state.shown[len(session.transcript) - 2] = str(question)
        except Exception as err:  # noqa: BLE001 - any backend failure: the page says so and stays usable
            log.error("the language model failed: %s: %s", type(err).__name__, err)
            problem = f"the language model failed ({type(err).__name__}: {err})"
            if not first:
                return f"(no answer: {problem})", problem
            template = photo_template(evidence, self._settings.max_words)
            return f"{template}\n\n(from the evidence template: {problem})", problem
        shown = result.for_reader()
        problem = None
        if clock.stopped:
            seconds = self.limits.generation_timeout_s
            problem = (
                f"the language model ran past the {seconds:g} s limit (app.generation_timeout_s) "
                "and was stopped"
            )
            if result.source == "template":
                shown = f"{result.text}\n\n(from the evidence template: {problem})"
            else:
                shown = f"{result.text}\n\n(cut short: {problem}; what it wrote by then passed the check)"
            session.metadata.setdefault("stopped", []).append(
                {"turn": len(session.transcript) - 1, "after_s": seconds, "source": result.source}
            )
        state.shown[len(session.transcript) - 1] = shown
        return shown, problem

    def reblend(self, alpha: float, state: SessionState | None) -> Updates:
        """The overlays at another opacity (of an analysis still running too: the maps it has so far)."""
        analysis = None if state is None else state.analysis or state.partial
        if analysis is None:
            return {}
        state.alpha = alpha  # what a running analysis blends its next maps with
        return {box: image for box, image in self._overlays(analysis, alpha).items() if image is not None}

    def _overlays(self, analysis: PhotoAnalysis, alpha: float) -> Updates:
        """Every overlay box: a map over the photo at opacity `alpha`, None for a map that is missing
        (while ScoreCAM runs its box shows the preview, when there is one)."""
        maps = {
            "scorecam": "scorecam"
            if "scorecam" in analysis.heatmaps
            else "preview"
            if analysis.preview is not None
            else None,
            "gradcam": "gradcam" if "gradcam" in analysis.heatmaps else None,
            "contrastive": "contrastive" if analysis.contrastive is not None else None,
        }
        boxes = {"scorecam": self.ui.scorecam, "gradcam": self.ui.gradcam, "contrastive": self.ui.contrastive}
        return {
            box: _displayed(analysis.overlay(maps[m], alpha)) if maps[m] else None for m, box in boxes.items()
        }

    @property
    def _settings(self) -> PromptSettings:
        """The prompt settings (the gate's longest answer, the retry's turn): the config's, else shipped."""
        return PromptSettings.of(self.prompt) if self.prompt else PromptSettings.default()

    @staticmethod
    def _history(state: SessionState) -> list[dict[str, str]]:
        """What the chat box shows: the follow-ups (the first explanation has its own box above), each
        answer marked with what the grounding gate said."""
        return [
            {"role": m["role"], "content": state.shown.get(i, text_of(m["content"]))}
            for i, m in enumerate(state.session.transcript)
            if i >= 3
        ]

    def build(self) -> Any:
        """The page. Model events (analyze, ask) share one concurrency group of one: they queue, and a
        waiting page shows its place (`queue: n/m`) on the components the event updates."""
        import gradio as gr

        limits = self.limits
        with gr.Blocks(
            title="noodlenext", delete_cache=(limits.cache_every_s, limits.cache_max_age_s)
        ) as page:
            gr.Markdown("## noodlenext: why did the classifier say that?")
            # Gradio drops a session's state an hour after its tab closes, or after session_ttl_s idle;
            # forget then removes the session's folder.
            state = gr.State(None, time_to_live=limits.session_ttl_s, delete_callback=forget)
            with gr.Row():
                with gr.Column(scale=1):
                    upload = gr.File(label="Photo (drop or click)", type="filepath", elem_id="photo")
                    example = gr.Dropdown(
                        self.examples, label="…or pick an example", value=None, elem_id="example"
                    )
                    status = gr.Textbox(label="Status", interactive=False, elem_id="status")
                    # On a CPU an exact ScoreCAM of a big model takes minutes: its progress, and a way out.
                    progress = gr.HTML("", elem_id="progress")
                    stop = gr.Button("Stop", variant="stop", size="sm", elem_id="stop")
                    probabilities = gr.Label(label="Class probabilities", elem_id="probabilities")
                with gr.Column(scale=2):
                    evidence = gr.Textbox(
                        label="Evidence: what the model's own tests show (the explanation cites these lines)",
                        interactive=False,
                        lines=10,
                        elem_id="evidence",
                    )
            # Each map at least 320 px: a heatmap too small to see explains nothing.
            big = {"interactive": False, "height": 320, "min_width": 320}
            with gr.Row():
                photo = gr.Image(label="Photo", elem_id="photo-view", **big)
                scorecam = gr.Image(label="ScoreCAM (predicted class)", elem_id="scorecam", **big)
                gradcam = gr.Image(label="GradCAM (predicted class)", elem_id="gradcam", **big)
                contrastive = gr.Image(
                    label="Contrastive (predicted over the other class)", elem_id="contrastive", **big
                )
            alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Heatmap opacity", elem_id="alpha")
            facts = gr.Textbox(label="Heatmap facts", interactive=False, lines=2, elem_id="facts")
            neighbours = gr.Gallery(
                label="Nearest training photos (the classifier's feature space)",
                columns=5,
                height=200,
                elem_id="neighbours",
            )
            explanation = gr.Textbox(label="Explanation", interactive=False, lines=4, elem_id="explanation")
            with gr.Row():
                chat = gr.Chatbot(label="Conversation", elem_id="chat", scale=2)
                with gr.Column(scale=1):
                    # A follow-up is answered by rerunning the model: the test and its result, beside it.
                    test = gr.Markdown("", elem_id="test", label="The test behind the last answer")
                    test_image = gr.Image(
                        label="The test behind the last answer", elem_id="test-image", **big
                    )
            with gr.Row():
                question = gr.Textbox(label="Ask a follow-up question", scale=4, elem_id="question")
                ask = gr.Button("Ask", variant="primary", scale=1, elem_id="ask")
            with gr.Row():
                overlay_file = gr.DownloadButton("Download overlay", elem_id="download-overlay")
                transcript_file = gr.DownloadButton("Download transcript", elem_id="download-transcript")

            self.ui = ui = PageComponents(
                state=state,
                status=status,
                probabilities=probabilities,
                photo=photo,
                scorecam=scorecam,
                gradcam=gradcam,
                contrastive=contrastive,
                facts=facts,
                evidence=evidence,
                neighbours=neighbours,
                explanation=explanation,
                chat=chat,
                question=question,
                overlay_file=overlay_file,
                transcript_file=transcript_file,
                test=test,
                test_image=test_image,
                progress=progress,
            )
            # Each event lists every component its handler may update (order no longer matters).
            analysis_outputs = [
                ui.status,
                ui.probabilities,
                ui.photo,
                ui.scorecam,
                ui.gradcam,
                ui.contrastive,
                ui.facts,
                ui.evidence,
                ui.neighbours,
                ui.explanation,
                ui.chat,
                ui.overlay_file,
                ui.transcript_file,
                ui.test,
                ui.test_image,
                ui.progress,
                ui.state,
            ]
            model = {"concurrency_id": MODEL_QUEUE, "concurrency_limit": 1, "show_progress": "full"}
            # Stopping uses no model: it is heard while an analysis runs. A new photo stops the old one.
            unqueued = {"concurrency_limit": None, "show_progress": "hidden"}
            stop.click(self.stop, [ui.state], [ui.progress], **unqueued)
            for new_photo, source in ((upload.upload, upload), (example.input, example)):
                new_photo(self.stop, [ui.state], [ui.progress], **unqueued)
                new_photo(self.analyze, [source, alpha, ui.state], analysis_outputs, **model)
            for event in (ask.click, question.submit):
                event(
                    self.ask,
                    [question, ui.state],
                    [ui.chat, ui.question, ui.transcript_file, ui.status, ui.test, ui.test_image],
                    validator=self.check_question,
                    **model,
                )
            # Re-blending uses no model: it never waits behind an answer.
            alpha.release(
                self.reblend,
                [alpha, ui.state],
                [ui.scorecam, ui.gradcam, ui.contrastive],
                concurrency_limit=None,
            )
        return page


MODEL_QUEUE = "model"  # the concurrency group of every event that uses the classifier or the LLM
SCORECAM_LABEL = "ScoreCAM (predicted class)"
STAGE_WORDS = {
    "preview": "the ScoreCAM preview",
    "scorecam": "the exact ScoreCAM map",
    "evidence": "the model's tests",
    "done": "the end",
}


def _facts_text(analysis: PhotoAnalysis) -> str:
    return "\n".join(f"{m}: {h.facts.describe()}" for m, h in analysis.heatmaps.items())


def _progress_line(step: Step) -> str:
    """ScoreCAM's progress in words; while a preview is shown, what it is."""
    preview = step.analysis.preview
    if step.stage == "scorecam" and preview is not None and step.progress.maps is None:
        return (
            f"The ScoreCAM box shows a preview from the {preview.top_k} most active of "
            f"{preview.channels} channels (approximate). {step.describe()}"
        )
    return step.describe()


def _fraction(step: Step) -> float | None:
    """The bar's fill: ScoreCAM's share of masked images done; None (a busy bar) for the model's tests."""
    return step.progress.fraction if step.progress is not None else None


def _timings_line(analysis: PhotoAnalysis) -> str:
    """How long each stage took, counted from the photo's arrival: what a reader waited for what."""
    t, preview = analysis.timings, analysis.preview
    parts = [f"prediction and GradCAM after {clock(t['first look'])}"]
    if preview is not None and "preview" in t:
        r = f" (r = {preview.correlation:.2f} with the exact map)" if preview.correlation is not None else ""
        parts.append(f"ScoreCAM preview after {clock(t['preview'])}{r}")
    if "scorecam" in t:
        parts.append(f"exact ScoreCAM after {clock(t['scorecam'])}")
    if "evidence" in t:
        parts.append(f"the model's tests after {clock(t['evidence'])}")
    return "Shown: " + ", ".join(parts) + "."


def _progress_html(text: str, fraction: float | None, bar: bool = True) -> str:
    """The progress panel: a bar (filled to `fraction`; None: busy, no measure) and a line of text."""
    if not bar:
        shown = ""
    elif fraction is None:
        shown = '<progress style="width:100%"></progress>'
    else:
        shown = f'<progress style="width:100%" value="{fraction:.4f}" max="1"></progress>'
    return f'<div class="analysis-progress">{shown}<p>{html.escape(text)}</p></div>'


DISPLAY_SIDE = 320  # the pictures' boxes: a 64 px model's maps are shown this big, not as 64 px stamps


def _displayed(image: Image.Image) -> Image.Image:
    """A picture enlarged (bicubic) to fill its box when it is smaller: at a small model's input size
    a heatmap is too small to read."""
    scale = DISPLAY_SIDE / max(image.size)
    if scale <= 1:
        return image
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)


def _labelled_image(image: Image.Image, label: str) -> Any:
    """An image update (enlarged to its box) that also renames the box (a preview is labelled as one)."""
    import gradio as gr

    return gr.Image(value=_displayed(image), label=label)


def forget(state: SessionState | None) -> None:
    """Remove a session's folder (its photo, overlay and chat.json): Gradio's State delete_callback, and
    when the session analyses another photo."""
    if state is not None and state.folder is not None:
        shutil.rmtree(state.folder, ignore_errors=True)


def _test_shown(followup: FollowupAnswer | None) -> tuple[str, Image.Image | None]:
    """The test a follow-up ran, as Markdown lines numbered as in the evidence, and its picture."""
    if followup is None or followup.call is None or followup.result is None:
        return "No test was run for this answer: it rests on the evidence above.", None
    finding = followup.result.finding
    numbers = followup.evidence.finding_lines(finding)
    args = ", ".join(f"{k}={v!r}" for k, v in followup.call.arguments.items())
    lines = "\n".join(f"{n}. {line}" for n, line in zip(numbers, finding.lines, strict=True))
    head = f"**Test run:** `{followup.call.name}({args})`, picked by the {followup.call.source}"
    caption = f"\n\n*Picture: {followup.result.caption}*" if followup.result.image is not None else ""
    picture = followup.result.image
    return f"{head}\n\n{lines}{caption}", _displayed(picture) if picture is not None else None


def _neighbour_thumbnails(analysis: PhotoAnalysis) -> list[tuple[Image.Image, str]]:
    """The nearest training photos that are still on disk, captioned with label and similarity."""
    found = analysis.evidence.neighbours if analysis.evidence else []
    return [(load_rgb(n.file), f"{n.label} ({n.similarity:.2f})") for n in found if Path(n.file).is_file()]


def serve(cfg: DictConfig) -> None:
    """Load the checkpoint and the LLM (clear errors in the terminal), then serve the page until Ctrl+C
    or SIGTERM; the session folders go with the server. `app.port=0`: a free port the system picks (the
    address is printed)."""
    limits = PageLimits.of(cfg.app)
    explainer = PhotoExplainer(
        cfg.ckpt_path,
        cfg.device,
        "both",
        HeatmapSettings.of(cfg.explain),
        calibration=cfg.get("calibration", "temperature"),
        trust_checkpoint=cfg.get("trust_checkpoint", False),
    )
    backend = load_backend(cfg.llm)
    examples = image_files(find_images(cfg.app.examples)) if cfg.app.examples else run_examples(cfg.ckpt_path)
    host = str(cfg.app.host)
    if host not in LOOPBACK:
        log.warning(
            "app.host=%s: the page (and your checkpoint's predictions) is reachable from the network", host
        )
    work_dir = new_folder(Path(cfg.paths.output_dir) / "sessions")  # created here: removed whole at the end
    try:
        app = NoodleApp(
            explainer, backend, cfg.prompt, cfg.llm, work_dir, int(cfg.app.max_pixels), examples, limits
        )
        page = app.build()
        page.queue(max_size=limits.queue_size)
        listener = listen(host, int(cfg.app.port))
        server = page_server(page, listener, int(cfg.app.max_upload_mb), examples)
        signal.signal(signal.SIGTERM, _interrupt)  # a stop from outside ends like Ctrl+C: cleaned up
        print(f"noodlenext app on {page_url(listener)}", flush=True)
        try:
            server.run(sockets=[listener])  # until Ctrl+C or SIGTERM (uvicorn shuts down, then re-raises)
        except KeyboardInterrupt:
            pass
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) and listening: the page's. Port 0: one the system picks, so a
    caller never has to guess a free one (`page_url` reads it back)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    try:
        return socket.create_server((host, port), family=family)
    except OSError as err:
        raise RuntimeError(
            f"app.host={host} app.port={port}: cannot serve there ({err}); app.port=0 picks a free port"
        ) from None


def page_url(listener: socket.socket) -> str:
    """The address a browser opens for the page on `listener`."""
    host, port = listener.getsockname()[:2]
    host = "localhost" if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/"


def page_server(page: Any, listener: socket.socket, max_upload_mb: int, allowed_paths: list[str]) -> Any:
    """A uvicorn server of the built page (its queue set up) for `listener`: `.run(sockets=[listener])`
    serves it until a signal or `should_exit`; `started` says when it answers. Gradio's own launch binds
    a port it chooses itself, so the page is mounted on a FastAPI app here instead (the same page, queue
    and file limits)."""
    import gradio as gr
    import uvicorn
    from fastapi import FastAPI

    app = gr.mount_gradio_app(
        FastAPI(),
        page,
        path="/",
        max_file_size=f"{max_upload_mb}mb",
        allowed_paths=allowed_paths,
        ssr_mode=False,
    )
    # An open tab keeps a connection: shut down after a few seconds rather than wait for it.
    return uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3))


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="app")
def main(cfg: DictConfig) -> None:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit("app: the web app needs Gradio: pip install 'noodlenext[app]'") from None
    try:
        serve(cfg)
    except (FileNotFoundError, ValueError, RuntimeError) as err:  # bad checkpoint or LLM: say so, no trace
        log.error("%s", err)
        raise SystemExit(f"app: {err}") from None


if __name__ == "__main__":
    main()

"""python -m noodlenext.app ckpt_path=...: a local web page to classify a photo, see its heatmaps and chat.

Built on the public API only: PhotoExplainer classifies and computes heatmaps, explain_session and
ChatSession hold the conversation. Each browser session keeps its own state (gr.State) and files.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError

from noodlenext.core.config import CONFIG_DIR
from noodlenext.data.images import find_images, load_rgb
from noodlenext.explain.photo import PhotoAnalysis, PhotoExplainer
from noodlenext.explain.settings import HeatmapSettings
from noodlenext.llm.base import Backend, text_of
from noodlenext.llm.grounding import FEEDBACK, MAX_WORDS
from noodlenext.llm.load import load_backend
from noodlenext.llm.session import evidence_session

log = logging.getLogger(__name__)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def open_photo(path: str | Path, max_pixels: int) -> Image.Image:
    """The upload as RGB, or a ValueError a person can act on (never a stack trace)."""
    name = Path(path).name
    try:
        with Image.open(path) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise ValueError(
                    f"{name} is {width}×{height} pixels, more than the {max_pixels:,} allowed "
                    "(app.max_pixels): scale it down and upload it again"
                )
            im.load()
    except UnidentifiedImageError:
        raise ValueError(f"{name} is not an image: upload a photo (JPEG, PNG, WebP, ...)") from None
    except Image.DecompressionBombError:
        raise ValueError(f"{name} is too large to open safely: scale it down and upload it again") from None
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{name} is a damaged image ({err}): try another file") from None
    return load_rgb(path)


def run_examples(ckpt_path: str | Path) -> list[str]:
    """The checkpoint run's worst test mistakes (explanations.jsonl, else heatmaps.json), files that exist."""
    run_dir = Path(ckpt_path).expanduser().resolve().parent.parent
    files: list[str] = []
    if (run_dir / "explanations.jsonl").is_file():
        files = [
            json.loads(line)["file"] for line in (run_dir / "explanations.jsonl").read_text().splitlines()
        ]
    elif (run_dir / "heatmaps" / "test" / "heatmaps.json").is_file():
        samples = json.loads((run_dir / "heatmaps" / "test" / "heatmaps.json").read_text())["samples"]
        files = [s["file"] for s in samples]
    return [f for f in dict.fromkeys(files) if Path(f).is_file()]


# Handlers return {component: new value}; components left out keep what they show (Gradio skips them).
Updates = dict[Any, Any]


@dataclass(frozen=True)
class PageComponents:
    """The components the handlers update, made by NoodleApp.build (Gradio is imported only there)."""

    state: Any  # gr.State, per browser session: analysis, folder, chat session, status line
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


class NoodleApp:
    """The page's behaviour, one method per event; the model and LLM are shared, conversations are not."""

    def __init__(
        self,
        explainer: PhotoExplainer,
        backend: Backend | None,
        prompt: Any,
        llm: Any,
        work_dir: Path,
        max_pixels: int,
        examples: list[str],
    ) -> None:
        self.explainer, self.backend, self.prompt, self.llm = explainer, backend, prompt, llm
        self.work_dir, self.max_pixels, self.examples = work_dir, max_pixels, examples
        self.lock = threading.Lock()  # one generation at a time: backends hold one model
        self.ui: PageComponents | None = None  # set by build()

    def analyze(self, path: str | None, alpha: float, state: dict | None) -> Iterator[Updates]:
        """Classify, show the maps, the evidence and the nearest training photos, then the explanation
        once the grounding gate has checked it."""
        ui = self.ui
        if not path:
            return
        try:
            photo = open_photo(path, self.max_pixels)
        except ValueError as err:  # clear the page; the session state (and its conversation) stays
            yield {ui.status: f"⚠ {err}", ui.probabilities: None, ui.photo: None, ui.scorecam: None,
                   ui.gradcam: None, ui.contrastive: None, ui.facts: "", ui.evidence: "", ui.neighbours: [],
                   ui.explanation: "", ui.chat: [], ui.overlay_file: None,
                   ui.transcript_file: None}  # fmt: skip
            return
        with self.lock:
            analysis = self.explainer(photo)
        folder = self.work_dir / uuid.uuid4().hex
        images = analysis.save_images(folder)
        status = f"{Path(path).name}: {analysis.predicted} ({analysis.confidence:.0%})"
        state = {"analysis": analysis, "folder": folder, "session": None, "status": status}
        shown = {
            ui.status: status,
            ui.probabilities: analysis.probabilities,
            ui.photo: analysis.photo,
            **self._overlays(analysis, alpha),
            ui.facts: "\n".join(f"{m}: {h.facts.describe()}" for m, h in analysis.heatmaps.items()),
            ui.evidence: "\n".join(analysis.evidence.lines()) if analysis.evidence else "",
            ui.neighbours: _neighbour_thumbnails(analysis),
            ui.chat: [],
            ui.overlay_file: images[1],
            ui.transcript_file: None,
            ui.state: state,
        }
        if self.backend is None:
            yield {**shown, ui.explanation: "(no language model: llm=none)"}
            return
        session, first = evidence_session(self.backend, analysis.evidence, self.prompt, self.llm, images)
        state["session"] = session
        # Nothing unchecked reaches the reader: the text shows once the grounding gate has passed it.
        yield {**shown, ui.explanation: "(writing the explanation and checking it against the evidence…)"}
        with self.lock:
            result = session.ask_grounded(first, analysis.evidence, *self._gate())
        transcript = session.save(folder / "chat.json")
        yield {ui.explanation: result.for_reader(), ui.chat: self._history(state),
               ui.transcript_file: str(transcript), ui.state: state}  # fmt: skip

    def ask(self, question: str, state: dict | None) -> Iterator[Updates]:
        """A follow-up about the same photo, checked against the evidence, into the chat; clears the
        question box."""
        ui = self.ui
        session = (state or {}).get("session")
        if session is None:
            yield {ui.chat: [], ui.transcript_file: None,
                   ui.status: "⚠ upload a photo first (and choose an llm) to ask about it"}  # fmt: skip
            return
        status = state["status"]
        if not question.strip():
            yield {ui.chat: self._history(state), ui.question: "", ui.transcript_file: None,
                   ui.status: status}  # fmt: skip
            return
        history = [*self._history(state), {"role": "user", "content": question}]
        checking = {
            "role": "assistant",
            "content": "(answering and checking the answer against the evidence…)",
        }
        yield {ui.chat: [*history, checking], ui.question: "", ui.status: status}
        with self.lock:
            result = session.ask_grounded(question, state["analysis"].evidence, *self._gate())
        transcript = session.save(state["folder"] / "chat.json")
        state.setdefault("shown", {})[len(session.transcript) - 1] = result.for_reader()
        yield {ui.chat: self._history(state), ui.question: "", ui.transcript_file: str(transcript),
               ui.status: status}  # fmt: skip

    def reblend(self, alpha: float, state: dict | None) -> Updates:
        """The overlays at another opacity."""
        if not state:
            return {self.ui.scorecam: None, self.ui.gradcam: None, self.ui.contrastive: None}
        return self._overlays(state["analysis"], alpha)

    def _overlays(self, analysis: PhotoAnalysis, alpha: float) -> Updates:
        """Every overlay box: a map over the photo at opacity `alpha`, None for a map that is missing."""
        boxes = {"scorecam": self.ui.scorecam, "gradcam": self.ui.gradcam, "contrastive": self.ui.contrastive}
        present = {*analysis.heatmaps, *(["contrastive"] if analysis.contrastive is not None else [])}
        return {box: analysis.overlay(m, alpha) if m in present else None for m, box in boxes.items()}

    def _gate(self) -> tuple[int, str]:
        """The grounding gate's settings from the prompt config: the longest answer, the retry's turn."""
        return int(self.prompt.get("max_words", MAX_WORDS)), str(self.prompt.get("retry", FEEDBACK))

    @staticmethod
    def _history(state: dict) -> list[dict[str, str]]:
        """What the chat box shows: the follow-ups (the first explanation has its own box above), each
        answer marked with what the grounding gate said."""
        shown = state.get("shown", {})
        return [
            {"role": m["role"], "content": shown.get(i, text_of(m["content"]))}
            for i, m in enumerate(state["session"].transcript)
            if i >= 3
        ]

    def build(self) -> Any:
        import gradio as gr

        with gr.Blocks(title="noodlenext") as page:
            gr.Markdown("## noodlenext: why did the classifier say that?")
            state = gr.State(None)
            with gr.Row():
                with gr.Column(scale=1):
                    upload = gr.File(label="Photo (drop or click)", type="filepath", elem_id="photo")
                    example = gr.Dropdown(
                        self.examples, label="…or pick an example", value=None, elem_id="example"
                    )
                    status = gr.Textbox(label="Status", interactive=False, elem_id="status")
                    probabilities = gr.Label(label="Class probabilities", elem_id="probabilities")
                with gr.Column(scale=2):
                    evidence = gr.Textbox(
                        label="Evidence: what the model's own tests show (the explanation cites these lines)",
                        interactive=False, lines=10, elem_id="evidence",
                    )  # fmt: skip
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
                label="Nearest training photos (the classifier's feature space)", columns=5, height=200,
                elem_id="neighbours",
            )  # fmt: skip
            explanation = gr.Textbox(label="Explanation", interactive=False, lines=4, elem_id="explanation")
            chat = gr.Chatbot(label="Conversation", elem_id="chat")
            with gr.Row():
                question = gr.Textbox(label="Ask a follow-up question", scale=4, elem_id="question")
                ask = gr.Button("Ask", variant="primary", scale=1, elem_id="ask")
            with gr.Row():
                overlay_file = gr.DownloadButton("Download overlay", elem_id="download-overlay")
                transcript_file = gr.DownloadButton("Download transcript", elem_id="download-transcript")

            self.ui = ui = PageComponents(
                state=state, status=status, probabilities=probabilities, photo=photo, scorecam=scorecam,
                gradcam=gradcam, contrastive=contrastive, facts=facts, evidence=evidence,
                neighbours=neighbours, explanation=explanation, chat=chat, question=question,
                overlay_file=overlay_file, transcript_file=transcript_file,
            )  # fmt: skip
            # Each event lists every component its handler may update (order no longer matters).
            analysis_outputs = [ui.status, ui.probabilities, ui.photo, ui.scorecam, ui.gradcam,
                                ui.contrastive, ui.facts, ui.evidence, ui.neighbours, ui.explanation,
                                ui.chat, ui.overlay_file, ui.transcript_file, ui.state]  # fmt: skip
            upload.upload(self.analyze, [upload, alpha, ui.state], analysis_outputs)
            example.input(self.analyze, [example, alpha, ui.state], analysis_outputs)
            alpha.release(self.reblend, [alpha, ui.state], [ui.scorecam, ui.gradcam, ui.contrastive])
            for event in (ask.click, question.submit):
                event(self.ask, [question, ui.state], [ui.chat, ui.question, ui.transcript_file, ui.status])
        return page


def _neighbour_thumbnails(analysis: PhotoAnalysis) -> list[tuple[Image.Image, str]]:
    """The nearest training photos that are still on disk, captioned with label and similarity."""
    found = analysis.evidence.neighbours if analysis.evidence else []
    return [(load_rgb(n.file), f"{n.label} ({n.similarity:.2f})") for n in found if Path(n.file).is_file()]


def serve(cfg: DictConfig) -> None:
    """Load the checkpoint and the LLM (clear errors in the terminal), then serve the page."""
    explainer = PhotoExplainer(cfg.ckpt_path, cfg.device, "both", HeatmapSettings.of(cfg.explain))
    backend = load_backend(cfg.llm)
    examples = (
        [str(p) for p in find_images(cfg.app.examples)] if cfg.app.examples else run_examples(cfg.ckpt_path)
    )
    host = str(cfg.app.host)
    if host not in LOOPBACK:
        log.warning(
            "app.host=%s: the page (and your checkpoint's predictions) is reachable from the network", host
        )
    app = NoodleApp(explainer, backend, cfg.prompt, cfg.llm, Path(cfg.paths.output_dir) / "sessions",
                    int(cfg.app.max_pixels), examples)  # fmt: skip
    page = app.build()
    page.queue(default_concurrency_limit=2)
    print(f"noodlenext app on http://{host}:{cfg.app.port}", flush=True)
    page.launch(
        server_name=host,
        server_port=int(cfg.app.port),
        max_file_size=f"{int(cfg.app.max_upload_mb)}mb",
        allowed_paths=examples,
        ssr_mode=False,
        quiet=True,
    )


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

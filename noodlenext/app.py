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
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError

from noodlenext.config import CONFIG_DIR
from noodlenext.data.images import load_rgb
from noodlenext.explain.photo import PhotoAnalysis, PhotoExplainer
from noodlenext.llm.base import Backend, text_of
from noodlenext.llm.load import load_backend
from noodlenext.llm.session import explain_session
from noodlenext.predict import find_images

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


def _skip() -> Any:
    """An output left as it is."""
    import gradio as gr

    return gr.skip()


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

    def analyze(self, path: str | None, alpha: float, state: dict | None) -> Iterator[tuple]:
        """Classify, show both heatmaps and facts, then stream the LLM's explanation into the chat."""
        if not path:
            return
        try:
            photo = open_photo(path, self.max_pixels)
        except ValueError as err:
            yield (f"⚠ {err}", None, None, None, None, "", "", [], None, None, state)
            return
        with self.lock:
            analysis = self.explainer(photo)
        folder = self.work_dir / uuid.uuid4().hex
        images = analysis.save_images(folder)
        status = f"{Path(path).name}: {analysis.predicted} ({analysis.confidence:.0%})"
        state = {"analysis": analysis, "folder": folder, "session": None, "status": status}
        facts = "\n".join(f"{m}: {h.facts.describe()}" for m, h in analysis.heatmaps.items())
        shown = (analysis.photo, *self._overlays(analysis, alpha))
        if self.backend is None:
            yield (status, analysis.probabilities, *shown, facts, "(no language model: llm=none)", [],
                   images[1], None, state)  # fmt: skip
            return
        session, first = explain_session(self.backend, analysis.request(Path(path).name, images=images),
                                         self.prompt, self.llm)  # fmt: skip
        state["session"] = session
        yield (status, analysis.probabilities, *shown, facts, "", [], images[1], None, state)
        # While the explanation streams only its box changes: the images are not sent again per token.
        keep = [_skip()] * 6
        text = ""
        with self.lock:
            for piece in session.ask_stream(first):
                text += piece
                yield (*keep, text, *[_skip()] * 4)
        transcript = session.save(folder / "chat.json")
        yield (*keep, text.strip(), self._history(state), _skip(), str(transcript), state)

    def ask(self, question: str, state: dict | None) -> Iterator[tuple]:
        """A follow-up about the same photo, streamed: (chat, question box, transcript file, status)."""
        session = (state or {}).get("session")
        if session is None:
            yield [], question, None, "⚠ upload a photo first (and choose an llm) to ask about it"
            return
        status = state["status"]
        if not question.strip():
            yield self._history(state), "", None, status
            return
        history = [*self._history(state), {"role": "user", "content": question}]
        saved = str(state["folder"] / "chat.json")
        answer = ""
        with self.lock:
            for piece in session.ask_stream(question):
                answer += piece
                yield [*history, {"role": "assistant", "content": answer}], "", saved, status
        transcript = session.save(state["folder"] / "chat.json")
        yield self._history(state), "", str(transcript), status

    def reblend(self, alpha: float, state: dict | None) -> tuple:
        """The overlays at another opacity."""
        if not state:
            return None, None
        return self._overlays(state["analysis"], alpha)

    @staticmethod
    def _overlays(analysis: PhotoAnalysis, alpha: float) -> tuple:
        return tuple(
            analysis.overlay(m, alpha) if m in analysis.heatmaps else None for m in ("scorecam", "gradcam")
        )

    @staticmethod
    def _history(state: dict) -> list[dict[str, str]]:
        """What the chat box shows: everything after the facts prompt."""
        return [
            {"role": m["role"], "content": text_of(m["content"])} for m in state["session"].transcript[2:]
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
                    with gr.Row():
                        photo = gr.Image(label="Photo", interactive=False)
                        scorecam = gr.Image(label="ScoreCAM", interactive=False, elem_id="scorecam")
                        gradcam = gr.Image(label="GradCAM", interactive=False)
                    alpha = gr.Slider(
                        0.0, 1.0, value=0.5, step=0.05, label="Heatmap opacity", elem_id="alpha"
                    )
                    facts = gr.Textbox(label="Heatmap facts", interactive=False, lines=2, elem_id="facts")
            explanation = gr.Textbox(label="Explanation", interactive=False, lines=4, elem_id="explanation")
            chat = gr.Chatbot(label="Conversation", elem_id="chat")
            with gr.Row():
                question = gr.Textbox(label="Ask a follow-up question", scale=4, elem_id="question")
                ask = gr.Button("Ask", variant="primary", scale=1, elem_id="ask")
            with gr.Row():
                overlay_file = gr.DownloadButton("Download overlay", elem_id="download-overlay")
                transcript_file = gr.DownloadButton("Download transcript", elem_id="download-transcript")

            outputs = [status, probabilities, photo, scorecam, gradcam, facts, explanation, chat,
                       overlay_file, transcript_file, state]  # fmt: skip
            upload.upload(self.analyze, [upload, alpha, state], outputs)
            example.input(self.analyze, [example, alpha, state], outputs)
            alpha.release(self.reblend, [alpha, state], [scorecam, gradcam])
            for event in (ask.click, question.submit):
                event(self.ask, [question, state], [chat, question, transcript_file, status])
        return page


def serve(cfg: DictConfig) -> None:
    """Load the checkpoint and the LLM (clear errors in the terminal), then serve the page."""
    explainer = PhotoExplainer(
        cfg.ckpt_path, cfg.device, "both", cfg.explain.target_layer, cfg.explain.top_k,
        cfg.explain.mask_batch_size,
    )  # fmt: skip
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

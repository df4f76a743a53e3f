"""python -m noodlenext.chat ckpt_path=... image=...: explain one prediction, then answer follow-ups."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import hydra
from omegaconf import DictConfig

from noodlenext.core.config import CONFIG_DIR
from noodlenext.core.ownership import guard_file
from noodlenext.data.images import check_image, display_name, load_rgb
from noodlenext.explain.evidence import Evidence
from noodlenext.explain.photo import PhotoAnalysis, PhotoExplainer
from noodlenext.explain.probes import PhotoProbe
from noodlenext.explain.settings import HeatmapSettings
from noodlenext.llm.base import Backend, LLMError
from noodlenext.llm.followups import answer_followup
from noodlenext.llm.load import load_backend
from noodlenext.llm.prompt import PromptSettings
from noodlenext.llm.session import SAVED_HEAD, ChatSession, evidence_session

log = logging.getLogger(__name__)
EXIT_WORDS = {"exit", "quit", ":q"}


def classify(cfg: DictConfig, output_dir: Path) -> tuple[PhotoAnalysis, list[str], PhotoProbe]:
    """Prediction, ScoreCAM and the evidence for cfg.image; the photo and its overlay are saved in
    output_dir (their paths are returned too), and the probes that answer follow-ups by rerunning the
    model on it."""
    image = Path(cfg.image).expanduser()
    problem, _ = check_image(image) if image.is_file() else ("no such file", None)
    if problem:
        raise ValueError(f"image={cfg.image}: {problem}")
    explainer = PhotoExplainer(
        cfg.ckpt_path,
        cfg.device,
        "scorecam",
        HeatmapSettings.of(cfg.explain),
        calibration=cfg.get("calibration", "temperature"),
        trust_checkpoint=cfg.get("trust_checkpoint", False),
    )
    true_label = _true_label(cfg.get("true_label"), image, explainer.class_names)
    analysis = explainer(load_rgb(image, explainer.image_size), true_label, str(image))
    return analysis, analysis.save_images(output_dir), explainer.probe(analysis)


def _true_label(given: str | None, image: Path, names: list[str]) -> str | None:
    if given is not None:
        return given  # checked against the classes by PhotoExplainer
    folder = display_name(image.parent.name)
    return folder if folder in names else None


def chat(cfg: DictConfig, questions: Iterable[str] | None = None, out: TextIO | None = None) -> ChatSession:
    """Explain (or resume), then answer `questions` (default: cfg.chat.questions, else stdin lines); the
    conversation is written to `out` (default: sys.stdout as it is when called)."""
    out = out if out is not None else sys.stdout
    output_dir = Path(cfg.paths.output_dir)
    transcript = Path(cfg.chat.transcript) if cfg.chat.get("transcript") else output_dir / "chat.json"
    guard_file(transcript, "chat.transcript", SAVED_HEAD)  # before the analysis: never a user's own file
    if cfg.llm.get("backend") is None:
        raise ValueError(
            "llm=none: the chat needs a language model, e.g. llm=smollm2 (offline) or llm=gemma3_4b"
        )
    analysed = None if cfg.chat.get("resume") else classify(cfg, output_dir)
    backend = load_backend(cfg.llm)
    assert backend is not None
    probe: PhotoProbe | None = None
    try:
        if analysed is None:
            session = ChatSession.load(cfg.chat.resume, backend)
            saved = session.metadata.get("evidence")
            evidence = Evidence.from_dict(saved) if saved else None  # chats saved before evidence: none
            print(f"resumed {cfg.chat.resume} ({len(session.transcript)} messages)", file=out)
        else:
            analysis, images, probe = analysed
            session, evidence = _explain(cfg, backend, analysis, images, transcript, out)
        scripted = questions is not None or cfg.chat.get("questions") is not None
        if questions is None:
            questions = cfg.chat.questions if cfg.chat.get("questions") is not None else _stdin_questions(out)
        for question in questions:
            if question.strip().lower() in EXIT_WORDS:
                break
            if not question.strip():
                continue
            if scripted:  # typed questions are already on the screen
                print(f"you> {question}", file=out)
            try:
                evidence = _answer(session, question, evidence, cfg.prompt, out, probe, output_dir)
            except LLMError as err:  # the session took the question back: the chat goes on
                print(f"llm> (no answer: {err})", file=out, flush=True)
            session.save(transcript)
    finally:
        backend.close()
    print(f"transcript: {transcript}", file=out)
    return session


def _explain(
    cfg: DictConfig,
    backend: Backend,
    analysis: PhotoAnalysis,
    images: list[str],
    transcript: Path,
    out: TextIO,
) -> tuple[ChatSession, Evidence]:
    evidence = analysis.evidence
    assert evidence is not None  # PhotoExplainer gathers it by default
    session, first = evidence_session(backend, evidence, cfg.prompt, cfg.llm, images)
    session.metadata["checkpoint"] = str(cfg.ckpt_path)
    truth = f", true label {evidence.true_label}" if evidence.true_label else ""
    lines = "\n".join(f"  {line}" for line in evidence.lines())
    print(
        f"{evidence.file}: predicted {evidence.predicted} ({evidence.confidence:.0%}){truth}\n"
        f"ScoreCAM: {evidence.facts['scorecam'].describe()}\nheatmap: {images[1]}\nevidence:\n{lines}",
        file=out,
    )
    result = session.ask_grounded(first, evidence, PromptSettings.of(cfg.prompt))
    print(f"llm> {result.for_reader()}", file=out, flush=True)
    session.save(transcript)
    return session, evidence


def _answer(
    session: ChatSession,
    question: str,
    evidence: Evidence | None,
    prompt: Any,
    out: TextIO,
    probe: PhotoProbe | None = None,
    output_dir: Path | None = None,
) -> Evidence | None:
    """A follow-up answered by the test it needs, run on the photo (`llm.followups`), checked against the
    evidence before it is shown, with the test's result beside it; the evidence with that result added is
    returned (what the next answer is checked against). A resumed chat without saved evidence streams
    unchecked, and says so."""
    if evidence is None:
        _stream(session.ask_stream(question), out)
        print("(not checked: this saved chat holds no evidence to check the answer against)", file=out)
        return None
    answer = answer_followup(session, question, probe, evidence, PromptSettings.of(prompt))
    if answer.result is not None and answer.call is not None:
        finding, numbers = answer.result.finding, answer.evidence.finding_lines(answer.result.finding)
        args = ", ".join(f"{k}={v!r}" for k, v in answer.call.arguments.items())
        print(f"test> {answer.call.name}({args}), picked by the {answer.call.source}:", file=out)
        for n, line in zip(numbers, finding.lines, strict=True):
            print(f"  {n}. {line}", file=out)
        if answer.result.image is not None and output_dir is not None:
            picture = output_dir / f"test_{len(answer.evidence.findings):02d}_{finding.probe}.png"
            answer.result.image.save(picture)
            print(f"  ({answer.result.caption}: {picture})", file=out)
    print(f"llm> {answer.text.for_reader()}", file=out, flush=True)
    return answer.evidence


def _stream(pieces: Iterator[str], out: TextIO) -> None:
    print("llm> ", end="", file=out, flush=True)
    for piece in pieces:
        print(piece, end="", file=out, flush=True)
    print(file=out, flush=True)


def _stdin_questions(out: TextIO) -> Iterator[str]:
    """Lines from stdin until EOF; a prompt when a person is typing."""
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", file=out, flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        yield line.rstrip("\n")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="chat")
def main(cfg: DictConfig) -> None:
    try:
        chat(cfg)
    except LLMError as err:
        log.error("%s", err)
        raise SystemExit(f"chat: {err}") from None


if __name__ == "__main__":
    main()

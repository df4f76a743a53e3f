"""ChatSession: a bounded multi-turn conversation with one backend, saved and reloaded as JSON."""

from __future__ import annotations

import json
import weakref
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from noodlenext.core.files import write_json_atomic
from noodlenext.core.ownership import guard_file
from noodlenext.explain.evidence import Evidence, Finding
from noodlenext.explain.templates import photo_template
from noodlenext.llm.base import Backend, LLMError, Message, generation_options, text_of
from noodlenext.llm.grounding import GroundedText, check_explanation, grounded, retry_conversation
from noodlenext.llm.grounding import drafts as drafts_of
from noodlenext.llm.prompt import PromptSettings, evidence_messages, examples_of, structured_instruction
from noodlenext.llm.text import cut_to_sentence, sentence_ends

SAVED_HEAD = r'\{\s*"backend":'  # how a saved chat starts: the only file `save` may replace
DROPPED_NOTE = "({n} earlier message(s) of this conversation were dropped to fit the model's context.)"


class ChatSession:
    """The whole conversation goes to the model on every turn, so follow-ups see what was said before.

    When the prompt would no longer leave room for `max_new_tokens`, the oldest follow-up exchanges are
    dropped (the system prompt and the first question, which holds the facts, always stay) and the next
    kept question starts with a note saying so. `transcript` keeps everything that was said.

    Every recorded answer ends on a complete sentence (`text.cut_to_sentence`), streamed or not.

    Each turn is all or nothing. A question whose answer fails (any backend error, a timeout; raised as an
    LLMError) leaves `messages`, `transcript` and `dropped` as they were before it, so the next question
    goes out with roles still alternating user/assistant (which Gemma's template demands). A streamed
    answer whose reader stops early (closes the iterator, or drops it; a browser tab closed) keeps the
    sentences the reader was given, as an assistant turn marked `"interrupted": True` (backends get role
    and content only). A stream left open is closed, and so settled, when the next question starts.

    Args:
        backend: the loaded language model; messages: the conversation so far (OpenAI-shaped).
        max_new_tokens: the longest answer, in tokens; temperature: 0 for greedy (reproducible) answers.
        max_context_tokens: a cap below the backend's context length, in tokens (prompt and answer).
        repetition_penalty, no_repeat_ngram_size: repetition control (`llm/base.py`; 1.0 and 0: off).
    """

    def __init__(
        self,
        backend: Backend,
        messages: list[Message],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        max_context_tokens: int | None = None,
        *,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
    ) -> None:
        self.backend = backend
        self.messages = list(messages)  # what the model sees
        self.transcript = list(messages)  # what was said
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.repetition_penalty, self.no_repeat_ngram_size = repetition_penalty, no_repeat_ngram_size
        limit = backend.context_length
        self.context_tokens = min(limit, max_context_tokens) if max_context_tokens else limit
        self.dropped = 0
        self.metadata: dict[str, Any] = {}  # saved with the conversation (e.g. what was classified)
        # The instruction that asks for sentences with their citations as JSON, for a backend that can
        # constrain its replies to a schema (`grounding.drafts`); None: plain text.
        self.structured: str | None = None
        self.preamble = 0  # worked example turns after the system prompt (`llm.examples`): never dropped
        self._open: weakref.ref[Generator[str, None, None]] | None = None  # a stream under way

    @property
    def _anchor(self) -> int:
        """Messages that are never dropped: the system prompt (if any), the worked examples, the first
        question and answer."""
        return (2 if self.messages and self.messages[0]["role"] == "system" else 1) + 1 + self.preamble

    def prompt(self) -> list[Message]:
        """The messages the model gets next: `messages`, with the dropped-turns note where it belongs."""
        if not self.dropped or len(self.messages) <= self._anchor:
            return list(self.messages)
        first_kept = dict(self.messages[self._anchor])
        first_kept["content"] = f"{DROPPED_NOTE.format(n=self.dropped)}\n{text_of(first_kept['content'])}"
        return [*self.messages[: self._anchor], first_kept, *self.messages[self._anchor + 1 :]]

    def _fit(self) -> None:
        budget = self.context_tokens - self.max_new_tokens
        while self.backend.count_tokens(self.prompt()) > budget:
            if len(self.messages) - self._anchor < 3:  # only the newest question is left to keep
                raise LLMError(
                    f"the conversation needs {self.backend.count_tokens(self.prompt())} prompt tokens, but "
                    f"{self.backend.name} has {self.context_tokens} for prompt and answer with "
                    f"max_new_tokens={self.max_new_tokens}: lower llm.max_new_tokens, shorten the "
                    "prompt (prompt.*), or give the model a longer context (llm.backend.n_ctx)"
                )
            del self.messages[self._anchor : self._anchor + 2]  # the oldest question and its answer
            self.dropped += 2

    def _user(self, content: str | list[dict[str, Any]]) -> None:
        message = {"role": "user", "content": content}
        self.messages.append(message)
        self.transcript.append(message)
        self._fit()

    def _assistant(self, answer: str, interrupted: bool = False) -> str:
        message: Message = {"role": "assistant", "content": answer.strip()}
        if interrupted:
            message["interrupted"] = True  # the reader left mid-answer; backends see only role and content
        self.messages.append(message)
        self.transcript.append(message)
        return message["content"]

    # ---------------------------------------------------------------------------- turns
    def _begin(self) -> tuple[list[Message], list[Message], int]:
        """Start a turn: settle a stream left open, then note the state to go back to if the turn fails."""
        stream = self._open() if self._open is not None else None
        self._open = None
        if stream is not None:
            try:
                stream.close()  # records what its reader was given
            except ValueError as err:  # "generator already executing": another thread is reading it
                raise LLMError("this chat is still answering the previous question: wait for it") from err
        return list(self.messages), list(self.transcript), self.dropped

    def _rollback(self, saved: tuple[list[Message], list[Message], int]) -> None:
        self.messages[:], self.transcript[:] = saved[0], saved[1]
        self.dropped = saved[2]

    def _failed(self, saved: tuple[list[Message], list[Message], int], err: BaseException) -> NoReturn:
        """Undo the turn and raise its error: an LLMError (what backends raise; anything else is wrapped in
        one, its cause kept), or an interrupt (KeyboardInterrupt, SystemExit) as it is."""
        self._rollback(saved)
        if isinstance(err, LLMError) or not isinstance(err, Exception):
            raise err
        raise LLMError(f"{self.backend.name} could not answer: {err!r}") from err

    @property
    def options(self) -> dict[str, Any]:
        """The keyword arguments of every `generate`/`stream` call of this session."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "repetition_penalty": self.repetition_penalty,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
        }

    def ask(self, content: str | list[dict[str, Any]]) -> str:
        """Add a user turn and return the model's answer (also added to the conversation). On failure an
        LLMError, and the conversation is as it was."""
        saved = self._begin()
        try:
            self._user(content)
            answer = self.backend.generate([self.prompt()], **self.options)[0]
        except BaseException as err:
            self._failed(saved, err)
        return self._assistant(cut_to_sentence(answer))

    def ask_stream(self, content: str | list[dict[str, Any]]) -> Iterator[str]:
        """As `ask`, yielding the answer a sentence at a time as each one is complete, so that a reader
        never sees the unfinished tail that the token limit cuts off; the pieces add up to the recorded
        answer (an answer without any complete sentence comes in one piece at the end).

        A reader that stops early (closes or drops the iterator, or asks the next question) ends the
        generation; the sentences it was given are recorded as an answer marked "interrupted". An error
        midway is an LLMError, and the question is taken back even if some sentences were shown."""
        ref: list[weakref.ref[Generator[str, None, None]]] = []
        stream = self._stream_turn(content, ref)
        ref.append(weakref.ref(stream))
        return stream

    def _stream_turn(
        self, content: str | list[dict[str, Any]], ref: list[weakref.ref[Generator[str, None, None]]]
    ) -> Generator[str, None, None]:
        saved = self._begin()
        self._open = ref[0]
        text, given, final = "", 0, None  # what came, how much of it the reader has, the whole answer
        try:
            self._user(content)
            pieces = self.backend.stream(self.prompt(), **self.options)
            try:
                for piece in pieces:
                    text += piece
                    # Only an end followed by more text is sure: "0." may yet become "0.42".
                    ends = [e for e in sentence_ends(text) if e < len(text)]
                    if ends and ends[-1] > given:
                        start, given = given, ends[-1]
                        yield text[start:given]
            finally:
                close = getattr(pieces, "close", None)
                if close is not None:
                    close()  # the reader gone: the model stops now (frees its lock, thread, connection)
            final = cut_to_sentence(text)
            if len(final) > given:
                start, given = given, len(final)
                yield final[start:]
        except GeneratorExit:  # the reader stopped asking for more
            self._release(ref[0])
            # It stops at a yield, so it has been given something: after the last piece the whole answer,
            # else the sentences so far (more would have come).
            if final is not None:
                self._assistant(final)
            else:
                self._assistant(text[:given], interrupted=True)
            raise
        except BaseException as err:
            self._release(ref[0])
            self._failed(saved, err)
        self._release(ref[0])
        self._assistant(final)

    def _release(self, stream: weakref.ref[Generator[str, None, None]]) -> None:
        if self._open is stream:
            self._open = None

    def ask_grounded(
        self,
        content: str | list[dict[str, Any]],
        evidence: Evidence,
        prompt: PromptSettings | Any,
        *,
        followup: bool = False,
        template: str | None = None,
        finding: Finding | None = None,
        previous: Sequence[str] = (),
    ) -> GroundedText:
        """Add a user turn and answer it with an explanation that passed the grounding gate
        (`grounding.grounded`: the model's draft, its one retry, or the template). Only the accepted text
        joins the conversation; the rejected drafts and the verdicts go to metadata["grounding"]. On
        failure an LLMError, and the conversation is as it was.

        evidence: what the answer is checked against; prompt: the prompt settings (its `max_words`, the
        longest answer the gate accepts, and `retry`, the retry's user turn); followup, finding, previous:
        as `grounding.check_explanation` (check as a follow-up answer; the test the answer must cite;
        earlier answers it may not repeat); template: the text when both drafts fail (default the
        evidence's `photo_template`).
        """
        settings = PromptSettings.of(prompt)
        max_words = settings.max_words
        saved = self._begin()
        try:
            self._user(content)
            messages = self.prompt()
            drafts: list[str] = []
            result = grounded(
                lambda message: self._draft(messages, drafts, message),
                lambda text: check_explanation(text, evidence, max_words, followup, finding, previous),
                (lambda: template) if template is not None else (lambda: photo_template(evidence, max_words)),
                settings.retry,
            )
        except BaseException as err:
            self._failed(saved, err)
        self.metadata.setdefault("grounding", []).append(result.to_dict())
        self._assistant(result.text)
        return result

    def _draft(self, prompt: list[Message], drafts: list[str], message: str | None) -> str:
        """ask_grounded's model call: the first draft (message None), or the retry after `message`."""
        budget = self.context_tokens - self.max_new_tokens
        messages = prompt
        if message is not None:
            messages = retry_conversation(prompt, drafts[-1] if drafts else "", message)
            if self.backend.count_tokens(messages) > budget:
                # No room for the draft too: the feedback joins the question instead.
                asked = f"{text_of(prompt[-1]['content'])}\n\n{message}"
                messages = [*prompt[:-1], {"role": "user", "content": asked}]
                if self.backend.count_tokens(messages) > budget:
                    drafts.append("")
                    return ""  # no room for a retry at all: the gate rejects it, the template answers
        ((answer, _),) = drafts_of(self.backend, [messages], self.structured, **self.options)
        answer = answer if self.structured and self.backend.supports_schema else cut_to_sentence(answer)
        drafts.append(answer.strip())
        return answer

    # ---------------------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend.name,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "repetition_penalty": self.repetition_penalty,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "context_tokens": self.context_tokens,
            "dropped": self.dropped,
            "preamble": self.preamble,
            "metadata": self.metadata,
            "messages": self.messages,
            "transcript": self.transcript,
        }

    def save(self, path: str | Path) -> Path:
        """Write the conversation as JSON (atomically: an interrupted save leaves the previous one). An
        existing file is replaced only when it is a saved chat (SAVED_HEAD); anything else: NotOurs."""
        write_json_atomic(guard_file(path, "chat.transcript", SAVED_HEAD), self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, backend: Backend) -> ChatSession:
        """A saved conversation, to be continued with `backend` (which may differ from the saving one)."""
        try:
            data = json.loads(Path(path).read_text())
            session = cls(
                backend,
                data["messages"],
                data["max_new_tokens"],
                data["temperature"],
                repetition_penalty=float(data.get("repetition_penalty", 1.0)),  # absent: saved before it
                no_repeat_ngram_size=int(data.get("no_repeat_ngram_size", 0)),
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a saved noodlenext chat ({err!r})") from err
        session.context_tokens = min(session.context_tokens, int(data.get("context_tokens", 1 << 30)))
        session.transcript, session.dropped = data.get("transcript", data["messages"]), int(data["dropped"])
        session.metadata = data.get("metadata", {})
        session.preamble = int(data.get("preamble", 0))  # absent: saved before worked examples
        return session


def evidence_session(
    backend: Backend, evidence: Evidence, prompt: Any, llm: Any, images: Sequence[str] = ()
) -> tuple[ChatSession, str | list[dict[str, Any]]]:
    """A session holding the evidence path's system prompt, and its first question, to be answered with
    `session.ask_grounded(first, evidence, prompt)` (or `ask` / `ask_stream` for an unchecked answer).

    `prompt`: the prompt settings (or a conf/prompt config); `llm`: a conf/llm config (max_new_tokens,
    temperature, max_context_tokens, repetition_penalty, no_repeat_ngram_size); images: [photo, overlay]
    paths for a multimodal model.
    """
    settings = PromptSettings.of(prompt)
    examples = examples_of(llm)
    system, *shown, first = evidence_messages(evidence, settings, backend.multimodal, images, examples)
    session = _session(backend, [system, *shown], llm)
    session.preamble = len(shown)
    session.structured = structured_instruction(settings, llm)
    session.metadata = {"evidence": evidence.to_dict(), "images": list(images), "llm": llm.get("name")}
    return session, first["content"]


def _session(backend: Backend, opening: list[Message], llm: Any) -> ChatSession:
    options = generation_options(llm)
    return ChatSession(
        backend,
        opening,
        options["max_new_tokens"],
        options["temperature"],
        llm.get("max_context_tokens"),
        repetition_penalty=options["repetition_penalty"],
        no_repeat_ngram_size=options["no_repeat_ngram_size"],
    )

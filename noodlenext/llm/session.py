"""ChatSession: a bounded multi-turn conversation with one backend, saved and reloaded as JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from noodlenext.core.files import write_json_atomic
from noodlenext.explain.evidence import Evidence
from noodlenext.llm.base import Backend, LLMError, Message, generation_options, text_of
from noodlenext.llm.grounding import FEEDBACK, MAX_WORDS, GroundedText, grounded, retry_conversation
from noodlenext.llm.prompt import ExplainRequest, evidence_messages, explain_messages
from noodlenext.llm.text import cut_to_sentence, sentence_ends

DROPPED_NOTE = "({n} earlier message(s) of this conversation were dropped to fit the model's context.)"


class ChatSession:
    """The whole conversation goes to the model on every turn, so follow-ups see what was said before.

    When the prompt would no longer leave room for `max_new_tokens`, the oldest follow-up exchanges are
    dropped (the system prompt and the first question, which holds the facts, always stay) and the next
    kept question starts with a note saying so. `transcript` keeps everything that was said.

    Every recorded answer ends on a complete sentence (`text.cut_to_sentence`), streamed or not.

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

    @property
    def _anchor(self) -> int:
        """Messages that are never dropped: the system prompt (if any), the first question and answer."""
        return (2 if self.messages and self.messages[0]["role"] == "system" else 1) + 1

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
        try:
            self._fit()
        except LLMError:
            self.messages.pop()
            self.transcript.pop()
            raise

    def _assistant(self, answer: str) -> str:
        message = {"role": "assistant", "content": answer.strip()}
        self.messages.append(message)
        self.transcript.append(message)
        return message["content"]

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
        """Add a user turn and return the model's answer (also added to the conversation)."""
        self._user(content)
        answer = self.backend.generate([self.prompt()], **self.options)[0]
        return self._assistant(cut_to_sentence(answer))

    def ask_stream(self, content: str | list[dict[str, Any]]) -> Iterator[str]:
        """As `ask`, yielding the answer a sentence at a time as each one is complete, so that a reader
        never sees the unfinished tail that the token limit cuts off; the pieces add up to the recorded
        answer (an answer without any complete sentence comes in one piece at the end)."""
        self._user(content)
        text, shown = "", 0
        for piece in self.backend.stream(self.prompt(), **self.options):
            text += piece
            # Only an end followed by more text is sure: "0." may yet become "0.42".
            ends = [e for e in sentence_ends(text) if e < len(text)]
            if ends and ends[-1] > shown:
                yield text[shown : ends[-1]]
                shown = ends[-1]
        final = cut_to_sentence(text)
        if len(final) > shown:
            yield final[shown:]
        self._assistant(final)

    def ask_grounded(
        self,
        content: str | list[dict[str, Any]],
        evidence: Evidence,
        max_words: int = MAX_WORDS,
        feedback: str = FEEDBACK,
    ) -> GroundedText:
        """Add a user turn and answer it with an explanation that passed the grounding gate
        (`grounding.grounded`: the model's draft, its one retry, or the template). Only the accepted text
        joins the conversation; the rejected drafts and the verdicts go to metadata["grounding"].

        evidence: what the answer is checked against; max_words: the longest answer the gate accepts;
        feedback: the retry's user turn, with {reasons}.
        """
        self._user(content)
        prompt = self.prompt()

        def generate(message: str | None) -> str:
            messages = prompt
            if message is not None:
                draft = drafts[-1] if drafts else ""
                messages = retry_conversation(prompt, draft, message)
                if self.backend.count_tokens(messages) > self.context_tokens - self.max_new_tokens:
                    # No room for the draft too: the feedback joins the question instead.
                    asked = f"{text_of(prompt[-1]['content'])}\n\n{message}"
                    messages = [*prompt[:-1], {"role": "user", "content": asked}]
            answer = cut_to_sentence(self.backend.generate([messages], **self.options)[0])
            drafts.append(answer.strip())
            return answer

        drafts: list[str] = []
        result = grounded(generate, evidence, max_words, feedback)
        self.metadata.setdefault("grounding", []).append(result.to_dict())
        self._assistant(result.text)
        return result

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
            "metadata": self.metadata,
            "messages": self.messages,
            "transcript": self.transcript,
        }

    def save(self, path: str | Path) -> Path:
        """Write the conversation as JSON (atomically: an interrupted save leaves the previous one)."""
        write_json_atomic(Path(path), self.to_dict())
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
        return session


def explain_session(
    backend: Backend, request: ExplainRequest, prompt: Any, llm: Any
) -> tuple[ChatSession, str | list[dict[str, Any]]]:
    """A session holding the system prompt for `request`, and its first question (to `ask`).

    `prompt` is a conf/prompt config; `llm` a conf/llm one (max_new_tokens, temperature, max_context_tokens,
    repetition_penalty, no_repeat_ngram_size).
    """
    system, first = explain_messages(request, prompt, backend.multimodal)
    session = _session(backend, system, llm)
    session.metadata = {"request": request.to_dict(), "llm": llm.get("name")}
    return session, first["content"]


def evidence_session(
    backend: Backend, evidence: Evidence, prompt: Any, llm: Any, images: Sequence[str] = ()
) -> tuple[ChatSession, str | list[dict[str, Any]]]:
    """A session holding the evidence path's system prompt, and its first question, to be answered with
    `session.ask_grounded(first, evidence, prompt.max_words, prompt.retry)` (or `ask` / `ask_stream` for
    an unchecked answer).

    `prompt`: a conf/prompt config; `llm`: a conf/llm one (as `explain_session`); images: [photo,
    overlay] paths for a multimodal model.
    """
    system, first = evidence_messages(evidence, prompt, backend.multimodal, images)
    session = _session(backend, system, llm)
    session.metadata = {"evidence": evidence.to_dict(), "images": list(images), "llm": llm.get("name")}
    return session, first["content"]


def _session(backend: Backend, system: Message, llm: Any) -> ChatSession:
    options = generation_options(llm)
    return ChatSession(
        backend,
        [system],
        options["max_new_tokens"],
        options["temperature"],
        llm.get("max_context_tokens"),
        repetition_penalty=options["repetition_penalty"],
        no_repeat_ngram_size=options["no_repeat_ngram_size"],
    )

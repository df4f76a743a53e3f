"""ChatSession: a bounded multi-turn conversation with one backend, saved and reloaded as JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from noodlenext.core.files import write_json_atomic
from noodlenext.llm.base import Backend, LLMError, Message, text_of
from noodlenext.llm.prompt import ExplainRequest, explain_messages

DROPPED_NOTE = "({n} earlier message(s) of this conversation were dropped to fit the model's context.)"


class ChatSession:
    """The whole conversation goes to the model on every turn, so follow-ups see what was said before.

    When the prompt would no longer leave room for `max_new_tokens`, the oldest follow-up exchanges are
    dropped (the system prompt and the first question, which holds the facts, always stay) and the next
    kept question starts with a note saying so. `transcript` keeps everything that was said.

    Args:
        backend: the loaded language model; messages: the conversation so far (OpenAI-shaped).
        max_new_tokens: the longest answer, in tokens; temperature: 0 for greedy (reproducible) answers.
        max_context_tokens: a cap below the backend's context length, in tokens (prompt and answer).
    """

    def __init__(
        self,
        backend: Backend,
        messages: list[Message],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        max_context_tokens: int | None = None,
    ) -> None:
        self.backend = backend
        self.messages = list(messages)  # what the model sees
        self.transcript = list(messages)  # what was said
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
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

    def ask(self, content: str | list[dict[str, Any]]) -> str:
        """Add a user turn and return the model's answer (also added to the conversation)."""
        self._user(content)
        answer = self.backend.generate([self.prompt()], self.max_new_tokens, self.temperature)[0]
        return self._assistant(answer)

    def ask_stream(self, content: str | list[dict[str, Any]]) -> Iterator[str]:
        """As `ask`, yielding the answer in pieces; the turn is recorded once the answer is complete."""
        self._user(content)
        pieces = []
        for piece in self.backend.stream(self.prompt(), self.max_new_tokens, self.temperature):
            pieces.append(piece)
            yield piece
        self._assistant("".join(pieces))

    # ---------------------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend.name,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
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
            session = cls(backend, data["messages"], data["max_new_tokens"], data["temperature"])
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

    `prompt` is a conf/prompt config; `llm` a conf/llm one (max_new_tokens, temperature, max_context_tokens).
    """
    system, first = explain_messages(request, prompt, backend.multimodal)
    session = ChatSession(
        backend,
        [system],
        int(llm.get("max_new_tokens", 256)),
        float(llm.get("temperature", 0.0)),
        llm.get("max_context_tokens"),
    )
    session.metadata = {"request": request.to_dict(), "llm": llm.get("name")}
    return session, first["content"]

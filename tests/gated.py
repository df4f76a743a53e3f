"""A real backend whose answers wait for the test: the test, not the machine's speed, decides when a
model is "still writing" and when it goes on."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from noodlenext.llm.base import Backend, Message, cut_to_sentence


class Gated(Backend):
    """`backend` as it is, except that each answer stops after its first `let_through` pieces (0: before
    the model is even asked) until `release()`; `waiting` is set while an answer waits there. `asked`
    counts the answers started, `given` holds the pieces handed out (every answer's, in order).

    While an answer waits, the model is not read (a transformers model may go on writing into its
    streamer in the background); once released, the answer continues with the model's next piece. A
    reader that closes the answer closes the model's stream too.
    """

    def __init__(self, backend: Backend, let_through: int = 0) -> None:
        self.backend, self.let_through = backend, let_through
        self.name, self.multimodal = backend.name, backend.multimodal
        self.context_length = backend.context_length
        self.released, self.waiting = threading.Event(), threading.Event()
        self.asked, self.given = 0, []

    def release(self) -> None:
        """Let every waiting and later answer go on."""
        self.released.set()

    def _hold(self) -> None:
        self.waiting.set()
        self.released.wait()

    def count_tokens(self, messages: list[Message]) -> int:
        return self.backend.count_tokens(messages)

    def stream(self, messages: list[Message], *args: Any, **kwargs: Any) -> Iterator[str]:
        self.asked += 1
        if self.let_through == 0:
            self._hold()
        source = self.backend.stream(messages, *args, **kwargs)
        try:
            for n, piece in enumerate(source, start=1):
                self.given.append(piece)
                yield piece
                if n == self.let_through:
                    self._hold()
        finally:
            source.close()

    def generate(self, conversations: Sequence[list[Message]], *args: Any, **kwargs: Any) -> list[str]:
        return [cut_to_sentence("".join(self.stream(c, *args, **kwargs))) for c in conversations]

    def close(self) -> None:
        self.release()

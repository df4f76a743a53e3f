"""Deadline: a shared backend as one conversation sees it, every answer streamed and stopped on time.

The page (`noodlenext.app`) reads every answer through one, so that one slow or hung generation holds the
other users up no longer than `app.generation_timeout_s`.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from noodlenext.llm.base import Backend, Message, cut_to_sentence

__all__ = ["Deadline"]


class Deadline(Backend):
    """The shared backend as one page session sees it: every answer streams and stops at a deadline.

    `arm()` before an answer starts its clock (`seconds`); every `generate`/`stream` call until the next
    `arm()` shares it (the grounding gate's retry too); before the first `arm()` there is no deadline.
    `expire()` ends the answer under way at once, as if its time were up (a test decides so, rather than
    hoping the machine is slow enough; a page could for a Stop button).

    The model's pieces are read in a worker thread, so that even a backend that hangs without a word is
    given up on at the deadline; when it passes, the worker closes the model's stream at its next piece
    (transformers and llama.cpp stop generating then), `stopped` is set, `generate` answers what came so
    far (cut to its last full sentence) and later calls answer "" at once. Errors of the backend are
    raised in the caller's thread.
    """

    def __init__(self, backend: Backend, seconds: float) -> None:
        self.backend, self.seconds = backend, float(seconds)
        self.name, self.multimodal = backend.name, backend.multimodal
        self.context_length = backend.context_length
        self.ends_at, self.stopped = math.inf, False
        self._lock = threading.Lock()
        self._waiting: set[queue.Queue[Any]] = set()  # the readers of the answer under way

    def arm(self) -> None:
        """Start the clock of the next answer."""
        self.ends_at, self.stopped = time.monotonic() + self.seconds, False

    def expire(self) -> None:
        """End the armed answer now, as its deadline would: a reader waiting for the model stops at once,
        and later calls answer "" until the next `arm()`."""
        with self._lock:
            self.ends_at = -math.inf
            for readers in self._waiting:
                readers.put(_EXPIRED)

    def count_tokens(self, messages: list[Message]) -> int:
        return self.backend.count_tokens(messages)

    def generate(
        self,
        conversations: Sequence[list[Message]],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        *,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
    ) -> list[str]:
        options = _options(max_new_tokens, temperature, repetition_penalty, no_repeat_ngram_size)
        return [cut_to_sentence("".join(self._pieces(messages, options))) for messages in conversations]

    def stream(
        self,
        messages: list[Message],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        *,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
    ) -> Iterator[str]:
        options = _options(max_new_tokens, temperature, repetition_penalty, no_repeat_ngram_size)
        yield from self._pieces(messages, options)

    def _pieces(self, messages: list[Message], options: dict[str, Any]) -> Iterator[str]:
        pieces: queue.Queue[Any] = queue.Queue()
        with self._lock:  # registered before the deadline is read: an expire() from here on wakes it
            self._waiting.add(pieces)
        stop = threading.Event()
        try:
            if self.stopped or time.monotonic() >= self.ends_at:
                self.stopped = True
                return

            def read() -> None:
                try:
                    source = self.backend.stream(messages, **options)
                    try:
                        for piece in source:
                            pieces.put(piece)
                            if stop.is_set():
                                break
                    finally:
                        source.close()  # stops the generation
                except BaseException as err:  # noqa: BLE001 - handed to the reader below
                    pieces.put(_Raised(err))
                finally:
                    pieces.put(_DONE)

            threading.Thread(target=read, name="llm-deadline", daemon=True).start()
            while True:
                left = self.ends_at - time.monotonic()
                try:
                    if left <= 0:
                        raise queue.Empty
                    item = pieces.get(timeout=min(left, threading.TIMEOUT_MAX))  # never armed: inf
                except queue.Empty:
                    item = _EXPIRED
                if item is _EXPIRED:
                    self.stopped = True
                    return
                if item is _DONE:
                    return
                if isinstance(item, _Raised):
                    raise item.error
                yield item
        finally:
            stop.set()
            with self._lock:
                self._waiting.discard(pieces)

    def close(self) -> None:
        """Nothing: the shared backend outlives every session."""


@dataclass(frozen=True)
class _Raised:
    error: BaseException


_DONE, _EXPIRED = object(), object()


def _options(
    max_new_tokens: int, temperature: float, repetition_penalty: float, no_repeat_ngram_size: int
) -> dict[str, Any]:
    """The generation settings, as the wrapped backend's `stream` takes them."""
    return {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "repetition_penalty": repetition_penalty,
        "no_repeat_ngram_size": no_repeat_ngram_size,
    }

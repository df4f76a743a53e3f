"""What every LLM backend offers: batched generation, streaming and token counting over chat messages.

A message is OpenAI-shaped: {"role": "system" | "user" | "assistant", "content": str | list[part]},
a part being {"type": "text", "text": str} or {"type": "image", "path": str}. Images travel as file
paths so that a conversation is plain JSON; text-only backends drop them (the facts are in words too).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

Message = dict[str, Any]


class LLMError(RuntimeError):
    """A backend cannot load or answer; the message says why and what to do."""


class Backend(ABC):
    """One loaded language model. Subclasses set `name`, `multimodal` and `context_length`."""

    name: str = "llm"
    multimodal: bool = False
    context_length: int = 2048

    @abstractmethod
    def generate(
        self, conversations: Sequence[list[Message]], max_new_tokens: int = 256, temperature: float = 0.0
    ) -> list[str]:
        """The next assistant reply for each conversation (several at once where the backend can batch)."""

    def stream(
        self, messages: list[Message], max_new_tokens: int = 256, temperature: float = 0.0
    ) -> Iterator[str]:
        """The next reply in pieces as they are produced; by default all at once."""
        yield self.generate([messages], max_new_tokens, temperature)[0]

    @abstractmethod
    def count_tokens(self, messages: list[Message]) -> int:
        """Prompt tokens these messages take with the chat template applied (images included)."""

    def close(self) -> None:
        """Free the model (memory, server connections); nothing to do by default."""
        return None


def text_of(content: str | list[dict[str, Any]]) -> str:
    """The text of a message's content, images dropped."""
    if isinstance(content, str):
        return content
    return "\n".join(part["text"] for part in content if part.get("type") == "text")


def images_of(content: str | list[dict[str, Any]]) -> list[str]:
    """The image paths of a message's content, in order."""
    return [] if isinstance(content, str) else [p["path"] for p in content if p.get("type") == "image"]


def text_only(messages: list[Message]) -> list[Message]:
    """The conversation with images dropped and every content a plain string."""
    return [{"role": m["role"], "content": text_of(m["content"])} for m in messages]

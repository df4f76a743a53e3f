"""What every LLM backend offers: batched generation, streaming and token counting over chat messages.

A message is OpenAI-shaped: {"role": "system" | "user" | "assistant", "content": str | list[part]},
a part being {"type": "text", "text": str} or {"type": "image", "path": str}. Images travel as file
paths so that a conversation is plain JSON; text-only backends drop them (the facts are in words too).

Repetition control, the same two settings in every backend (both off by default; conf/llm/base/generation.yaml
turns them on): `repetition_penalty` (> 1 makes a token the answer already used less likely: a positive
logit is divided by it, a negative one multiplied, as in transformers and llama.cpp) and
`no_repeat_ngram_size` (n > 0: the answer never repeats one of its own n-token sequences). Both look at the
answer only, not the prompt, so that an explanation may quote the facts it was given.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from noodlenext.llm.text import cut_to_sentence

__all__ = [
    "Backend", "LLMError", "Message", "check_repetition", "cut_to_sentence", "generation_options",
    "images_of", "repeated_ngram_bans", "text_of", "text_only",
]  # fmt: skip

Message = dict[str, Any]


class LLMError(RuntimeError):
    """A backend cannot load or answer; the message says why and what to do.

    The one error type of every backend's failures (llama.cpp's context and template errors, transformers'
    out-of-memory and runtime errors, an OpenAI-compatible server's HTTP errors, refusals and timeouts, a
    connection dropped mid-stream), and of `ChatSession`'s, which takes the failed question back first.
    """


class Backend(ABC):
    """One loaded language model. Subclasses set `name`, `multimodal` and `context_length`.

    `generate`, `stream` and `count_tokens` raise LLMError, whatever went wrong underneath. A `stream`
    closed early (its reader gone) stops generating and frees the model.
    """

    name: str = "llm"
    multimodal: bool = False
    context_length: int = 2048
    supports_tools: bool = False  # `choose_tool` asks the model itself which function to call
    supports_schema: bool = False  # `generate_json` constrains the reply to a JSON schema

    @abstractmethod
    def generate(
        self,
        conversations: Sequence[list[Message]],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        *,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
    ) -> list[str]:
        """The next assistant reply for each conversation (several at once where the backend can batch),
        cut to its last complete sentence (`text.cut_to_sentence`).

        max_new_tokens: the longest answer, in tokens; temperature: 0 for greedy answers;
        repetition_penalty, no_repeat_ngram_size: see the module docstring (1.0 and 0: off).
        """

    def stream(
        self,
        messages: list[Message],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        *,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
    ) -> Iterator[str]:
        """The next reply in pieces as they are produced (by default all at once), not cut: a reader sees
        it as it comes, and whoever keeps the whole answer cuts it (ChatSession does)."""
        yield self.generate(
            [messages],
            max_new_tokens,
            temperature,
            repetition_penalty=repetition_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size,
        )[0]

    def generate_json(
        self,
        conversations: Sequence[list[Message]],
        schema: dict[str, Any],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        *,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
    ) -> list[str]:
        """Replies as JSON fitting `schema` (not cut), where the backend can constrain its output
        (`supports_schema`); the others raise LLMError, and callers ask for plain text instead."""
        raise LLMError(f"{self.name} cannot constrain its replies to a JSON schema")

    @abstractmethod
    def count_tokens(self, messages: list[Message]) -> int:
        """Prompt tokens these messages take with the chat template applied (images included)."""

    def choose_tool(
        self, messages: list[Message], tools: list[dict[str, Any]]
    ) -> dict[str, Any] | str | None:
        """The function the model calls to answer the last message, given OpenAI-style `tools`: a
        {"name", "arguments"} dict from a native tool call, the model's text to read a call from
        (`router.parse_tool_call`), or None for no call. Backends without function calling return None
        (`supports_tools` False), and the keyword router decides."""
        return None

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


def generation_options(llm: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The keyword arguments of `Backend.generate`/`stream` that an `llm` config (conf/llm/*.yaml) sets:
    max_new_tokens, temperature, repetition_penalty, no_repeat_ngram_size (absent keys: the defaults,
    repetition control off)."""
    return {
        "max_new_tokens": int(llm.get("max_new_tokens", 256)),
        "temperature": float(llm.get("temperature", 0.0)),
        "repetition_penalty": float(_unset(llm.get("repetition_penalty"), 1.0)),
        "no_repeat_ngram_size": int(_unset(llm.get("no_repeat_ngram_size"), 0)),
    }


def _unset(value: Any, default: Any) -> Any:
    return default if value is None else value


def check_repetition(repetition_penalty: float, no_repeat_ngram_size: int) -> None:
    """Refuse settings no backend can use, naming the config option."""
    if not repetition_penalty > 0:
        raise LLMError(f"llm.repetition_penalty={repetition_penalty}: use a value > 0 (1.0: off, 1.1-1.3)")
    if no_repeat_ngram_size < 0:
        raise LLMError(f"llm.no_repeat_ngram_size={no_repeat_ngram_size}: use 0 (off) or n >= 1 tokens")


def repeated_ngram_bans(tokens: Sequence[int], n: int) -> set[int]:
    """The token ids that, coming next, would repeat an n-token sequence already in `tokens` (the
    answer so far): every token that followed an earlier occurrence of the last n-1 tokens."""
    if n < 1 or len(tokens) < n - 1:
        return set()
    tokens = list(tokens)
    if n == 1:
        return set(tokens)
    tail = tokens[len(tokens) - n + 1 :]
    return {tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tokens[i : i + n - 1] == tail}

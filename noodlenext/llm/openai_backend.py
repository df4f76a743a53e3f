"""Any OpenAI-compatible chat server (vLLM, Ollama, `python -m llama_cpp.server`, OpenAI itself) over HTTP.

The server holds the model and its chat template, so this side only ships messages: several conversations
go out at once (servers batch concurrent requests), images as base64 data URLs when the model sees them.

Repetition control: the OpenAI API has `frequency_penalty` (additive, -2..2, per earlier occurrence) and
no n-gram ban; servers differ in what else they take, so `repetition` picks what is sent (see
REPETITION_STYLES). `no_repeat_ngram_size` cannot be sent to any of them; the grounding gate still
rejects an answer that repeats itself.

The API key goes to `base_url`'s server and nowhere else: every request (chat completions, model listing,
vLLM's /tokenize) goes through the openai client, on an HTTP client of its own kind (httpx or httpx2,
as the openai version uses) that never follows redirects; a 3xx answer is an LLMError naming both
addresses (a redirect would otherwise carry the key, or the conversation, to wherever it points).
"""

from __future__ import annotations

import base64
import json
import math
import mimetypes
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai

from noodlenext.llm.base import Backend, LLMError, Message, check_repetition, cut_to_sentence, text_only

# count_tokens without a server tokenizer: English runs ~4 characters a token, so chars/3 overcounts
# (safe for fitting a context window); each message adds role markers, an image a vision model's fixed
# patch budget (Gemma 3: 256 tokens), and the template itself BOS, the assistant header and, in some
# (SmolLM2, Qwen2.5), a default system prompt of ~20 tokens when the conversation has none.
CHARS_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 8
TOKENS_PER_IMAGE = 256
TOKENS_PER_TEMPLATE = 32

# How a multiplicative repetition_penalty p becomes OpenAI's additive frequency_penalty: 2 * (p - 1), so
# 1.15 -> 0.3. There is no exact conversion (one divides a logit, the other subtracts f per earlier use);
# this lands inside the 0.1..1 that OpenAI's documentation calls reasonable for curbing repetition.
FREQUENCY_PER_PENALTY = 2.0
REPETITION_STYLES = {
    "frequency_penalty": "OpenAI's frequency_penalty (every OpenAI-compatible server takes it)",
    "repeat_penalty": "llama.cpp's server (python -m llama_cpp.server, llama-server): repeat_penalty as is",
    "repetition_penalty": "vLLM, SGLang, TGI: repetition_penalty as is (an extra body field)",
    "none": "send nothing: the server's own defaults",
}


def image_data_url(path: str) -> str:
    """The image file inline as a data: URL, the form every OpenAI-compatible server accepts."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise LLMError(f"cannot read image {path} to send to the model: {e}") from e
    mime = mimetypes.guess_type(path)[0] or "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class OpenAIBackend(Backend):
    """A model served behind an OpenAI-compatible /v1/chat/completions endpoint."""

    supports_schema = True  # response_format json_schema (a server that refuses it: the caller asks for text)

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 2,
        context_length: int = 4096,
        multimodal: bool = False,
        max_parallel: int = 4,
        repetition: str = "frequency_penalty",
        tools: bool = True,
    ) -> None:
        """api_key_env: the environment variable holding the key (local servers need none). repetition:
        how `repetition_penalty` is sent, one of REPETITION_STYLES. tools: offer the chat's tests as
        function tools (`tools=` of the API; a llama.cpp server needs `--jinja`); false: the router picks."""
        if repetition not in REPETITION_STYLES:
            styles = "; ".join(f"{k}: {v}" for k, v in REPETITION_STYLES.items())
            raise LLMError(f"llm.backend.repetition={repetition!r}: use one of {styles}")
        self.repetition = repetition
        self.supports_tools = tools
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.name = f"openai:{model}"
        self.context_length = context_length
        self.multimodal = multimodal
        self.max_parallel = max(1, max_parallel)
        # The HTTP client of every request (they all carry the key); openai's default follows redirects.
        self.http = openai.DefaultHttpxClient(follow_redirects=False)
        self.client = openai.OpenAI(
            base_url=self.base_url,
            api_key=os.environ.get(api_key_env) or "not-needed",  # the client refuses an empty key
            timeout=timeout,
            max_retries=max_retries,
            http_client=self.http,
        )
        self._counting = self.client.with_options(max_retries=0, timeout=min(timeout, 10.0))  # /tokenize
        self._server_counts: bool | None = None  # does the server tokenize chats? None: not asked yet

    def _wire(self, messages: list[Message]) -> list[dict[str, Any]]:
        """Our messages in OpenAI's request form: images become image_url parts, or go when text-only."""
        if not self.multimodal:
            return text_only(messages)
        wire = []
        for m in messages:
            content = m["content"]
            if not isinstance(content, str):
                content = [
                    {"type": "image_url", "image_url": {"url": image_data_url(p["path"])}}
                    if p.get("type") == "image"
                    else {"type": "text", "text": p["text"]}
                    for p in content
                ]
            wire.append({"role": m["role"], "content": content})
        return wire

    def _redirected(self, url: Any, status: int, location: str | None) -> LLMError:
        return LLMError(
            f"{url} answered HTTP {status}, a redirect to {location or '(no Location header)'}; not "
            "followed, so that the API key and the conversation go to no other server: set llm.base_url "
            "to the address the server really answers at"
        )

    def _error(self, e: openai.OpenAIError | LLMError) -> LLMError:
        """What went wrong, in words that say what to do."""
        if isinstance(e, LLMError):
            return e
        if isinstance(e, openai.APIStatusError) and 300 <= e.status_code < 400:
            return self._redirected(e.request.url, e.status_code, e.response.headers.get("location"))
        if isinstance(e, openai.APIConnectionError):  # refused, unreachable or timed out (a subclass)
            why = "timed out" if isinstance(e, openai.APITimeoutError) else str(e.__cause__ or e)
            return LLMError(
                f"no OpenAI-compatible server answers at {self.base_url} ({why}; timeout {self.timeout} s, "
                f"{self.max_retries} retries): start one, e.g. "
                "`python -m llama_cpp.server --model file.gguf`, `ollama serve`, or set llm.base_url"
            )
        if isinstance(e, openai.AuthenticationError | openai.PermissionDeniedError):
            state = "is set" if os.environ.get(self.api_key_env) else "is empty"
            return LLMError(
                f"{self.base_url} refuses the API key (HTTP {e.status_code}; ${self.api_key_env} {state}): "
                f"set the key in ${self.api_key_env}, or set llm.api_key_env to the variable that holds it"
            )
        if isinstance(e, openai.NotFoundError):
            return LLMError(
                f"{self.base_url} has no model {self.model!r} (HTTP 404){self._models_hint()}: set "
                "llm.model, and check that llm.base_url ends where the server's /v1 API starts"
            )
        if isinstance(e, openai.APIStatusError):
            return LLMError(
                f"{self.base_url} answered HTTP {e.status_code} for model {self.model!r}: {e.message}"
            )
        return LLMError(f"{self.base_url}, model {self.model!r}: {e}")

    def _models_hint(self) -> str:
        try:
            ids = [m.id for m in self.client.models.list()]
        except openai.OpenAIError:
            return ""
        return f"; it serves {ids}"

    def _penalty(self, repetition_penalty: float) -> dict[str, Any]:
        """The request fields that carry `repetition_penalty` to this server (nothing when off, so that
        servers and models keep their defaults)."""
        if repetition_penalty == 1.0 or self.repetition == "none":
            return {}
        if self.repetition == "frequency_penalty":
            penalty = FREQUENCY_PER_PENALTY * (repetition_penalty - 1.0)
            return {"frequency_penalty": max(-2.0, min(2.0, penalty))}  # the API's range
        return {"extra_body": {self.repetition: repetition_penalty}}

    def _create(
        self,
        messages: list[Message],
        max_new_tokens: int,
        temperature: float,
        stream: bool,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
    ) -> Any:
        check_repetition(repetition_penalty, no_repeat_ngram_size)
        try:
            return self.client.chat.completions.create(
                model=self.model,
                messages=self._wire(messages),
                max_tokens=max_new_tokens,  # not max_completion_tokens: older servers know only this one
                temperature=temperature,
                stream=stream,
                **self._penalty(repetition_penalty),
            )
        except openai.OpenAIError as e:
            raise self._error(e) from e

    def generate(
        self,
        conversations: Sequence[list[Message]],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        *,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
    ) -> list[str]:
        """All conversations in flight at once (up to max_parallel); answers in the conversations' order.
        no_repeat_ngram_size is checked but not sent: no OpenAI-compatible API takes it."""

        def answer(messages: list[Message]) -> str:
            response = self._create(
                messages, max_new_tokens, temperature, False, repetition_penalty, no_repeat_ngram_size
            )
            if not response.choices:
                raise LLMError(f"{self.base_url}, model {self.model!r}: the server answered without a reply")
            return cut_to_sentence(response.choices[0].message.content or "")

        if not conversations:
            return []
        with ThreadPoolExecutor(min(self.max_parallel, len(conversations))) as pool:
            return list(pool.map(answer, conversations))

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
        """Replies constrained to `schema` (`response_format` json_schema, which OpenAI, vLLM, llama.cpp's
        server and Ollama take); a server that refuses it raises LLMError, and the caller asks for text."""
        check_repetition(repetition_penalty, no_repeat_ngram_size)

        def answer(messages: list[Message]) -> str:
            try:
                response = self.client.chat.completions.create(
                    model=self.model,
                    messages=self._wire(messages),
                    max_tokens=max_new_tokens,
                    temperature=temperature,
                    response_format={
                        "type": "json_schema",
                        "json_schema": {"name": "explanation", "schema": schema},
                    },
                    **self._penalty(repetition_penalty),
                )
            except openai.OpenAIError as e:
                raise self._error(e) from e
            if not response.choices:
                raise LLMError(f"{self.base_url}, model {self.model!r}: the server answered without a reply")
            return response.choices[0].message.content or ""

        if not conversations:
            return []
        with ThreadPoolExecutor(min(self.max_parallel, len(conversations))) as pool:
            return list(pool.map(answer, conversations))

    def choose_tool(
        self, messages: list[Message], tools: list[dict[str, Any]]
    ) -> dict[str, Any] | str | None:
        """A native tool call (`tools=`, `tool_choice="auto"`): the first call's name and parsed arguments,
        else the reply's text (a model may write the call out), else None."""
        try:
            response = self.client.chat.completions.create(
                model=self.model,
                messages=self._wire(messages),
                tools=tools,
                tool_choice="auto",
                max_tokens=128,
                temperature=0.0,
            )
        except openai.OpenAIError as e:
            raise self._error(e) from e
        if not response.choices:
            return None
        message = response.choices[0].message
        for call in message.tool_calls or []:
            function = getattr(call, "function", None)
            if function is None:
                continue
            try:
                arguments = json.loads(function.arguments or "{}")
            except json.JSONDecodeError:
                return None  # a malformed call: the router decides
            return {"name": function.name, "arguments": arguments if isinstance(arguments, dict) else {}}
        return message.content or None

    def stream(
        self,
        messages: list[Message],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        *,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
    ) -> Iterator[str]:
        """The reply as the server sends it (server-sent events); cut to whole sentences it is what
        `generate` answers."""
        chunks = self._create(
            messages, max_new_tokens, temperature, True, repetition_penalty, no_repeat_ngram_size
        )
        try:
            with chunks:  # closed early too (a reader gone): the connection ends, the server stops
                for chunk in chunks:
                    piece = chunk.choices[0].delta.content if chunk.choices else None
                    if piece:
                        yield piece
        # A connection dropped midway: openai >= 2 raises APIConnectionError, older versions httpx's own.
        except (openai.APIConnectionError, httpx.HTTPError) as e:
            cause = e.__cause__ or e if isinstance(e, openai.APIConnectionError) else e
            raise LLMError(f"{self.base_url} stopped answering mid-reply ({cause}): ask again") from e
        except openai.OpenAIError as e:
            raise self._error(e) from e

    def count_tokens(self, messages: list[Message]) -> int:
        """The server's own count where it offers one (vLLM's /tokenize applies the chat template), else a
        deliberate overestimate (see CHARS_PER_TOKEN)."""
        if self._server_counts is not False:
            count = self._server_count(messages)
            if count is not None:
                return count
        wire = messages if self.multimodal else text_only(messages)
        total = TOKENS_PER_TEMPLATE
        for m in wire:
            content = m["content"]
            text = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
            images = 0 if isinstance(content, str) else sum(p.get("type") == "image" for p in content)
            total += TOKENS_PER_MESSAGE + math.ceil(len(text) / CHARS_PER_TOKEN) + images * TOKENS_PER_IMAGE
        return total

    def _server_count(self, messages: list[Message]) -> int | None:
        """vLLM's POST /tokenize (beside /v1, not under it); None where the server gives no count."""
        url = f"{self.base_url.removesuffix('/v1')}/tokenize"
        body = {"model": self.model, "messages": self._wire(messages)}
        try:
            answer = self._counting.post(
                url, cast_to=object, body=body
            )  # an absolute URL: not under base_url
        except openai.APIStatusError as e:
            if 300 <= e.status_code < 400:
                raise self._error(e) from e
            self._server_counts = False  # 404/405: no such endpoint (Ollama, llama.cpp); don't ask again
            return None
        except openai.OpenAIError:  # unreachable, or not JSON: estimate this time, ask again next time
            return None
        count = answer.get("count") if isinstance(answer, dict) else None
        self._server_counts = isinstance(count, int)
        return count if isinstance(count, int) else None

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self.client.close()
        self.http.close()

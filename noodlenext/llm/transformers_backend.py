"""Any hub or local chat model through transformers: multimodal (photo and overlay as images) or text-only.

On CUDA it generates in bf16 with a static KV cache, which lets `generate` torch.compile the decoding step
(transformers compiles it by itself when the cache is static: `CompileConfig`, CUDA graphs), and it answers
several conversations per `generate` call (left padding), which is where a GPU's throughput is.

Repetition control is a logits processor of ours (`AnswerRepetition`) rather than transformers'
`repetition_penalty` / `no_repeat_ngram_size`, whose processors look at the prompt too: they would push
the model away from every word of the facts it is asked to explain, and forbid quoting a 4-token phrase of
them. Ours applies the same two rules to the answer's tokens only, as llama.cpp's sampler does.

Failures come out as LLMErrors that say what to do: a conversation the chat template or the processor
refuses, a prompt that leaves no room in the model's context (an answer that would run past it is cut to
the room left, as llama.cpp does), running out of memory, any other error of `generate`.
"""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from packaging.version import Version
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    CompileConfig,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from noodlenext.data.images import load_rgb
from noodlenext.llm.base import (
    Backend,
    LLMError,
    Message,
    check_repetition,
    cut_to_sentence,
    repeated_ngram_bans,
    text_of,
    text_only,
)

DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}
# from_pretrained's name for it: `torch_dtype` before transformers 4.56.
DTYPE_ARG = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
STATIC_CACHE_STEP = 256  # static cache lengths are rounded up to this, so a compiled decode step is reused


class _Stop:
    """A stopping criterion that ends a streamed generation when its reader has gone away."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


class AnswerRepetition(LogitsProcessor):
    """Repetition penalty and n-gram ban over the generated tokens only (the prompt is `prompt_tokens`
    long; with left padding every row's answer starts there).

    penalty: a token already in the answer has a positive logit divided by it, a negative one multiplied
    (transformers' and llama.cpp's rule; 1.0: off); ngram: no n-token sequence of the answer repeats (0: off).
    """

    def __init__(self, prompt_tokens: int, penalty: float = 1.0, ngram: int = 0) -> None:
        self.prompt_tokens, self.penalty, self.ngram = prompt_tokens, penalty, ngram

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        answer = input_ids[:, self.prompt_tokens :]
        if answer.shape[1] == 0:
            return scores
        if self.penalty != 1.0:
            used = scores.gather(1, answer)
            used = torch.where(used > 0, used / self.penalty, used * self.penalty)
            scores = scores.scatter(1, answer, used)
        if self.ngram > 0:
            for row, tokens in enumerate(answer.tolist()):
                banned = repeated_ngram_bans(tokens, self.ngram)
                if banned:
                    scores[row, list(banned)] = -float("inf")
        return scores


class TransformersBackend(Backend):
    """A transformers model from a hub id or a `save_pretrained` directory.

    multimodal: None detects it from the config (a `vision_config`); False sends a vision model text only.
    static_cache / compile: None means on for CUDA, off on CPU (where compiling costs more than it saves).
    local_files_only: None means offline when the hub cannot be reached within seconds.
    """

    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        device: str = "auto",
        multimodal: bool | None = None,
        batch_size: int = 8,
        static_cache: bool | None = None,
        compile: bool | None = None,
        local_files_only: bool | None = None,
        max_context_tokens: int | None = None,
    ) -> None:
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        )
        cuda = self.device.type == "cuda"
        if cuda and not torch.cuda.is_available():
            raise LLMError(f"llm.backend.device={device}: no CUDA GPU here; use auto or cpu")
        if dtype == "auto":
            self.dtype = torch.bfloat16 if cuda else torch.float32  # CPUs without bf16 units are slower in it
        elif dtype in DTYPES:
            self.dtype = DTYPES[dtype]
        else:
            raise LLMError(f"llm.backend.dtype={dtype!r}: use auto, {', '.join(DTYPES)}")
        self.batch_size = max(1, int(batch_size))
        self.static_cache = cuda if static_cache is None else static_cache
        self.compile = cuda if compile is None else compile
        self.name = str(model)

        source, offline = _resolve(str(model), local_files_only)
        config = _load(AutoConfig.from_pretrained, model, source, offline)
        vision = getattr(config, "vision_config", None) is not None
        if multimodal and not vision:
            raise LLMError(
                f"llm.model={model} has no vision tower (no vision_config): set multimodal to null/false"
            )
        self.multimodal = vision and multimodal is not False
        if vision:
            self.processor: Any = _load(AutoProcessor.from_pretrained, model, source, offline)
            self.tokenizer: Any = self.processor.tokenizer
            model_class: Any = AutoModelForImageTextToText
        else:
            self.processor = None
            self.tokenizer = _load(AutoTokenizer.from_pretrained, model, source, offline)
            model_class = AutoModelForCausalLM
        self.model: Any = _load(
            model_class.from_pretrained, model, source, offline, **{DTYPE_ARG: self.dtype}
        )
        try:
            self.model.to(self.device).eval()
        except torch.OutOfMemoryError as err:
            self.close()
            raise LLMError(_out_of_memory(model, self.device)) from err
        self.tokenizer.padding_side = "left"  # generated tokens follow the prompt directly in every row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # A vision model's template may live on its processor, its tokenizer, or both.
        self._template: Any = next(
            (t for t in (self.processor, self.tokenizer) if getattr(t, "chat_template", None)), None
        )
        if self._template is None:
            raise LLMError(f"llm.model={model} has no chat template: use an instruction-tuned (chat) model")

        limit = config.get_text_config().max_position_embeddings
        self.context_length = min(limit, max_context_tokens) if max_context_tokens else limit

    # ---------------------------------------------------------------------------- prompts
    def prompt(self, messages: list[Message]) -> str:
        """The chat-templated prompt text (images as the model's image placeholder, not yet expanded)."""
        return self._prompts([self._messages(messages)])[0]

    def encode(self, conversations: Sequence[list[Message]]) -> dict[str, torch.Tensor]:
        """Model inputs for a batch of conversations: left-padded token ids, masks and pixel values."""
        conversations = [self._messages(m) for m in conversations]
        texts = self._prompts(conversations)
        kwargs: dict[str, Any] = {"padding": True, "add_special_tokens": False, "return_tensors": "pt"}
        try:
            if self.processor is None:  # only what a causal LM takes (some tokenizers add token_type_ids)
                encoded = self.tokenizer(texts, **kwargs)
                return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
            images = [[_load_image(p["image"]) for p in _image_parts(m)] for m in conversations]
            inputs = self.processor(text=texts, images=images if any(images) else None, **kwargs)
        except LLMError:
            raise
        except (ValueError, TypeError, OSError) as err:  # the tokenizer or processor refuses it
            raise LLMError(f"{self.name}: cannot encode this conversation: {err}") from err
        return {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in inputs.items()}

    def _room(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """max_new_tokens, cut to what the context leaves after the prompt; none left is an LLMError."""
        if prompt_tokens >= self.context_length:
            raise LLMError(
                f"{self.name}: the prompt takes {prompt_tokens} tokens, the model's context is "
                f"{self.context_length}: shorten the conversation or the prompt (prompt.*), or use a model "
                "with a longer context"
            )
        return min(max_new_tokens, self.context_length - prompt_tokens)

    def _messages(self, messages: list[Message]) -> list[Message]:
        """Our messages in the form the chat template expects: images as {"type": "image", "image": path}."""
        if not self.multimodal:
            return text_only(messages)
        out = []
        for m in messages:
            content = m["content"]
            if not isinstance(content, str):
                content = [
                    {"type": "image", "image": p["path"]} if p.get("type") == "image" else p for p in content
                ]
            out.append({"role": m["role"], "content": content})
        return out

    def _prompts(self, conversations: list[list[Message]]) -> list[str]:
        try:
            return [
                self._template.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
                for m in conversations
            ]
        except Exception as err:  # jinja raises its own errors, e.g. roles that do not alternate
            raise LLMError(f"{self.name}: its chat template rejects this conversation: {err}") from err

    def count_tokens(self, messages: list[Message]) -> int:
        return int(self.encode([messages])["input_ids"].shape[1])

    # ---------------------------------------------------------------------------- generation
    def _generate_kwargs(
        self,
        prompt_tokens: int,
        max_new_tokens: int,
        temperature: float,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
    ) -> dict[str, Any]:
        check_repetition(repetition_penalty, no_repeat_ngram_size)
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if repetition_penalty != 1.0 or no_repeat_ngram_size > 0:
            repetition = AnswerRepetition(prompt_tokens, repetition_penalty, no_repeat_ngram_size)
            kwargs["logits_processor"] = LogitsProcessorList([repetition])
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature)
        else:  # greedy; unset the sampling knobs a model's generation_config may carry (they would warn)
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.static_cache:
            # Rounded up so that prompts of similar length share one cache shape (and one compiled graph).
            needed = prompt_tokens + max_new_tokens
            kwargs.update(cache_implementation="static", disable_compile=not self.compile)
            if hasattr(GenerationConfig(), "max_cache_len"):  # transformers >= 5
                kwargs["max_cache_len"] = -(-needed // STATIC_CACHE_STEP) * STATIC_CACHE_STEP
            if self.compile and self.device.type != "cuda":  # transformers compiles on accelerators only
                config = CompileConfig()
                config._compile_all_devices = True
                kwargs["compile_config"] = config
        return kwargs

    def _run(self, inputs: dict[str, torch.Tensor], **kwargs: Any) -> torch.Tensor:
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        try:
            with torch.inference_mode():
                return self.model.generate(**inputs, **kwargs)
        except torch.OutOfMemoryError as err:
            rows = inputs["input_ids"].shape[0]
            raise LLMError(
                f"{self.name}: out of memory generating {rows} answer(s) at once: lower "
                "llm.backend.batch_size or llm.max_new_tokens, or use a smaller model"
            ) from err
        except LLMError:
            raise
        except (RuntimeError, ValueError, IndexError) as err:  # CUDA, shapes, positions, settings
            raise LLMError(f"{self.name}: generation failed: {err!r}") from err

    def generate(
        self,
        conversations: Sequence[list[Message]],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        *,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
    ) -> list[str]:
        answers: list[str] = []
        for start in range(0, len(conversations), self.batch_size):
            inputs = self.encode(conversations[start : start + self.batch_size])
            prompt_tokens = inputs["input_ids"].shape[1]
            room = self._room(prompt_tokens, max_new_tokens)
            kwargs = self._generate_kwargs(
                prompt_tokens, room, temperature, repetition_penalty, no_repeat_ngram_size
            )
            out = self._run(inputs, **kwargs)
            answers += self.tokenizer.batch_decode(out[:, prompt_tokens:], skip_special_tokens=True)
        return [cut_to_sentence(a) for a in answers]

    supports_tools = True  # a native `tools` chat template, or Gemma's documented prompt-based calling

    def choose_tool(
        self, messages: list[Message], tools: list[dict[str, Any]]
    ) -> dict[str, Any] | str | None:
        """The model's text in answer to the tools: through the chat template's own `tools` when it has
        them, else (Gemma 3's template has none) the tools described in the last user turn, as Google's
        function-calling guide for Gemma does, asking for `name(argument="value")` or `none`."""
        template = getattr(self._template, "chat_template", None) or ""
        chat = text_only(messages)  # the pick needs the words, not the photo
        if "tools" in str(template):
            try:
                prompt = self._template.apply_chat_template(
                    chat, tools=tools, add_generation_prompt=True, tokenize=False
                )
            except Exception as err:  # noqa: BLE001 - jinja's own errors
                raise LLMError(f"{self.name}: its chat template rejects tools: {err}") from err
        else:
            *rest, last = chat
            listed = "\n".join(json.dumps(t["function"]) for t in tools)
            asked = (
                f"{text_of(last['content'])}\n\nYou can run one of these tests on the photo to answer:\n"
                f'{listed}\nReply with only the call, like why_not(other="udon"), or with none.'
            )
            prompt = self._prompts([[*rest, {"role": "user", "content": asked}]])[0]
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        prompt_tokens = inputs["input_ids"].shape[1]
        kwargs = self._generate_kwargs(prompt_tokens, self._room(prompt_tokens, 48), 0.0)
        out = self._run(dict(inputs), **kwargs)
        return self.tokenizer.decode(out[0, prompt_tokens:], skip_special_tokens=True).strip() or None

    def stream(
        self,
        messages: list[Message],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        *,
        repetition_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
    ) -> Iterator[str]:
        """The reply in decoded pieces; cut to whole sentences they are what `generate` answers."""
        inputs = self.encode([messages])
        prompt_tokens = inputs["input_ids"].shape[1]
        room = self._room(prompt_tokens, max_new_tokens)
        kwargs = self._generate_kwargs(
            prompt_tokens, room, temperature, repetition_penalty, no_repeat_ngram_size
        )
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop, errors = _Stop(), []

        def run() -> None:
            try:
                self._run(inputs, streamer=streamer, stopping_criteria=StoppingCriteriaList([stop]), **kwargs)
            except BaseException as err:  # handed to the reader, which would otherwise wait forever
                errors.append(err)
                streamer.end()

        thread = threading.Thread(target=run, name="llm-stream", daemon=True)
        thread.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
        finally:
            stop.event.set()  # the reader stopped early: end the generation at its next token
            thread.join()
        if errors:
            if isinstance(errors[0], LLMError):
                raise errors[0]
            raise LLMError(f"{self.name}: generation failed: {errors[0]!r}") from errors[0]

    def close(self) -> None:
        for attr in ("model", "processor", "tokenizer", "_template"):
            if hasattr(self, attr):
                delattr(self, attr)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# -------------------------------------------------------------------------------- loading and its errors
def _image_parts(messages: list[Message]) -> list[dict[str, Any]]:
    return [
        p for m in messages if not isinstance(m["content"], str) for p in m["content"] if p["type"] == "image"
    ]


def _load_image(path: str) -> Image.Image:
    try:
        return load_rgb(path)  # upright (EXIF), any mode as RGB: as the classifier sees photos
    except OSError as err:
        raise LLMError(f"cannot read the image {path}: {err}") from err


def _resolve(model: str, local_files_only: bool | None) -> tuple[str, bool]:
    """Where to load `model` from and whether offline; raises at once what can be known without loading."""
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path), True
    if path.is_file():
        raise LLMError(f"llm.model={model} is a file; a GGUF file goes through llm=gguf llm.model={model}")
    if model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model:
        raise LLMError(
            f"llm.model={model}: no such directory. Give a directory written by save_pretrained (or a "
            "downloaded snapshot) or a hub id such as google/gemma-3-4b-it"
        )
    if local_files_only is None:
        from noodlenext.core.hub import hub_reachable

        local_files_only = not hub_reachable()
    if local_files_only and not _cached(model):
        raise LLMError(_not_cached(model))
    return model, local_files_only


def _cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _how_to_download(model: str) -> str:
    return (
        f"On a machine with internet run `hf download {model}` (older huggingface_hub: `huggingface-cli "
        f"download {model}`) and copy its ~/.cache/huggingface here, or download it to a folder and "
        "set llm.model=/path/to/that/folder. Gated models (Gemma among them) first need their licence "
        f"accepted on https://huggingface.co/{model} and a token: `hf auth login` or HF_TOKEN."
    )


def _not_cached(model: str) -> str:
    return (
        f"llm.model={model} is not in the local Hugging Face cache and the hub cannot be reached (offline or "
        f"HF_HUB_OFFLINE=1). {_how_to_download(model)} Or use the offline default: llm=smollm2."
    )


def _out_of_memory(model: str, device: torch.device) -> str:
    return (
        f"out of memory loading llm.model={model} on {device}: use a smaller model (e.g. llm=smollm2, "
        "which runs on CPU), free GPU memory (other processes, a larger classifier batch), or "
        "llm.backend.device=cpu"
    )


def _load(fn: Any, model: str, source: str, offline: bool, **kwargs: Any) -> Any:
    """fn(source, ...) with hub and memory failures turned into LLMErrors that say what to do."""
    try:
        return fn(source, local_files_only=offline, **kwargs)
    except torch.OutOfMemoryError as err:
        raise LLMError(_out_of_memory(model, torch.device("cuda"))) from err
    except Exception as err:  # transformers wraps hub errors in OSError/ValueError; the cause says which
        raise LLMError(_load_failure(model, err, offline)) from err


def _load_failure(model: str, err: BaseException, offline: bool) -> str:
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    if Path(model).expanduser().is_dir():
        return f"llm.model={model}: cannot load a transformers model from this directory: {err}"
    chain, cause = [], err
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    status = {getattr(getattr(e, "response", None), "status_code", None) for e in chain}
    text = " ".join(str(e) for e in chain).lower()
    if any(isinstance(e, GatedRepoError) for e in chain) or "gated" in text or status & {401, 403}:
        return (
            f"llm.model={model} is gated: accept its licence on https://huggingface.co/{model} while "
            f"logged in, then `hf auth login` or set HF_TOKEN on this machine ({err})"
        )
    if any(isinstance(e, RepositoryNotFoundError) for e in chain) or 404 in status:
        return f"llm.model={model}: no such model on the hub (or private: log in with a token) ({err})"
    if offline or any(isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)) for e in chain):
        return f"{_not_cached(model)} ({err})"
    return f"cannot load llm.model={model}: {err}"

"""TransformersBackend on tiny random models saved like hub checkpoints; no hub, no mocks."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tiny_llms import BOS, PAD

from noodlenext.core.config import CONFIG_DIR
from noodlenext.llm.base import LLMError, Message, text_only
from noodlenext.llm.load import load_backend
from noodlenext.llm.session import ChatSession
from noodlenext.llm.text import cut_to_sentence
from noodlenext.llm.transformers_backend import AnswerRepetition, TransformersBackend

MM_TOKENS = 4  # the tiny Gemma 3's tokens per image


@pytest.fixture(scope="session")
def models(tiny_llms: dict[str, Path]) -> dict[str, Path]:
    """The session's tiny Gemma 3 (MM_TOKENS per image) and Llama, and a photo and overlay (conftest)."""
    return tiny_llms


@pytest.fixture(scope="module")
def gemma(models: dict[str, Path]) -> TransformersBackend:
    return TransformersBackend(str(models["gemma3"]))


@pytest.fixture(scope="module")
def conversations(models: dict[str, Path]) -> list[list[Message]]:
    """Three conversations of different lengths, one with two images, so a batch needs padding."""
    root = models["root"]
    return [
        [
            {"role": "system", "content": "You are a helpful assistant that explains an image classifier."},
            {
                "role": "user",
                "content": [
                    {"type": "image", "path": str(root / "photo.png")},
                    {"type": "image", "path": str(root / "overlay.png")},
                    {"type": "text", "text": "The classifier thinks this photo shows ramen. Why?"},
                ],
            },
        ],
        [
            {
                "role": "user",
                "content": "Why did the model confuse udon with ramen? The broth and the bowl look alike.",
            }
        ],
        [{"role": "user", "content": "Why?"}],
    ]


def test_multimodal_detected_and_images_expand_to_image_tokens(
    gemma: TransformersBackend, conversations: list[list[Message]]
) -> None:
    assert gemma.multimodal and type(gemma.model).__name__ == "Gemma3ForConditionalGeneration"
    assert gemma.context_length == 2048 and gemma.dtype == torch.float32
    with_images = conversations[0]
    without = text_only(with_images)
    extra = gemma.count_tokens(with_images) - gemma.count_tokens(without)
    # Each image: <start_of_image>, MM_TOKENS soft tokens, <end_of_image> and the blank lines around them.
    assert 2 * MM_TOKENS < extra <= 2 * (MM_TOKENS + 6)
    inputs = gemma.encode([with_images])
    assert inputs["pixel_values"].shape[0] == 2
    assert (inputs["input_ids"] == gemma.model.config.image_token_index).sum() == 2 * MM_TOKENS


def test_chat_template_is_applied(gemma: TransformersBackend, conversations: list[list[Message]]) -> None:
    prompt = gemma.prompt(conversations[0])
    # Gemma 3's template: the system prompt opens the first user turn; the prompt ends on the model's turn.
    assert prompt.startswith("<bos><start_of_turn>user\nYou are a helpful assistant")
    assert prompt.endswith("<end_of_turn>\n<start_of_turn>model\n")
    ids = gemma.encode([conversations[0]])["input_ids"][0].tolist()
    assert ids[0] == BOS and ids.count(BOS) == 1  # the template's <bos>, not a second one from the tokenizer
    assert gemma.count_tokens(conversations[0]) == len(ids)


def test_a_second_turn_carries_the_first(
    gemma: TransformersBackend, conversations: list[list[Message]]
) -> None:
    first = conversations[0]
    answer = gemma.generate([first], max_new_tokens=12)[0].strip()
    assert answer
    follow_up = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "Is it udon?"}]
    ids = gemma.encode([follow_up])["input_ids"][0]
    seen = gemma.tokenizer.decode(ids)
    assert (
        "this photo shows ramen. Why?" in seen and answer in seen and seen.index(answer) < seen.index("udon?")
    )
    assert f"<start_of_turn>model\n{answer}<end_of_turn>" in gemma.prompt(follow_up)
    assert gemma.count_tokens(follow_up) > gemma.count_tokens(first)


@pytest.mark.parametrize("static_cache", [False, True], ids=["dynamic-cache", "static-cache"])
def test_batched_generate_equals_one_at_a_time(
    models: dict[str, Path], conversations: list[list[Message]], static_cache: bool
) -> None:
    backend = TransformersBackend(
        str(models["gemma3"]), batch_size=2, static_cache=static_cache, compile=False
    )
    alone = [backend.generate([c], max_new_tokens=10)[0] for c in conversations]
    batched = backend.generate(conversations, max_new_tokens=10)  # a batch of 2, then 1
    backend.batch_size = 3
    assert batched == alone == backend.generate(conversations, max_new_tokens=10)
    assert len(set(alone)) == 3  # the answers differ, so a mixed-up row would show


def test_stream_pieces_add_up_to_the_answer(
    gemma: TransformersBackend, conversations: list[list[Message]]
) -> None:
    pieces = list(gemma.stream(conversations[0], max_new_tokens=16))
    assert len(pieces) > 1
    assert cut_to_sentence("".join(pieces)) == gemma.generate([conversations[0]], max_new_tokens=16)[0]
    early = gemma.stream(conversations[1], max_new_tokens=200)
    next(early)
    early.close()  # a reader that stops early ends the generation thread too (join would hang otherwise)


def test_a_failed_or_abandoned_answer_leaves_the_chat_usable(
    gemma: TransformersBackend, models: dict[str, Path]
) -> None:
    """Gemma's template refuses roles that do not alternate, so each next question shows that an abandoned
    or failed one left the history well formed: the abandoned answer's given sentence stays, marked; a
    question whose image cannot be read leaves no trace."""
    on = {"repetition_penalty": 1.3, "no_repeat_ngram_size": 3}  # the random model then ends sentences
    session = ChatSession(gemma, [], max_new_tokens=120, **on)
    stream = session.ask_stream("Why?")
    given = next(stream)
    stream.close()  # a browser tab closed
    assert session.messages == [
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": given.strip(), "interrupted": True},
    ]
    gone = [{"type": "image", "path": str(models["root"] / "gone.png")}, {"type": "text", "text": "And now?"}]
    with pytest.raises(LLMError, match="cannot read the image"):
        session.ask(gone)
    with pytest.raises(LLMError, match="cannot read the image"):
        list(session.ask_stream(gone))
    assert len(session.messages) == len(session.transcript) == 2
    with pytest.raises(LLMError, match="roles must alternate"):  # what a question left behind would cause
        gemma.count_tokens(
            [*session.messages, {"role": "user", "content": "?"}, {"role": "user", "content": "?"}]
        )
    session.max_new_tokens = 8
    session.ask("Is it udon?")
    assert [m["role"] for m in session.messages] == ["user", "assistant"] * 2
    assert f"<start_of_turn>model\n{given.strip()}<end_of_turn>" in gemma.prompt(session.messages)


def test_a_prompt_over_the_context_is_an_llm_error(models: dict[str, Path]) -> None:
    """Past max_position_embeddings (or max_context_tokens) a model computes nonsense or fails outright;
    the backend refuses such a prompt and cuts an answer to the room the context leaves (as llama.cpp)."""
    llama = TransformersBackend(str(models["llama"]), max_context_tokens=64)
    long: list[Message] = [{"role": "user", "content": "noodles " * 80}]
    with pytest.raises(LLMError, match="the model's context is 64: shorten"):
        llama.generate([long], max_new_tokens=8)
    with pytest.raises(LLMError, match="the model's context is 64: shorten"):
        list(llama.stream(long, max_new_tokens=8))
    assert llama._room(60, 30) == 4 and llama._room(10, 30) == 30
    assert len(llama.generate([[{"role": "user", "content": "Why?"}]], max_new_tokens=200)) == 1


def repeats(tokens: list[int], n: int) -> int:
    """How many n-grams of `tokens` (trailing padding dropped) repeat an earlier one."""
    while tokens and tokens[-1] == PAD:
        tokens = tokens[:-1]
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) - len(set(grams))


def test_repetition_control_reaches_generate(
    models: dict[str, Path], conversations: list[list[Message]]
) -> None:
    backend = TransformersBackend(str(models["gemma3"]), batch_size=2)
    batch = conversations[1:]
    inputs = backend.encode(batch)
    prompt = inputs["input_ids"].shape[1]

    def answers(penalty: float, ngram: int) -> list[list[int]]:
        out = backend._run(inputs, **backend._generate_kwargs(prompt, 40, 0.0, penalty, ngram))
        return out[:, prompt:].tolist()

    plain = answers(1.0, 0)
    assert all(repeats(row, 3) > 5 for row in plain)  # a random model loops
    assert all(repeats(row, 3) == 0 for row in answers(1.0, 3))
    penalised = answers(1.5, 0)
    assert all(repeats(row, 3) < repeats(p, 3) for row, p in zip(penalised, plain, strict=True))
    on = {"repetition_penalty": 1.3, "no_repeat_ngram_size": 3}
    batched = backend.generate(batch, max_new_tokens=20, **on)
    assert batched == [backend.generate([c], max_new_tokens=20, **on)[0] for c in batch]  # padding-safe
    assert batched != backend.generate(batch, max_new_tokens=20)
    assert all(a == cut_to_sentence(a) for a in batched)
    streamed = "".join(backend.stream(batch[0], max_new_tokens=20, **on))
    assert cut_to_sentence(streamed) == batched[0]
    with pytest.raises(LLMError, match="llm.no_repeat_ngram_size=-2"):
        backend.generate(batch, max_new_tokens=4, no_repeat_ngram_size=-2)


def test_repetition_control_looks_at_the_answer_only() -> None:
    """The prompt's tokens may be quoted: transformers' own processors would penalise and ban them."""
    prompt, answer = [5, 6, 7, 5, 6], [1, 2, 3, 1, 2]
    scores = torch.full((1, 10), 2.0)
    out = AnswerRepetition(len(prompt), penalty=2.0, ngram=3)(torch.tensor([prompt + answer]), scores.clone())
    assert out[0, 3] == -float("inf")  # "1 2 3" is in the answer: 3 after "1 2" would repeat it
    assert out[0, 7] == 2.0  # "5 6 7" is only in the prompt
    assert out[0, 1] == out[0, 2] == 1.0 and out[0, 5] == 2.0  # answer tokens penalised, prompt ones not
    assert AnswerRepetition(len(prompt + answer), 2.0, 3)(torch.tensor([prompt + answer]), scores).equal(
        scores
    )


def test_sampling_draws_from_the_seeded_generator(
    gemma: TransformersBackend, conversations: list[list[Message]]
) -> None:
    def sampled(seed: int) -> list[str]:
        torch.manual_seed(seed)
        return gemma.generate(conversations[1:], max_new_tokens=8, temperature=0.9)

    first = sampled(0)
    assert len(first) == 2 and all(a.strip() for a in first)
    assert sampled(0) == first  # the same draws, the same answers
    assert sampled(1) != first  # other draws: sampling is on, not greedy decoding
    assert first != gemma.generate(conversations[1:], max_new_tokens=8)


def test_text_only_model_drops_images(models: dict[str, Path], conversations: list[list[Message]]) -> None:
    llama = TransformersBackend(str(models["llama"]), max_context_tokens=512)
    assert not llama.multimodal and llama.processor is None and llama.context_length == 512
    assert "<start_of_image>" not in llama.prompt(conversations[0])
    assert llama.count_tokens(conversations[0]) == llama.count_tokens(text_only(conversations[0]))
    assert len(llama.generate(conversations, max_new_tokens=6)) == 3

    blind = TransformersBackend(str(models["gemma3"]), multimodal=False)  # a vision model told to read only
    assert not blind.multimodal and "<start_of_image>" not in blind.prompt(conversations[0])
    assert "pixel_values" not in blind.encode([conversations[0]])


def test_built_from_the_hydra_config(models: dict[str, Path]) -> None:
    llm = OmegaConf.load(Path(CONFIG_DIR) / "llm" / "transformers.yaml")
    llm.model = str(models["llama"])
    backend = load_backend(llm)
    assert isinstance(backend, TransformersBackend) and not backend.multimodal


def no_network(*args: object) -> None:
    raise AssertionError("a connection was attempted")


def test_errors_say_what_to_do(
    models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    conversations: list[list[Message]],
) -> None:
    with pytest.raises(LLMError, match="no such directory"):
        TransformersBackend(str(tmp_path / "no" / "model"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(LLMError, match="llm=gguf"):
        TransformersBackend(str(gguf))
    with pytest.raises(LLMError, match="no vision tower"):
        TransformersBackend(str(models["llama"]), multimodal=True)
    with pytest.raises(LLMError, match="cannot read the image"):
        TransformersBackend(str(models["gemma3"])).count_tokens(
            [{"role": "user", "content": [{"type": "image", "path": str(tmp_path / "gone.png")}]}]
        )

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(socket.socket, "connect", no_network)  # fails at once: nothing waits on a network
    with pytest.raises(LLMError) as err:
        TransformersBackend("noodlenext-tests/not-a-cached-model")
    message = str(err.value)
    assert "noodlenext-tests/not-a-cached-model is not in the local Hugging Face cache" in message
    assert "hf download noodlenext-tests/not-a-cached-model" in message and "HF_TOKEN" in message
    assert "llm.model=/path/to" in message


@pytest.mark.slow
def test_static_cache_with_compile_matches_eager_on_cpu(
    models: dict[str, Path], conversations: list[list[Message]]
) -> None:
    """The CUDA speed path, forced on CPU (compiling takes ~30 s here): same greedy answers as eager."""
    eager = TransformersBackend(str(models["gemma3"]), static_cache=False, compile=False)
    fast = TransformersBackend(str(models["gemma3"]), static_cache=True, compile=True)
    expected = eager.generate(conversations, max_new_tokens=8)
    assert fast.generate(conversations, max_new_tokens=8) == expected
    assert fast.generate(conversations, max_new_tokens=8) == expected  # the compiled step, reused
    assert hasattr(fast.model, "_compiled_call")
    on = {"repetition_penalty": 1.3, "no_repeat_ngram_size": 3}  # our logits processor, outside the graph
    assert fast.generate(conversations, max_new_tokens=8, **on) == eager.generate(
        conversations, max_new_tokens=8, **on
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_defaults_static_cache_compile_bf16(
    models: dict[str, Path], conversations: list[list[Message]]
) -> None:
    fast = TransformersBackend(str(models["gemma3"]))
    assert fast.static_cache and fast.compile and fast.dtype == torch.bfloat16
    answers = [fast.generate(conversations, max_new_tokens=8) for _ in range(2)]
    assert answers[0] == answers[1] and len(answers[0]) == 3
    assert hasattr(fast.model, "_compiled_call")
    # Exactness against eager in float32 (bf16 roundings could flip a near-tie of the random model's logits).
    exact = TransformersBackend(str(models["gemma3"]), dtype="float32")
    eager = TransformersBackend(str(models["gemma3"]), dtype="float32", static_cache=False, compile=False)
    assert exact.generate(conversations, max_new_tokens=8) == eager.generate(conversations, max_new_tokens=8)

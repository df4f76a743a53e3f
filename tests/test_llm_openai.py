"""OpenAIBackend against a real OpenAI-compatible server: llama-cpp-python's, serving the packaged SmolLM2."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from noodlenext.llm.base import LLMError, Message
from noodlenext.llm.gguf_backend import GGUFBackend, smollm2_path
from noodlenext.llm.openai_backend import OpenAIBackend, image_data_url
from noodlenext.llm.text import cut_to_sentence, ends_on_sentence

KEY_ENV = "NOODLENEXT_TEST_LLM_KEY"
KEY = "noodle-secret"  # the server demands a key, so the 401 path is tested too

TOMATO: list[Message] = [{"role": "user", "content": "What colour is a ripe tomato? Answer in one word."}]
NOODLE: list[Message] = [{"role": "user", "content": "Name a Japanese noodle dish."}]
LOOP: list[Message] = [{"role": "user", "content": "List ten noodle dishes, one per line."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """`python -m llama_cpp.server` on a free port, up once /v1/models answers; stopped after the module."""
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path()), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--n_ctx", "2048", "--api_key", KEY]
    url = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a full pipe would stall the server
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                if server.poll() is not None:
                    log.seek(0)
                    pytest.fail(
                        f"llama_cpp.server exited ({server.returncode}):\n{log.read().decode()[-4000:]}"
                    )
                if time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"llama_cpp.server not up after 60 s:\n{log.read().decode()[-4000:]}")
                request = urllib.request.Request(f"{url}/models", headers={"Authorization": f"Bearer {KEY}"})
                try:
                    urllib.request.urlopen(request, timeout=2).close()
                    break
                except OSError:
                    time.sleep(0.2)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@pytest.fixture(scope="module")
def backend(base_url: str) -> Iterator[OpenAIBackend]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, KEY)
        b = OpenAIBackend(base_url=base_url, model="smollm2", api_key_env=KEY_ENV, timeout=60, max_parallel=2)
    yield b
    b.close()


@pytest.mark.slow
def test_concurrent_generate_keeps_order(backend: OpenAIBackend) -> None:
    one_by_one = backend.generate([TOMATO], 40) + backend.generate([NOODLE], 40)
    together = backend.generate([TOMATO, NOODLE], 40)
    assert all(a.strip() for a in together) and one_by_one[0] != one_by_one[1]
    assert together == one_by_one  # greedy: the same answers, in the conversations' order
    assert backend.generate([], 40) == []


@pytest.mark.slow
def test_stream_adds_up_to_generate(backend: OpenAIBackend) -> None:
    pieces = list(backend.stream(NOODLE, 40))
    assert len(pieces) > 1 and cut_to_sentence("".join(pieces)) == backend.generate([NOODLE], 40)[0]


@pytest.mark.slow
def test_repetition_penalty_reaches_the_server(backend: OpenAIBackend, base_url: str) -> None:
    """frequency_penalty (any OpenAI API) by default; llama.cpp's own repeat_penalty when asked for."""
    (plain,) = backend.generate([LOOP], 48)
    (penalised,) = backend.generate([LOOP], 48, repetition_penalty=1.5)
    assert backend._penalty(1.5) == {"frequency_penalty": 1.0} and backend._penalty(1.0) == {}
    assert penalised != plain
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, KEY)
        native = OpenAIBackend(
            base_url=base_url, model="smollm2", api_key_env=KEY_ENV, repetition="repeat_penalty"
        )
    try:
        assert native._penalty(1.5) == {"extra_body": {"repeat_penalty": 1.5}}
        (strong,) = native.generate([LOOP], 48, repetition_penalty=1.5)
        assert strong not in (plain, penalised)
        # the n-gram ban cannot be sent: accepted, and the answer is the same
        assert native.generate([LOOP], 48, repetition_penalty=1.5, no_repeat_ngram_size=4) == [strong]
    finally:
        native.close()
    with pytest.raises(LLMError, match="llm.backend.repetition='vllm'.*repetition_penalty: vLLM"):
        OpenAIBackend(base_url=base_url, model="smollm2", repetition="vllm")


@pytest.mark.slow
def test_an_answer_cut_by_the_token_limit_ends_on_a_full_sentence(backend: OpenAIBackend) -> None:
    question: list[Message] = [
        {"role": "user", "content": "The heatmap is brightest on the thick white noodles. Why udon? Explain."}
    ]
    raw = "".join(backend.stream(question, 48))
    (answer,) = backend.generate([question], 48)
    assert not ends_on_sentence(raw) and ends_on_sentence(answer) and raw.startswith(answer)


@pytest.mark.slow
def test_images_are_dropped_for_a_text_model(backend: OpenAIBackend, tmp_path: Path) -> None:
    parts = [
        {"type": "image", "path": str(tmp_path / "x.png")},
        {"type": "text", "text": TOMATO[0]["content"]},
    ]
    with_image: list[Message] = [{"role": "user", "content": parts}]
    assert backend.generate([with_image], 40) == backend.generate([TOMATO], 40)


@pytest.mark.slow
def test_count_tokens_overestimates_the_real_prompt(backend: OpenAIBackend) -> None:
    """llama.cpp's server has no /tokenize, so the estimate is used: it must not undercount."""
    gguf = GGUFBackend()
    try:
        chat: list[Message] = [
            {"role": "system", "content": "You explain an image classifier's decisions to a cook."},
            {
                "role": "user",
                "content": "Why udon (91%) and not ramen (7%)? The heatmap lights the thick noodles.",
            },
            {"role": "assistant", "content": "Udon noodles are thick and white, which is what it looked at."},
            {"role": "user", "content": "And the broth?"},
        ]
        for messages in (TOMATO, chat):
            assert backend.count_tokens(messages) >= gguf.count_tokens(messages)
        assert backend._server_counts is False  # asked once, answered 404, not asked again
        assert backend.count_tokens(chat) > backend.count_tokens(chat[:2])
    finally:
        gguf.close()


@pytest.mark.slow
def test_wrong_key_names_the_variable(base_url: str) -> None:
    b = OpenAIBackend(base_url=base_url, model="smollm2", api_key_env="NOODLENEXT_TEST_UNSET_KEY")
    with pytest.raises(LLMError, match=r"\$NOODLENEXT_TEST_UNSET_KEY"):
        b.generate([TOMATO], 4)
    with pytest.raises(LLMError, match="HTTP 401"):
        list(b.stream(TOMATO, 4))


@pytest.mark.slow
def test_wrong_path_is_a_404_naming_the_model(base_url: str) -> None:
    wrong = base_url.replace("/v1", "/api/v1")
    b = OpenAIBackend(base_url=wrong, model="smollm2", api_key_env=KEY_ENV)
    with pytest.raises(LLMError, match="no model 'smollm2'") as err:
        b.generate([TOMATO], 4)
    assert wrong in str(err.value)


def test_no_server_fails_fast_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    b = OpenAIBackend(base_url=url, model="smollm2", timeout=2, max_retries=0)
    start = time.monotonic()
    with pytest.raises(LLMError, match="no OpenAI-compatible server answers") as err:
        b.generate([TOMATO], 4)
    with pytest.raises(LLMError, match="llama_cpp.server"):
        list(b.stream(TOMATO, 4))
    assert url in str(err.value) and time.monotonic() - start < 5


def test_silent_server_times_out() -> None:
    """A port that accepts connections but never answers: the timeout, not a hang."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        b = OpenAIBackend(base_url=url, model="smollm2", timeout=1, max_retries=0)
        start = time.monotonic()
        with pytest.raises(LLMError, match="timed out") as err:
            b.generate([TOMATO], 4)
        assert url in str(err.value) and time.monotonic() - start < 5


def test_image_data_url_round_trips(tmp_path: Path) -> None:
    png = tmp_path / "heatmap.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    url = image_data_url(str(png))
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == png.read_bytes()
    with pytest.raises(LLMError, match="missing.png"):
        image_data_url(str(tmp_path / "missing.png"))


def test_multimodal_sends_images_as_data_urls(tmp_path: Path) -> None:
    png = tmp_path / "photo.jpg"
    png.write_bytes(b"\xff\xd8\xff")
    b = OpenAIBackend(base_url="http://127.0.0.1:9/v1", model="gemma3", multimodal=True)
    messages: list[Message] = [
        {"role": "user", "content": [{"type": "image", "path": str(png)}, {"type": "text", "text": "What?"}]}
    ]
    (wire,) = b._wire(messages)
    assert wire["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert wire["content"][1] == {"type": "text", "text": "What?"}
    assert b.count_tokens(messages) > b.count_tokens([{"role": "user", "content": "What?"}]) + 200

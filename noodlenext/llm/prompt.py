"""The messages that ask a language model to explain one photo, or one group of mistakes, from its claims.

`PromptSettings` is conf/prompt/*.yaml as typed settings (the one source of every prompt text, the retry
message and the word limit); `evidence_messages` and `group_messages` fill its templates with the
evidence's numbered lines (`Evidence.lines()`, the words of its claims), which the model cites and the
grounding gate checks against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from noodlenext.core.config import CONFIG_DIR
from noodlenext.explain.evidence import Evidence
from noodlenext.llm.base import Message

__all__ = ["PromptSettings", "evidence_fields", "evidence_messages", "group_messages", "render"]


@dataclass(frozen=True)
class PromptSettings:
    """The prompt config (conf/prompt/explain.yaml): the system prompts, the question templates per verdict,
    the group question, the retry message ({reasons}) and the longest answer the gate accepts (words)."""

    evidence_system: str
    evidence_explain: str
    evidence_ask_wrong: str
    evidence_ask_correct: str
    evidence_ask_unknown: str
    group_system: str
    group_question: str
    retry: str
    max_words: int
    structured: str = ""
    images_note: str = ""

    @classmethod
    def of(cls, cfg: PromptSettings | Mapping[str, Any] | Any) -> PromptSettings:
        """From a composed `prompt` config (or these settings); a missing key is an error naming it."""
        if isinstance(cfg, PromptSettings):
            return cfg
        values = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        missing = [
            f.name
            for f in fields(cls)
            if f.name not in values and f.name not in ("images_note", "structured")
        ]
        if missing:
            raise ValueError(f"the prompt config has no {', '.join(missing)} (see conf/prompt/explain.yaml)")
        known = {f.name for f in fields(cls)}
        kept = {k: v for k, v in values.items() if k in known}
        kept["max_words"] = int(kept["max_words"])
        return cls(**{k: (v if k == "max_words" else str(v)) for k, v in kept.items()})

    @classmethod
    def default(cls) -> PromptSettings:
        """The shipped conf/prompt/explain.yaml."""
        return cls.of(OmegaConf.load(Path(CONFIG_DIR) / "prompt" / "explain.yaml"))


def examples_of(llm: Mapping[str, Any] | Any) -> list[Message]:
    """The worked examples an `llm` config gives its model, as turns after the system prompt
    (`llm.examples`: a list of {user, assistant}; a base model needs them to see what an answer is)."""
    found = (llm.get("examples") or []) if llm is not None else []
    out: list[Message] = []
    for i, pair in enumerate(found):
        if not (isinstance(pair, Mapping) and "user" in pair and "assistant" in pair):
            raise ValueError(f"llm.examples[{i}] must have a user and an assistant turn")
        out += [
            {"role": "user", "content": str(pair["user"])},
            {"role": "assistant", "content": str(pair["assistant"])},
        ]
    return out


def structured_instruction(prompt: PromptSettings, llm: Mapping[str, Any] | Any) -> str | None:
    """The instruction asking for sentences with their citations as JSON, when the `llm` config wants
    structured answers (`llm.structured`) and the prompt has one; else None (plain text)."""
    wanted = bool(llm.get("structured", False)) if llm is not None else False
    return prompt.structured or None if wanted else None


def render(template: str, values: Mapping[str, str], option: str) -> str:
    """template.format(**values), with an error naming the config option and the known fields."""
    try:
        return template.format_map(values).strip()
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"{option}: cannot fill the template ({err!r}); its fields are {{{'}, {'.join(values)}}}; "
            "write a literal brace as {{ or }}"
        ) from err


def evidence_fields(evidence: Evidence) -> dict[str, str]:
    """The values a prompt template can use, all as text: classes, predicted, confidence, true_label
    ("unknown" when not known), verdict, lines (the numbered lines, one per line), n_lines, and count
    (a group's size, else 1)."""
    lines = evidence.lines()
    size = next((c for c in evidence.summary if c.kind == "group_size"), None)
    return {
        "classes": ", ".join(evidence.class_names),
        "predicted": evidence.predicted,
        "confidence": f"{evidence.confidence:.0%}",
        "true_label": evidence.true_label or "unknown",
        "verdict": evidence.verdict,
        "lines": "\n".join(lines),
        "n_lines": str(len(lines)),
        "count": str(size.fields["count"]) if size is not None else "1",
    }


def _with_images(text: str, settings: PromptSettings, images: Sequence[str], multimodal: bool) -> Any:
    if not (multimodal and images):
        return text
    content: list[dict[str, str]] = [{"type": "image", "path": path} for path in images]
    content.append({"type": "text", "text": f"{settings.images_note}\n{text}".strip()})
    return content


def evidence_messages(
    evidence: Evidence,
    prompt: PromptSettings | Any,
    multimodal: bool,
    images: Sequence[str] = (),
    examples: Sequence[Message] = (),
) -> list[Message]:
    """System and first user message asking for an explanation of one photo grounded in its lines.

    prompt: the prompt settings (or a conf/prompt config); its `evidence_system`, `evidence_explain` and
    `evidence_ask_<verdict>` templates take the fields of `evidence_fields` (and `question`, in
    evidence_explain). images: [photo, overlay] paths, sent before the text to a multimodal model.
    examples: worked examples, as turns between the system prompt and the question (`examples_of`)."""
    settings = PromptSettings.of(prompt)
    values = evidence_fields(evidence)
    key = f"evidence_ask_{evidence.verdict}"
    values["question"] = render(getattr(settings, key), values, f"prompt.{key}")
    text = render(settings.evidence_explain, values, "prompt.evidence_explain")
    return [
        {"role": "system", "content": render(settings.evidence_system, values, "prompt.evidence_system")},
        *examples,
        {"role": "user", "content": _with_images(text, settings, images, multimodal)},
    ]


def group_messages(
    evidence: Evidence, prompt: PromptSettings | Any, examples: Sequence[Message] = ()
) -> list[Message]:
    """System and user message asking what a group of mistakes (`explain.groups`) has in common: the
    `group_system` and `group_question` templates (fields: those of `evidence_fields`); examples: as
    `evidence_messages`."""
    settings = PromptSettings.of(prompt)
    values = evidence_fields(evidence)
    values["question"] = render(settings.group_question, values, "prompt.group_question")
    return [
        {"role": "system", "content": render(settings.group_system, values, "prompt.group_system")},
        *examples,
        {"role": "user", "content": render(settings.evidence_explain, values, "prompt.evidence_explain")},
    ]

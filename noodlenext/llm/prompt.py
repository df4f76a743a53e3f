"""From one classified image to the chat messages that ask an LLM to explain it.

Two paths: `evidence_messages` (the numbered lines of an `Evidence`, which the model cites and the grounding
gate checks against; the one to use) and `explain_messages` (an `ExplainRequest`'s ScoreCAM facts in a
paragraph; kept for the chat and the page until they move to evidence).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from noodlenext.explain.evidence import Evidence
from noodlenext.explain.facts import HeatmapFacts
from noodlenext.llm.base import Message


@dataclass
class ExplainRequest:
    """What the LLM is told about one image: the classifier's output and where ScoreCAM saw the evidence."""

    file: str
    class_names: list[str]
    probabilities: dict[str, float]  # class name -> probability
    predicted: str
    facts: HeatmapFacts  # ScoreCAM for the predicted class
    true_label: str | None = None  # None: unknown
    images: list[str] = field(default_factory=list)  # [photo, overlay] paths, for multimodal models

    @property
    def confidence(self) -> float:
        return self.probabilities[self.predicted]

    @property
    def verdict(self) -> str:
        if self.true_label is None:
            return "unknown"
        return "correct" if self.true_label == self.predicted else "wrong"

    def fields(self, top_k: int = 3) -> dict[str, str]:
        """The values a prompt template can use, all as text."""
        ranked = sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:top_k]
        shares = sorted(self.facts.region_shares.items(), key=lambda kv: -kv[1])[:3]
        return {
            "file": self.file,
            "classes": ", ".join(self.class_names),
            "predicted": self.predicted,
            "confidence": f"{self.confidence:.0%}",
            "true_label": self.true_label or "unknown",
            "verdict": self.verdict,
            "probabilities": ", ".join(f"{name} {p:.0%}" for name, p in ranked),
            "heatmap": self.facts.describe(),
            "peak_region": self.facts.peak_region,
            "top_regions": ", ".join(f"{region} {share:.0%}" for region, share in shares),
            "area_above_half": f"{self.facts.area_above_half:.0%}",
            "concentration": f"{self.facts.concentration:.2f}",
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "class_names": self.class_names,
            "probabilities": self.probabilities,
            "predicted": self.predicted,
            "true_label": self.true_label,
            "facts": self.facts.to_dict(),
            "images": self.images,
        }


def render(template: str, values: Mapping[str, str], option: str) -> str:
    """template.format(**values), with an error naming the config option and the known fields."""
    try:
        return template.format_map(values).strip()
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"{option}: cannot fill the template ({err!r}); its fields are {{{'}, {'.join(values)}}}; "
            "write a literal brace as {{ or }}"
        ) from err


def explain_messages(request: ExplainRequest, prompt: Mapping[str, Any], multimodal: bool) -> list[Message]:
    """System and first user message; `prompt` holds the templates (conf/prompt/*.yaml).

    The question depends on the verdict (`ask_wrong`, `ask_correct`, `ask_unknown`). A multimodal model
    also gets the photo and the overlay, in that order, before the text.
    """
    values = request.fields(int(prompt.get("top_k", 3)))
    values["question"] = render(prompt[f"ask_{request.verdict}"], values, f"prompt.ask_{request.verdict}")
    text = render(prompt["explain"], values, "prompt.explain")
    content: str | list[dict[str, str]] = text
    if multimodal and request.images:
        content = [{"type": "image", "path": path} for path in request.images]
        content.append({"type": "text", "text": f"{prompt.get('images_note', '')}\n{text}".strip()})
    return [
        {"role": "system", "content": render(prompt["system"], values, "prompt.system")},
        {"role": "user", "content": content},
    ]


def evidence_fields(evidence: Evidence) -> dict[str, str]:
    """The values an evidence prompt template can use, all as text: classes, predicted, confidence,
    true_label ("unknown" when not known), verdict, lines (the numbered lines, one per line), n_lines."""
    lines = evidence.lines()
    return {
        "classes": ", ".join(evidence.class_names),
        "predicted": evidence.predicted,
        "confidence": f"{evidence.confidence:.0%}",
        "true_label": evidence.true_label or "unknown",
        "verdict": evidence.verdict,
        "lines": "\n".join(lines),
        "n_lines": str(len(lines)),
    }


def evidence_messages(
    evidence: Evidence, prompt: Mapping[str, Any], multimodal: bool, images: Sequence[str] = ()
) -> list[Message]:
    """System and first user message asking for an explanation grounded in `evidence.lines()`.

    prompt: a conf/prompt config; its `evidence_system`, `evidence_explain` and `evidence_ask_<verdict>`
    templates take the fields of `evidence_fields` (and `question`, in evidence_explain). images: [photo,
    overlay] paths, sent before the text to a multimodal model (with `images_note`).
    """
    values = evidence_fields(evidence)
    key = f"evidence_ask_{evidence.verdict}"
    values["question"] = render(prompt[key], values, f"prompt.{key}")
    text = render(prompt["evidence_explain"], values, "prompt.evidence_explain")
    content: str | list[dict[str, str]] = text
    if multimodal and images:
        content = [{"type": "image", "path": path} for path in images]
        content.append({"type": "text", "text": f"{prompt.get('images_note', '')}\n{text}".strip()})
    return [
        {"role": "system", "content": render(prompt["evidence_system"], values, "prompt.evidence_system")},
        {"role": "user", "content": content},
    ]

"""Answers as sentences that each say which facts they rest on: a JSON schema a backend constrains its reply
to (llama.cpp's grammar, an OpenAI-compatible server's `response_format`), and the reply back as the text a
reader sees, every sentence with its citations ("... [2, 5].").

The gate reads the text as it reads any answer; the structure makes each sentence carry its own
citations, so a small model cannot run facts together without saying where each comes from.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["SCHEMA", "as_text"]

# {"sentences": [{"text": "...", "cites": [2, 5]}, ...]}: 2 to 4 sentences (the gate's floor, the prompt's
# ceiling), each citing at least one fact.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sentences": {
            "type": "array",
            "minItems": 2,
            "maxItems": 4,
            "items": {
                "type": "object",
                "properties": {
                    "text": {"type": "string"},
                    "cites": {"type": "array", "minItems": 1, "maxItems": 4, "items": {"type": "integer"}},
                },
                "required": ["text", "cites"],
            },
        }
    },
    "required": ["sentences"],
}


def as_text(reply: str) -> str:
    """A structured reply as prose: each sentence with its citations before its full stop. A reply that
    is not such JSON (cut short, or from a backend that ignored the schema) comes back as it was, for the
    gate to judge as it is."""
    try:
        data = json.loads(reply)
        parts = []
        for item in data["sentences"]:
            text = " ".join(str(item["text"]).split()).strip()
            if not text:
                continue
            cites = [
                int(n) for n in item.get("cites", []) if isinstance(n, int | float | str) and str(n).isdigit()
            ]
            end = text[-1] if text[-1] in ".!?" else "."
            body = text[:-1].rstrip() if text[-1] in ".!?" else text
            parts.append(f"{body} [{', '.join(str(n) for n in cites)}]{end}" if cites else f"{body}{end}")
        return " ".join(parts)
    except (ValueError, KeyError, TypeError):
        return reply.strip()

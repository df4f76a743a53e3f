"""Plain-text helpers for model answers: where sentences end, and cutting an answer to whole sentences.

A small model stopped by the token limit ends mid-sentence; `cut_to_sentence` drops that unfinished tail.
A sentence ends at `.`, `!` or `?` followed by whitespace or the end of the text (closing quotes and
brackets, and a citation such as "[2]" right after it, stay with the sentence). Not sentence ends: the
dot of a decimal ("0.42") or of a list number at the start of a line ("2. "), an ellipsis ("..."), and
the dot of a common abbreviation ("e.g.", "i.e.", "vs.", "Dr.") or of a single letter ("U.S.", "J.").
"""

from __future__ import annotations

import re

# Lower-cased, without their final dot. "etc." is not here: it often ends a sentence.
ABBREVIATIONS = frozenset(
    "e.g i.e vs cf approx ca mr mrs ms dr prof st no nos fig figs eq al resp incl esp viz".split()
)

# A terminal mark, then closers and an optional citation, then whitespace or the end of the text.
_END = re.compile(r"[.!?]+[\"'”’)\]]*(?:\s*\[\d+(?:\s*[,;–-]\s*\d+)*\])*(?=\s|$)")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)$")


def _is_sentence_end(text: str, match: re.Match[str]) -> bool:
    """Whether the terminal mark at `match` ends a sentence (not an abbreviation, list number, ellipsis)."""
    mark = match.group(0)
    if mark.startswith("..") or mark.startswith("…"):
        return False  # an ellipsis trails off
    if mark[0] != ".":
        return True  # ! and ? always end a sentence
    before = text[: match.start()]
    line = before[before.rfind("\n") + 1 :]
    if re.fullmatch(r"\s*(?:[-*•]\s*)?\d{1,3}", line):
        return False  # "2." numbering a list item
    word = _WORD_BEFORE.search(before)
    if word is not None:
        token = word.group(1).lower()
        if token in ABBREVIATIONS or (len(token) == 1 and token.isalpha() and token not in "ai"):
            return False  # "e.g.", "Dr.", an initial ("J.") or the end of "U.S."
        if re.fullmatch(r"(?:[a-z]\.)+[a-z]", token):
            return False  # "e.g" spelled with inner dots, any such letter-dot chain
    return True


def sentence_ends(text: str) -> list[int]:
    """Character offsets just after each complete sentence of `text` (closers and citations included)."""
    return [m.end() for m in _END.finditer(text) if _is_sentence_end(text, m)]


def ends_on_sentence(text: str) -> bool:
    """Whether `text` (trailing whitespace ignored) ends exactly where a sentence ends."""
    stripped = text.rstrip()
    ends = sentence_ends(stripped)
    return bool(ends) and ends[-1] == len(stripped)


def cut_to_sentence(text: str) -> str:
    """`text` up to the end of its last complete sentence, trailing whitespace dropped.

    A text without any complete sentence ("Red", a bare list) comes back unchanged (stripped at the
    end): a fragment says more than nothing, and the grounding gate still sees that it is unfinished.
    """
    stripped = text.rstrip()
    ends = sentence_ends(stripped)
    return stripped[: ends[-1]] if ends else stripped


def words(text: str) -> list[str]:
    """The lower-cased words of `text` (letters, digits and inner apostrophes; "42%" is "42")."""
    return re.findall(r"[a-z0-9]+(?:['’][a-z]+)?", text.lower())


def sentences(text: str) -> list[str]:
    """`text` split into its sentences (the unfinished tail, if any, last), each stripped."""
    out, start = [], 0
    for end in sentence_ends(text):
        out.append(text[start:end].strip())
        start = end
    if text[start:].strip():
        out.append(text[start:].strip())
    return [s for s in out if s]

"""A short, quotable rationale cut from rank1's own reasoning (pure text, no extra model call): rank1
states its conclusion last, and a chatbot citing a source needs that, not thousands of tokens of thinking."""

from __future__ import annotations

import re

__all__ = ["DEFAULT_RATIONALE_CHARS", "DEFAULT_RATIONALE_SENTENCES", "rationale"]

DEFAULT_RATIONALE_CHARS = 300
"""Upper bound on a rationale's length in characters (about 60-80 tokens)."""
DEFAULT_RATIONALE_SENTENCES = 2
"""At most this many sentences: the conclusion and the one before it (usually its reason)."""

_ELLIPSIS = "\u2026"
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+")
_CONCLUSION = re.compile(  # an opening ("So", "Therefore", ...) or a statement ("is relevant", ...)
    r"^(?:so|therefore|thus|hence|overall|in conclusion|in summary|in short|to sum up|to conclude|"
    r"all in all|ultimately|in the end|final answer|conclusion)\b"
    r"|\b(?:relevant|irrelevant|relevance|answers? (?:is|should be|would be)"
    r"|(?:answers|addresses) the (?:query|question)|(?:does not|doesn't|do not|don't) (?:answer|address|mention))\b",
    re.IGNORECASE,
)


def rationale(
    reasoning: str,
    *,
    max_chars: int = DEFAULT_RATIONALE_CHARS,
    max_sentences: int = DEFAULT_RATIONALE_SENTENCES,
) -> str:
    """The last sentence stating a conclusion ("so", "therefore", ..., "is (not) relevant"; else the last one),
    with the sentences before it while within ``max_chars`` and ``max_sentences``; whitespace collapsed. A longer
    one is cut at a word boundary (in a word only if ``max_chars`` has no space) with an ellipsis; none: ``""``."""
    for name, value, least in (("max_chars", max_chars, 2), ("max_sentences", max_sentences, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    sentences = [s for s in _SENTENCE_END.split(" ".join(reasoning.split())) if s]
    if not sentences:
        return ""
    end = next((i for i in reversed(range(len(sentences))) if _CONCLUSION.search(sentences[i])), len(sentences) - 1)
    start = end
    while start > 0 and end - start + 1 < max_sentences and len(" ".join(sentences[start - 1 : end + 1])) <= max_chars:
        start -= 1
    return _shorten(" ".join(sentences[start : end + 1]), max_chars)


def _shorten(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    head = text[: max_chars - len(_ELLIPSIS) + 1]  # one more: a space right after the cut is a boundary
    cut = head.rfind(" ")
    kept = head[:cut] if cut > 0 else head[:-1]
    return kept.rstrip(" ,;:-") + _ELLIPSIS

"""Kept chunks as numbered sources with rank1's reason, for the next prompt (framework-free)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rank1_integrations.core.rationale import rationale
from rank1_integrations.errors import InvalidInputError

__all__ = ["ANSWER_WITH_SOURCES_PROMPT", "DEFAULT_SOURCE_TEMPLATE", "ContextSource", "ReasoningShown", "format_context"]

ReasoningShown = Literal["rationale", "full"]
"""What a context block shows of rank1's reasoning: the short rationale, or all of it."""

DEFAULT_SOURCE_TEMPLATE = "[{number}] {source} ({assessment})\n{text}\nrank1's reasoning: {reasoning}"
"""One source in a context block. Fields: ``number`` (1-based), ``source``, ``assessment`` (verdict and score
in words), ``score`` (formatted, or "n/a"), ``text``, ``reasoning`` (the rationale or the full reasoning, as
``format_context(reasoning=...)`` says), ``rationale`` and ``full_reasoning``."""

ANSWER_WITH_SOURCES_PROMPT = (
    "Answer the question using only the numbered sources below. Cite the sources you use as "
    "[number]. Each source says why a relevance judge kept it; use that to explain, when asked, "
    "why a source supports the answer. If the sources do not answer the question, say so.\n\n"
    "Sources:\n{context}\n\nQuestion: {question}"
)
"""A prompt for chatbots and agents; fill ``context`` with :func:`format_context`."""


@dataclass(frozen=True)
class ContextSource:
    """A kept chunk as the context block needs it (the adapters build these from metadata)."""

    text: str
    source: str
    score: float | None = None
    relevant: bool | None = None
    reasoning: str = ""
    rationale: str = ""
    status: str = "judged"
    kept_by: str = "relevance"

    @classmethod
    def from_metadata(cls, text: str, source: str, metadata: Mapping[str, Any]) -> ContextSource:
        """Read the rank1 keys an adapter wrote; a chunk without them shows as not judged. Without a
        ``rank1_rationale`` (other code's metadata) it is quoted from ``rank1_reasoning`` as in a Judgment."""
        score = metadata.get("relevance_score")
        reasoning = str(metadata.get("rank1_reasoning") or "")
        given = metadata.get("rank1_rationale")
        return cls(
            text=text,
            source=source,
            score=float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None,
            relevant=metadata.get("rank1_relevant"),
            reasoning=reasoning,
            rationale=str(given) if given is not None else rationale(reasoning),
            status=str(metadata.get("rank1_status", "unjudged")),
            kept_by=str(metadata.get("rank1_kept_by", "relevance")),
        )

    @property
    def assessment(self) -> str:
        if self.status == "empty":
            return "empty text, not judged"
        if self.status != "judged" or self.score is None:
            return "not judged"
        verdict = "relevant" if self.relevant else "not relevant"
        fallback = ", kept only to reach the minimum number of sources" if self.kept_by == "min_keep" else ""
        return f"{verdict}, score {self.score:.2f}{fallback}"


def format_context(
    sources: Sequence[ContextSource],
    *,
    reasoning: ReasoningShown = "rationale",
    template: str = DEFAULT_SOURCE_TEMPLATE,
    separator: str = "\n\n",
    no_reasoning: str = "(none given)",
) -> str:
    """Render kept chunks as numbered sources, each with rank1's reason, for an LLM prompt: its rationale
    (:attr:`Judgment.rationale`), or with ``reasoning="full"`` all of it (thousands of tokens per source)."""
    if reasoning not in ("rationale", "full"):
        raise InvalidInputError(f"reasoning must be 'rationale' or 'full', got {reasoning!r}")
    blocks = []
    for number, source in enumerate(sources, start=1):
        full, short = source.reasoning.strip(), source.rationale.strip()
        blocks.append(
            template.format(
                number=number,
                source=source.source,
                assessment=source.assessment,
                score="n/a" if source.score is None else f"{source.score:.2f}",
                text=source.text.strip(),
                reasoning=(short if reasoning == "rationale" else full) or no_reasoning,
                rationale=short or no_reasoning,
                full_reasoning=full or no_reasoning,
            )
        )
    return separator.join(blocks)

"""The result of rank1 judging one passage."""

from __future__ import annotations

from dataclasses import dataclass

from rank1_integrations.core.rationale import rationale as _rationale

__all__ = ["Judgment"]


@dataclass(frozen=True)
class Judgment:
    """rank1's verdict on one passage for one query; ``score`` is p(true) over true+false at the answer position.
    Unjudged (only with ``on_failure="mark_unjudged"``): ``score`` and ``relevant`` None, ``error`` says why."""

    index: int
    """Position of the passage in the list given to the reranker."""
    score: float | None
    relevant: bool | None
    """The model's verdict: the label it generated, or the likelier label when forced."""
    reasoning: str
    """The text between ``<think>`` and ``</think>`` (cut back to a sentence end when forced; ``""`` unreasoned)."""
    forced: bool = False
    """True when reasoning ran past the budget and the answer had to be forced."""
    reasoning_tokens: int = 0
    """Tokens the model generated for this passage (the reasoning budget it used)."""
    truncated: bool = False
    """True when the passage was cut to fit the context window."""
    error: str | None = None
    reasoning_effort: str = "full"
    """The effort asked for: ``full``, ``none`` (no-think) or ``adaptive``."""
    reasoned: bool = True
    """Whether rank1 reasoned (False: the score is no-think's, read after a prefilled reasoning)."""

    @property
    def judged(self) -> bool:
        return self.score is not None

    @property
    def rationale(self) -> str:
        """rank1's conclusion quoted from ``reasoning`` (:func:`~rank1_integrations.core.rationale.rationale`):
        one or two sentences, at most 300 characters, never cut inside a word; ``""`` without reasoning."""
        return _rationale(self.reasoning)

"""Sources as rank1 judges them, before the final selection; framework-free.

The adapters judge with ``Rank1Reranker.judge_iter`` / ``ajudge_stream`` and announce each
document as soon as rank1 has judged it (a LangChain custom event, a LlamaIndex
instrumentation event), so a chat UI can show sources before the slowest passage is done.
The final result is the same :func:`~rank1_integrations.adapters.selection.select` over every
judgment. A streamed document carries the same ``rank1_*`` metadata as a kept one, except
``rank1_kept_by``, which is None: top_n, min_keep and the ranking need every judgment.
"""

from __future__ import annotations

from rank1_integrations.adapters.selection import JudgingPlan, Pick, Status, has_score
from rank1_integrations.core.judgment import Judgment
from rank1_integrations.errors import Rank1Error

__all__ = ["JUDGMENT_EVENT", "JudgmentsSoFar"]

JUDGMENT_EVENT = "rank1_judgment"
"""The LangChain custom event's name (``astream_events``: ``event == "on_custom_event"``)."""


class JudgmentsSoFar:
    """The judgments of ``plan.passages`` as they arrive, in any order; each passage exactly once."""

    def __init__(self, plan: JudgingPlan) -> None:
        self._judgments: list[Judgment | None] = [None] * len(plan.passages)
        self._documents: list[list[int]] = [[] for _ in plan.passages]
        for document, slot in enumerate(plan.slots):
            if slot is not None:
                self._documents[slot].append(document)

    def add(self, judgment: Judgment) -> list[Pick]:
        """Record one passage's judgment; returns the documents it judges (identical texts share one)."""
        slot = judgment.index
        if not 0 <= slot < len(self._judgments) or self._judgments[slot] is not None:
            raise Rank1Error(f"rank1 returned a judgment for passage {slot} that was not expected")
        self._judgments[slot] = judgment
        status: Status = "judged" if has_score(judgment) else "unjudged"
        return [Pick(document, judgment, status, None) for document in self._documents[slot]]

    def in_order(self) -> list[Judgment]:
        """Every passage's judgment, in passage order; :class:`Rank1Error` if any is missing."""
        missing = [slot for slot, judgment in enumerate(self._judgments) if judgment is None]
        if missing:
            raise Rank1Error(f"rank1 returned no judgment for passages {missing[:20]}")
        return [judgment for judgment in self._judgments if judgment is not None]

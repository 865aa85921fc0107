"""Which judged documents to keep (framework-free): both adapters and ``rank1 serve`` decide here.
:func:`plan_judging` sends each distinct non-empty text once; the caller judges ``plan.passages`` (the
only I/O) into :class:`JudgmentsSoFar`; :func:`select` ranks by score (ties keep input order), keeps those
passing ``score_threshold`` (None: rank1's verdict), cuts to ``top_n``, then fills up to ``min_keep``
with the best rejected, then unjudged, documents."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rank1_integrations.core.judgment import Judgment
from rank1_integrations.errors import InvalidInputError, Rank1Error

__all__ = [
    "RANK1_METADATA_KEYS",
    "EmptyTextPolicy",
    "JudgingPlan",
    "JudgmentsSoFar",
    "Pick",
    "SelectionPolicy",
    "needs_judging",
    "plan_judging",
    "rank1_metadata",
    "select",
]

EmptyTextPolicy = Literal["not_relevant", "raise"]
"""What an empty-text document becomes: judged not relevant without asking rank1, or an error."""
Status = Literal["judged", "unjudged", "empty"]
KeptBy = Literal["relevance", "min_keep"]

RANK1_METADATA_KEYS: tuple[str, ...] = (
    "relevance_score",
    "rank1_reasoning",
    "rank1_rationale",
    "rank1_relevant",
    "rank1_forced",
    "rank1_reasoning_tokens",
    "rank1_truncated",
    "rank1_status",
    "rank1_kept_by",
    "rank1_error",
    "rank1_reasoning_effort",
    "rank1_reasoned",
)
"""Every metadata key the adapters write, in this order (docs/adapters.md says what each holds)."""


@dataclass(frozen=True)
class SelectionPolicy:
    """The filter settings shared by both adapters; checked on construction."""

    top_n: int | None = 3
    """Keep at most this many; None keeps every passing document; 0 keeps none."""
    score_threshold: float | None = None
    """Minimum score to pass, in [0, 1]; None: pass on rank1's verdict (``relevant``)."""
    min_keep: int = 0
    """Keep at least this many (when that many non-empty documents were given), even if rejected."""

    def __post_init__(self) -> None:
        top_n, threshold, min_keep = self.top_n, self.score_threshold, self.min_keep
        if top_n is not None and not (_is_int(top_n) and top_n >= 0):
            raise InvalidInputError(f"top_n must be None or an int >= 0, got {top_n!r}")
        if threshold is not None and not (_is_number(threshold) and 0.0 <= threshold <= 1.0):
            raise InvalidInputError(f"score_threshold must be None or a number in [0, 1], got {threshold!r}")
        if not (_is_int(min_keep) and min_keep >= 0):
            raise InvalidInputError(f"min_keep must be an int >= 0, got {min_keep!r}")
        if top_n is not None and min_keep > top_n:
            raise InvalidInputError(f"min_keep ({min_keep}) cannot exceed top_n ({top_n})")


@dataclass(frozen=True)
class JudgingPlan:
    """What to send to rank1 for a list of document texts."""

    passages: tuple[str, ...]
    """The distinct non-empty texts, in order of first appearance."""
    slots: tuple[int | None, ...]
    """For each document, the index of its text in ``passages``; None for an empty text."""


@dataclass(frozen=True)
class Pick:
    """One kept document: where it was in the input and what rank1 said about it."""

    index: int
    """Position of the document in the list the adapter was given."""
    judgment: Judgment
    """rank1's judgment; for an empty text a stand-in (score 0.0, not relevant, no reasoning)."""
    status: Status
    kept_by: KeptBy | None
    """None for a document announced as soon as it was judged, before the selection."""

    @property
    def score(self) -> float | None:
        return self.judgment.score


def plan_judging(texts: Sequence[str], *, empty_text: EmptyTextPolicy = "not_relevant") -> JudgingPlan:
    """Each distinct non-empty text once; :class:`InvalidInputError` for empty ones under ``"raise"``."""
    if empty_text not in ("not_relevant", "raise"):
        raise InvalidInputError(f"empty_text must be 'not_relevant' or 'raise', got {empty_text!r}")
    empty = [i for i, text in enumerate(texts) if not text.strip()]
    if empty and empty_text == "raise":
        raise InvalidInputError(f"documents at indices {empty[:20]} have no text to judge")
    first_seen: dict[str, int] = {}
    slots: list[int | None] = []
    for text in texts:
        slots.append(None if not text.strip() else first_seen.setdefault(text, len(first_seen)))
    return JudgingPlan(passages=tuple(first_seen), slots=tuple(slots))


def needs_judging(policy: SelectionPolicy, plan: JudgingPlan) -> bool:
    """False when nothing needs rank1: no non-empty text, or ``top_n == 0`` (nothing is kept)."""
    return bool(plan.passages) and policy.top_n != 0


def select(policy: SelectionPolicy, plan: JudgingPlan, judgments: Sequence[Judgment]) -> list[Pick]:
    """Apply ``policy`` to the documents of ``plan`` given one judgment per passage (else
    :class:`Rank1Error`: lost passages must fail loudly); with ``top_n == 0`` none are needed."""
    if policy.top_n == 0:
        return []
    if len(judgments) != len(plan.passages):
        raise Rank1Error(f"rank1 returned {len(judgments)} judgments for {len(plan.passages)} passages")
    judged: list[tuple[int, Judgment, Status]] = []
    unjudged: list[tuple[int, Judgment]] = []
    for index, slot in enumerate(plan.slots):
        if slot is None:  # a stand-in: score 0.0, not relevant, no reasoning
            judged.append((index, Judgment(index, 0.0, False, "", reasoned=False), "empty"))
        elif not _has_score(judgments[slot]):  # unjudged; or a broken score, which must not upset the ranking
            unjudged.append((index, judgments[slot]))
        else:
            judged.append((index, judgments[slot], "judged"))
    # a. rank (empty texts after real judgments of the same score, then input order); all scores are finite
    judged.sort(key=lambda item: (-(item[1].score or 0.0), item[2] == "empty", item[0]))
    if policy.score_threshold is None:  # b. threshold / verdict, c. top_n
        passing = [item for item in judged if item[1].relevant is True and item[2] == "judged"]
    else:
        passing = [item for item in judged if (item[1].score or 0.0) >= policy.score_threshold]
    kept = [Pick(i, j, status, "relevance") for i, j, status in passing[: policy.top_n]]
    # d. min_keep (top_n >= min_keep, so only documents rejected in b are candidates)
    missing = policy.min_keep - len(kept)
    if missing > 0:
        passed = {i for i, _, _ in passing}
        rejected = [Pick(i, j, s, "min_keep") for i, j, s in judged if i not in passed and s == "judged"]
        fallback = rejected + [Pick(i, j, "unjudged", "min_keep") for i, j in unjudged]
        kept += fallback[:missing]
    return kept


def rank1_metadata(pick: Pick) -> dict[str, Any]:
    """The metadata entries the adapters add to a kept document (keys: ``RANK1_METADATA_KEYS``)."""
    j = pick.judgment
    values: tuple[Any, ...] = (j.score, j.reasoning, j.rationale, j.relevant, j.forced, j.reasoning_tokens, j.truncated)
    values += (pick.status, pick.kept_by, j.error, j.reasoning_effort, j.reasoned)
    return dict(zip(RANK1_METADATA_KEYS, values, strict=True))


class JudgmentsSoFar:
    """The judgments of ``plan.passages`` as they arrive, in any order; each passage exactly once."""

    def __init__(self, plan: JudgingPlan) -> None:
        self._judgments: list[Judgment | None] = [None] * len(plan.passages)
        self._documents: list[list[int]] = [[] for _ in plan.passages]
        for document, slot in enumerate(plan.slots):
            if slot is not None:
                self._documents[slot].append(document)

    def add(self, judgment: Judgment) -> list[Pick]:
        """Record one passage's judgment; returns the documents it judges (``kept_by`` None: not selected yet)."""
        slot = judgment.index
        if not 0 <= slot < len(self._judgments) or self._judgments[slot] is not None:
            raise Rank1Error(f"rank1 returned a judgment for passage {slot} that was not expected")
        self._judgments[slot] = judgment
        status: Status = "judged" if _has_score(judgment) else "unjudged"
        return [Pick(document, judgment, status, None) for document in self._documents[slot]]

    def in_order(self) -> list[Judgment]:
        """Every passage's judgment, in passage order; :class:`Rank1Error` if any is missing."""
        missing = [slot for slot, judgment in enumerate(self._judgments) if judgment is None]
        if missing:
            raise Rank1Error(f"rank1 returned no judgment for passages {missing[:20]}")
        return [judgment for judgment in self._judgments if judgment is not None]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _has_score(judgment: Judgment) -> bool:
    """A finite score (an unjudged passage, or a broken score, has none)."""
    return _is_number(judgment.score) and math.isfinite(judgment.score)  # type: ignore[arg-type]

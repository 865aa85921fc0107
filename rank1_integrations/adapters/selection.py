"""Which judged chunks to keep, and how to show them to the next prompt; framework-free.

Both adapters (LangChain and LlamaIndex) do the same three steps around one
``Rank1Reranker.judge`` call, and every decision in them lives here:

1. :func:`plan_judging` turns the documents' texts into the passages to send: empty
   (or whitespace-only) texts are never sent, identical texts are sent once.
2. The adapter judges ``plan.passages`` (sync or async: the only I/O).
3. :func:`select` maps the judgments back onto the documents and applies the
   :class:`SelectionPolicy`, in this order:

   a. rank: judged documents by score, highest first; ties keep the input order;
   b. threshold: a document passes when ``score >= score_threshold``, or, when
      ``score_threshold`` is None, when rank1's verdict is relevant;
   c. top_n: the passing documents are cut to the first ``top_n`` (None: no cut);
   d. min_keep: when fewer than ``min_keep`` remain, the best of the rejected
      judged documents are added (by score), then unjudged ones (input order),
      until ``min_keep`` are kept. Empty-text documents are never added this way.

Each kept document carries :func:`rank1_metadata`; :func:`format_context` renders kept
chunks, with rank1's reasoning per source, as a context block for an LLM prompt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import SecretStr

from rank1_integrations.core.judgment import Judgment
from rank1_integrations.core.rationale import rationale
from rank1_integrations.core.templates import resolve_template
from rank1_integrations.errors import InvalidInputError, Rank1Error
from rank1_integrations.reranker import Rank1Reranker

__all__ = [
    "ANSWER_WITH_SOURCES_PROMPT",
    "DEFAULT_SOURCE_TEMPLATE",
    "ERROR_KEY",
    "FORCED_KEY",
    "KEPT_BY_KEY",
    "RANK1_METADATA_KEYS",
    "RATIONALE_KEY",
    "REASONING_KEY",
    "REASONING_TOKENS_KEY",
    "RELEVANCE_SCORE_KEY",
    "RELEVANT_KEY",
    "STATUS_KEY",
    "TRUNCATED_KEY",
    "ContextSource",
    "EmptyTextPolicy",
    "JudgingPlan",
    "Pick",
    "ReasoningShown",
    "SelectionPolicy",
    "format_context",
    "has_score",
    "needs_judging",
    "plan_judging",
    "rank1_metadata",
    "resolve_reranker",
    "select",
    "template_kwargs",
]

EmptyTextPolicy = Literal["not_relevant", "raise"]
"""What an empty-text document becomes: judged not relevant without asking rank1, or an error."""
ReasoningShown = Literal["rationale", "full"]
"""What a context block shows of rank1's reasoning: the short rationale, or all of it."""
Status = Literal["judged", "unjudged", "empty"]
KeptBy = Literal["relevance", "min_keep"]
"""Why a document was kept; None on a streamed document (judged, not yet selected)."""

RELEVANCE_SCORE_KEY = "relevance_score"
"""rank1's score in [0, 1]; None for an unjudged document (the LangChain convention key)."""
REASONING_KEY = "rank1_reasoning"
"""rank1's whole reasoning (the text between ``<think>`` and ``</think>``)."""
RATIONALE_KEY = "rank1_rationale"
"""rank1's conclusion quoted from its reasoning (:attr:`Judgment.rationale`): what the answer LLM sees by default."""
RELEVANT_KEY = "rank1_relevant"
FORCED_KEY = "rank1_forced"
REASONING_TOKENS_KEY = "rank1_reasoning_tokens"
TRUNCATED_KEY = "rank1_truncated"
STATUS_KEY = "rank1_status"
"""``"judged"``, ``"unjudged"`` (the backend failed on it) or ``"empty"`` (no text: never sent)."""
KEPT_BY_KEY = "rank1_kept_by"
"""``"relevance"`` (passed the threshold or verdict) or ``"min_keep"`` (kept only to reach min_keep);
None on a document announced as soon as it was judged (before the selection)."""
ERROR_KEY = "rank1_error"
"""Why an unjudged document could not be judged; None otherwise."""
RANK1_METADATA_KEYS: tuple[str, ...] = (
    RELEVANCE_SCORE_KEY,
    REASONING_KEY,
    RATIONALE_KEY,
    RELEVANT_KEY,
    FORCED_KEY,
    REASONING_TOKENS_KEY,
    TRUNCATED_KEY,
    STATUS_KEY,
    KEPT_BY_KEY,
    ERROR_KEY,
)
"""Every metadata key the adapters write, in this order."""


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
        if self.top_n is not None and (not _is_int(self.top_n) or self.top_n < 0):
            raise InvalidInputError(f"top_n must be None or an int >= 0, got {self.top_n!r}")
        if self.score_threshold is not None and (
            isinstance(self.score_threshold, bool)
            or not isinstance(self.score_threshold, int | float)
            or not 0.0 <= self.score_threshold <= 1.0
        ):
            raise InvalidInputError(f"score_threshold must be None or a number in [0, 1], got {self.score_threshold!r}")
        if not _is_int(self.min_keep) or self.min_keep < 0:
            raise InvalidInputError(f"min_keep must be an int >= 0, got {self.min_keep!r}")
        if self.top_n is not None and self.min_keep > self.top_n:
            raise InvalidInputError(f"min_keep ({self.min_keep}) cannot exceed top_n ({self.top_n})")


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
    """Decide which texts go to rank1: each distinct non-empty text once.

    Raises :class:`InvalidInputError` for empty texts when ``empty_text="raise"``.
    """
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
    """Apply ``policy`` to the documents of ``plan`` given the judgments of ``plan.passages``.

    Every document is accounted for: ``judgments`` must hold one judgment per passage,
    or this raises :class:`Rank1Error` (a reranker that lost passages must fail loudly).
    With ``top_n == 0`` nothing is kept and ``judgments`` may be empty (see :func:`needs_judging`).
    """
    if policy.top_n == 0:
        return []
    if len(judgments) != len(plan.passages):
        raise Rank1Error(f"rank1 returned {len(judgments)} judgments for {len(plan.passages)} passages")
    judged: list[tuple[int, Judgment, Status]] = []
    unjudged: list[tuple[int, Judgment]] = []
    for index, slot in enumerate(plan.slots):
        if slot is None:
            judged.append((index, Judgment(index=index, score=0.0, relevant=False, reasoning=""), "empty"))
        elif not has_score(judgments[slot]):  # unjudged; or a broken score, which must not upset the ranking
            unjudged.append((index, judgments[slot]))
        else:
            judged.append((index, judgments[slot], "judged"))
    # a. rank (empty texts after real judgments of the same score, then input order)
    judged.sort(key=lambda item: (-_score(item[1]), item[2] == "empty", item[0]))
    # b. threshold / verdict, c. top_n
    passing = [item for item in judged if _passes(policy, item[1], item[2])]
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
    return {
        RELEVANCE_SCORE_KEY: j.score,
        REASONING_KEY: j.reasoning,
        RATIONALE_KEY: j.rationale,
        RELEVANT_KEY: j.relevant,
        FORCED_KEY: j.forced,
        REASONING_TOKENS_KEY: j.reasoning_tokens,
        TRUNCATED_KEY: j.truncated,
        STATUS_KEY: pick.status,
        KEPT_BY_KEY: pick.kept_by,
        ERROR_KEY: j.error,
    }


def resolve_reranker(
    reranker: Rank1Reranker | None,
    model: str | None,
    base_url: str | Sequence[str] | None,
    reranker_kwargs: Mapping[str, Any],
    *,
    api_key: SecretStr | None = None,
) -> Rank1Reranker:
    """The adapters' reranker: the one given, or one built from settings.

    With ``base_url``: ``Rank1Reranker.from_server(base_url, model, api_key=api_key,
    **reranker_kwargs)`` (vLLM servers; ``model`` is the served name, optional); otherwise
    ``Rank1Reranker.from_vllm(model, **reranker_kwargs)`` (an embedded engine, which takes no
    ``api_key``).
    """
    if reranker is not None:
        if model is not None or base_url is not None or reranker_kwargs or api_key is not None:
            raise InvalidInputError("pass either reranker= or the settings to build one (model=, base_url=), not both")
        if not isinstance(reranker, Rank1Reranker):
            raise InvalidInputError(f"reranker must be a Rank1Reranker, got {type(reranker).__name__}")
        return reranker
    if base_url is not None:
        return Rank1Reranker.from_server(base_url, model, api_key=api_key, **reranker_kwargs)
    if api_key is not None:
        raise InvalidInputError("api_key is for vLLM servers: pass it with base_url=")
    if model is None:
        raise InvalidInputError(
            "pass reranker= (a Rank1Reranker), model= (an embedded vLLM engine) or base_url= (vLLM servers)"
        )
    return Rank1Reranker.from_vllm(model, **reranker_kwargs)


def template_kwargs(template: str | None) -> dict[str, Any]:
    """``judge`` keyword arguments: a template overrides the reranker's own only when given."""
    return {} if template is None else {"template": resolve_template(template)}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def has_score(judgment: Judgment) -> bool:
    """A finite score (an unjudged passage, or a broken score, has none)."""
    score = judgment.score
    return isinstance(score, int | float) and not isinstance(score, bool) and math.isfinite(score)


def _score(judgment: Judgment) -> float:
    return judgment.score if judgment.score is not None else -math.inf


def _passes(policy: SelectionPolicy, judgment: Judgment, status: Status) -> bool:
    if policy.score_threshold is None:
        return judgment.relevant is True and status == "judged"
    return judgment.score is not None and judgment.score >= policy.score_threshold


# -- context blocks for the next prompt ------------------------------------------------

DEFAULT_SOURCE_TEMPLATE = "[{number}] {source} ({assessment})\n{text}\nrank1's reasoning: {reasoning}"
"""One source in a context block. Fields: ``number`` (1-based), ``source``, ``assessment``
(verdict and score in words), ``score`` (formatted, or "n/a"), ``text``, ``reasoning`` (the
rationale or the full reasoning, as ``format_context(reasoning=...)`` says), ``rationale``
and ``full_reasoning``."""

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
        """Read the rank1 keys an adapter wrote; a chunk without them shows as not judged.

        Without a ``rank1_rationale`` key (metadata written by other code) the rationale is
        quoted from ``rank1_reasoning`` the same way :attr:`Judgment.rationale` is.
        """
        score = metadata.get(RELEVANCE_SCORE_KEY)
        reasoning = str(metadata.get(REASONING_KEY) or "")
        given = metadata.get(RATIONALE_KEY)
        return cls(
            text=text,
            source=source,
            score=float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None,
            relevant=metadata.get(RELEVANT_KEY),
            reasoning=reasoning,
            rationale=str(given) if given is not None else rationale(reasoning),
            status=str(metadata.get(STATUS_KEY, "unjudged")),
            kept_by=str(metadata.get(KEPT_BY_KEY, "relevance")),
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
    """Render kept chunks as numbered sources, each with rank1's reason, for an LLM prompt.

    ``reasoning="rationale"`` (the default) shows rank1's conclusion, one or two sentences
    quoted from its reasoning (:attr:`Judgment.rationale`); ``"full"`` shows all of it,
    which can be thousands of tokens per source.
    """
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

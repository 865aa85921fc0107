"""The rerank endpoints' core, without HTTP: a query and documents in, ranked judgments out.

Per request: check the limits and the text (before any of it joins shared work, where one
bad passage would fail every request waiting on its batch); plan what to send (empty documents are never sent,
identical ones once: :func:`~rank1_integrations.adapters.selection.plan_judging`); answer what the
reranker's result cache knows; join or start the in-flight judgments of the rest
(:class:`~.sharing.InFlight`, one ``Rank1Reranker.ajudge_stream`` call per new batch); rank every
document best first and cut to ``top_n`` (:func:`~rank1_integrations.adapters.selection.select`
with a threshold of 0: nothing is filtered, as the rerank APIs define it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rank1_integrations.adapters.selection import Pick, SelectionPolicy, plan_judging, select
from rank1_integrations.cache import GuardedCache
from rank1_integrations.core.calls import validated
from rank1_integrations.core.judgment import Judgment
from rank1_integrations.errors import BackendError, InvalidInputError, PassageFailure, PassagesFailedError
from rank1_integrations.reranker import Rank1Reranker
from rank1_integrations.serve.metrics import ServeMetrics
from rank1_integrations.serve.sharing import InFlight
from rank1_integrations.settings import Effort

__all__ = ["Limits", "Ranking", "RequestTooLargeError", "RerankService"]


class RequestTooLargeError(InvalidInputError):
    """The request has more documents or characters than the server accepts (HTTP 413)."""


@dataclass(frozen=True)
class Limits:
    """What one rerank request may hold."""

    max_documents: int = 1000
    max_characters: int = 2_000_000
    """Characters of the query and all documents together."""
    max_body_bytes: int | None = None
    """Bytes of the request body, checked before it is parsed. None: room for ``max_characters`` characters
    each sent as a 6-byte JSON escape (``\\uXXXX``, what ASCII-only JSON encoders send), 64 bytes of JSON
    around each of ``max_documents`` documents, and 1 MiB for the rest of the body."""

    def __post_init__(self) -> None:
        for name in ("max_documents", "max_characters", "max_body_bytes"):
            value = getattr(self, name)
            if value is None:  # the body limit, derived from the two checked before it
                value = 6 * self.max_characters + 64 * self.max_documents + 2**20
                object.__setattr__(self, name, value)  # frozen: set once, here
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class Ranking:
    """The documents of one request, best first (cut to ``top_n``), with rank1's judgments."""

    picks: list[Pick]
    reasoning_tokens: int
    """Reasoning tokens behind every document's judgment (cached and shared ones included)."""


class RerankService:
    """Ranks documents with one :class:`Rank1Reranker`, sharing work between concurrent requests."""

    def __init__(
        self, reranker: Rank1Reranker, *, limits: Limits, metrics: ServeMetrics, disconnect_grace: float = 0.0
    ) -> None:
        self.reranker = reranker
        self.limits = limits
        self.metrics = metrics
        self.in_flight = InFlight(self._judge_batch, linger=disconnect_grace)
        # As the reranker reads its cache: a failing cache costs a miss, never a request.
        self._cache = GuardedCache(reranker.cache) if reranker.cache is not None else None

    async def rerank(
        self,
        query: str,
        texts: Sequence[str],
        top_n: int | None,
        effort: Effort | None = None,
        budget: int | None = None,
    ) -> Ranking:
        """Every document judged (or the call fails), ranked best first, cut to ``top_n`` (None: all).

        ``effort`` and ``budget`` (the request's ``reasoning_effort`` and ``max_reasoning_tokens``)
        override the server's; a budget above the server's is refused.
        """
        self._check_limits(query, texts)
        changes = self._changes(effort, budget, top_n)
        self.metrics.documents.inc(len(texts))
        plan = plan_judging(texts)
        validated([(query, plan.passages)])
        if changes.get("reasoning_effort", self.reranker.settings.reasoning_effort) == "adaptive":
            # Adaptive picks what to reason on from the whole list: its work is this request's own.
            judgments = await self.reranker.ajudge(query, plan.passages, **changes) if plan.passages else []
        else:
            by_key = {self.reranker.cache_key(query, passage, **changes): passage for passage in plan.passages}
            known = await self._cached(list(by_key))
            missing = {key: passage for key, passage in by_key.items() if key not in known}
            self.metrics.cache_hits.inc(len(known))
            if missing:
                joined = await self.in_flight.join(query, missing, changes)
                self.metrics.shared.inc(joined.shared)
                known.update(joined.judgments)
            judgments = [known[key] for key in by_key]
        failures = [
            PassageFailure(index, BackendError(judgments[slot].error or "not judged"))
            for index, slot in enumerate(plan.slots)
            if slot is not None and not judgments[slot].judged
        ]
        if failures:  # a reranker with on_failure="mark_unjudged": the rerank APIs need every score
            raise PassagesFailedError(failures, total=len(texts))
        picks = select(SelectionPolicy(top_n=top_n, score_threshold=0.0), plan, judgments)
        return Ranking(
            picks, reasoning_tokens=sum(judgments[slot].reasoning_tokens for slot in plan.slots if slot is not None)
        )

    def _check_limits(self, query: str, texts: Sequence[str]) -> None:
        if len(texts) > self.limits.max_documents:
            raise RequestTooLargeError(
                f"{len(texts)} documents: this server takes at most {self.limits.max_documents} per request"
            )
        characters = len(query) + sum(len(text) for text in texts)
        if characters > self.limits.max_characters:
            raise RequestTooLargeError(
                f"{characters} characters in the query and documents: this server takes at most "
                f"{self.limits.max_characters} per request"
            )

    def _changes(self, effort: Effort | None, budget: int | None, top_n: int | None) -> dict[str, Any]:
        # The reranker's own cache key takes these too: what makes two judgments the same also makes them shareable.
        changes: dict[str, Any] = {}
        if budget is not None:
            if budget > self.reranker.max_reasoning_tokens:
                raise InvalidInputError(
                    f"max_reasoning_tokens: at most this server's {self.reranker.max_reasoning_tokens}, got {budget}"
                )
            changes["max_reasoning_tokens"] = budget
        if effort is not None:
            changes["reasoning_effort"] = effort
        if (effort or self.reranker.settings.reasoning_effort) == "adaptive" and top_n is not None:
            changes["adaptive_top_k"] = top_n  # the rerank APIs' cut is top_n: reason on the candidates for it
        return changes

    async def _cached(self, keys: list[str]) -> dict[str, Judgment]:
        if self._cache is None or not keys:
            return {}
        return await asyncio.to_thread(self._cache.get_many, keys)  # a DiskCache reads SQLite: off the event loop

    async def _judge_batch(
        self, query: str, passages: Sequence[str], changes: Mapping[str, Any]
    ) -> AsyncGenerator[Judgment, None]:
        """Each passage's judgment as soon as it is final (then ``PassagesFailedError`` if some failed)."""
        started = time.perf_counter()
        judged: list[Judgment] = []
        try:
            async for judgment in self.reranker.ajudge_stream(query, passages, **changes):
                judged.append(judgment)
                yield judgment
        finally:
            self.metrics.judged_batch(judged, time.perf_counter() - started)

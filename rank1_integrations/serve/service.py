"""The rerank endpoints' core without HTTP: limits and text are checked before anything joins shared work,
where one bad passage would fail every request waiting on its batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rank1_integrations.adapters.selection import Pick, SelectionPolicy, plan_judging, select
from rank1_integrations.cache import GuardedCache
from rank1_integrations.core.calls import validated
from rank1_integrations.core.judgment import Judgment
from rank1_integrations.errors import BackendError, InvalidInputError, PassageFailure, PassagesFailedError
from rank1_integrations.reranker import Rank1Reranker
from rank1_integrations.serve.sharing import InFlight
from rank1_integrations.settings import Effort

__all__ = ["Limits", "Ranking", "RequestTooLargeError", "RerankService", "ServeMetrics"]

# rank1 reasons before it answers: calls take from milliseconds (cache) to minutes (long budgets).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class RequestTooLargeError(InvalidInputError):
    """The request has more documents or characters than the server accepts (HTTP 413)."""


@dataclass(frozen=True)
class Limits:
    """What one rerank request may hold (``rank1 serve`` checks the numbers)."""

    max_documents: int = 1000
    max_characters: int = 2_000_000
    """Characters of the query and all documents together."""
    max_body_bytes: int = 0
    """Bytes of the request body, checked before it is parsed. 0: every character as a 6-byte JSON escape
    (``\\uXXXX``, as ASCII-only encoders send), 64 bytes around each document and 1 MiB for the rest."""

    def __post_init__(self) -> None:
        if not self.max_body_bytes:  # frozen: derived once, here
            object.__setattr__(self, "max_body_bytes", 6 * self.max_characters + 64 * self.max_documents + 2**20)


@dataclass(frozen=True)
class Ranking:
    """The documents of one request, best first (cut to ``top_n``), with rank1's judgments."""

    picks: list[Pick]
    reasoning_tokens: int
    """Reasoning tokens behind every document's judgment (cached and shared ones included)."""


class ServeMetrics:
    """Prometheus metrics of one rank1-serve app, in a registry of its own (``GET /metrics``)."""

    def __init__(self, in_flight: InFlight) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        counter, gauge = partial(Counter, registry=self.registry), partial(Gauge, registry=self.registry)
        histogram = partial(Histogram, buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.requests = counter(
            "rank1_serve_requests", "HTTP requests answered, by endpoint and status", ["endpoint", "status"]
        )
        self.latency = histogram(
            "rank1_serve_request_duration_seconds", "Time to answer a request, by endpoint", ["endpoint"]
        )
        self.in_progress = gauge("rank1_serve_requests_in_progress", "Requests being answered now")
        self.documents = counter("rank1_serve_documents", "Documents received in rerank requests")
        self.judged = counter("rank1_serve_passages_judged", "Passages rank1 judged for this server (engine work)")
        self.cache_hits = counter("rank1_serve_cache_hits", "Passages answered from the result cache")
        self.shared = counter("rank1_serve_shared_judgments", "Passages that joined a judgment already in flight")
        self.reasoning_tokens = counter("rank1_serve_reasoning_tokens", "Reasoning tokens rank1 generated")
        self.forced = counter("rank1_serve_forced_answers", "Judgments whose answer was forced (out of budget)")
        self.judge_latency = histogram("rank1_serve_judge_duration_seconds", "Time rank1 took for a batch of passages")
        gauge("rank1_serve_passages_in_flight", "Passages being judged now").set_function(lambda: len(in_flight))
        gauge(
            "rank1_serve_judgment_waits", "Requests waiting for in-flight judgments (one per request and batch)"
        ).set_function(lambda: in_flight.waiting)

    def judged_one(self, judgment: Judgment) -> None:
        self.judged.inc()
        self.reasoning_tokens.inc(judgment.reasoning_tokens)
        self.forced.inc(judgment.forced)


class RerankService:
    """Ranks documents with one :class:`Rank1Reranker`, sharing work between concurrent requests."""

    def __init__(self, reranker: Rank1Reranker, *, limits: Limits, disconnect_grace: float = 0.0) -> None:
        self.reranker = reranker
        self.limits = limits
        self.in_flight = InFlight(self._judge_batch, linger=disconnect_grace)
        self.metrics = ServeMetrics(self.in_flight)
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
        """Every document judged (or the call fails), best first, cut to ``top_n`` (None: all).

        ``effort`` and ``budget`` override the server's; a budget above the server's is refused.
        """
        if len(texts) > self.limits.max_documents:
            raise RequestTooLargeError(
                f"{len(texts)} documents: this server takes at most {self.limits.max_documents} per request"
            )
        if (characters := len(query) + sum(map(len, texts))) > self.limits.max_characters:
            raise RequestTooLargeError(
                f"{characters} characters in the query and documents: this server takes at most "
                f"{self.limits.max_characters} per request"
            )
        server = self.reranker.settings
        if budget is not None and budget > server.max_reasoning_tokens:
            raise InvalidInputError(
                f"max_reasoning_tokens: at most this server's {server.max_reasoning_tokens}, got {budget}"
            )
        adaptive = (effort or server.reasoning_effort) == "adaptive"
        # The cache key takes these too: what makes two judgments the same also makes them shareable.
        # Adaptive reasons on the candidates for the cut, and the rerank APIs' cut is top_n.
        given = {"reasoning_effort": effort, "max_reasoning_tokens": budget, "adaptive_top_k": adaptive and top_n}
        changes: dict[str, Any] = {name: value for name, value in given.items() if value}
        self.metrics.documents.inc(len(texts))
        plan = plan_judging(texts)
        validated([(query, plan.passages)])
        if adaptive:  # it picks what to reason on from the whole list: its work is this request's own
            judgments = await self.reranker.ajudge(query, plan.passages, **changes) if plan.passages else []
        else:
            by_key = {self.reranker.cache_key(query, passage, **changes): passage for passage in plan.passages}
            known: dict[str, Judgment] = {}
            if self._cache is not None and by_key:  # a DiskCache reads SQLite: off the event loop
                known = await asyncio.to_thread(self._cache.get_many, list(by_key))
            missing = {key: passage for key, passage in by_key.items() if key not in known}
            self.metrics.cache_hits.inc(len(known))
            if missing:
                joined = await self.in_flight.join(query, missing, changes)
                self.metrics.shared.inc(joined.shared)
                known.update(joined.judgments)
            judgments = [known[key] for key in by_key]
        slots = [(index, judgments[slot]) for index, slot in enumerate(plan.slots) if slot is not None]
        failures = [PassageFailure(i, BackendError(j.error or "not judged")) for i, j in slots if not j.judged]
        if failures:  # a reranker with on_failure="mark_unjudged": the rerank APIs need every score
            raise PassagesFailedError(failures, total=len(texts))
        picks = select(SelectionPolicy(top_n=top_n, score_threshold=0.0), plan, judgments)
        return Ranking(picks, reasoning_tokens=sum(j.reasoning_tokens for _, j in slots))

    async def _judge_batch(
        self, query: str, passages: Sequence[str], changes: Mapping[str, Any]
    ) -> AsyncGenerator[Judgment, None]:
        with self.metrics.judge_latency.time():
            async for judgment in self.reranker.ajudge_stream(query, passages, **changes):
                self.metrics.judged_one(judgment)
                yield judgment

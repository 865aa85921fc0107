"""Prometheus metrics of one rank1-serve app, in a registry of its own (``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from rank1_integrations.core.judgment import Judgment
from rank1_integrations.serve.sharing import InFlight

__all__ = ["ServeMetrics"]

# rank1 reasons before it answers: calls take from milliseconds (cache) to minutes (long budgets).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class ServeMetrics:
    """Requests, documents, where judgments came from, reasoning tokens and latencies."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "rank1_serve_requests",
            "HTTP requests answered, by endpoint and status",
            ["endpoint", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "rank1_serve_request_duration_seconds",
            "Time to answer a request, by endpoint",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_progress = Gauge("rank1_serve_requests_in_progress", "Requests being answered now", registry=registry)
        self.documents = Counter("rank1_serve_documents", "Documents received in rerank requests", registry=registry)
        self.judged = Counter(
            "rank1_serve_passages_judged", "Passages rank1 judged for this server (engine work)", registry=registry
        )
        self.cache_hits = Counter(
            "rank1_serve_cache_hits", "Passages answered from the result cache", registry=registry
        )
        self.shared = Counter(
            "rank1_serve_shared_judgments",
            "Passages that joined a judgment another request had in flight",
            registry=registry,
        )
        self.reasoning_tokens = Counter(
            "rank1_serve_reasoning_tokens", "Reasoning tokens rank1 generated for this server", registry=registry
        )
        self.forced = Counter(
            "rank1_serve_forced_answers",
            "Judgments whose answer was forced (reasoning ran out of budget)",
            registry=registry,
        )
        self.judge_latency = Histogram(
            "rank1_serve_judge_duration_seconds",
            "Time rank1 took for one batch of new passages",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )

    def watch(self, in_flight: InFlight) -> None:
        """Report the in-flight judgments at every scrape."""
        Gauge("rank1_serve_passages_in_flight", "Passages being judged now", registry=self.registry).set_function(
            lambda: len(in_flight)
        )
        Gauge(
            "rank1_serve_judgment_waits",
            "Requests waiting for in-flight judgments now (one per request and batch)",
            registry=self.registry,
        ).set_function(lambda: in_flight.waiting)

    def judged_batch(self, judgments: list[Judgment], seconds: float) -> None:
        """Count a batch of fresh judgments."""
        self.judged.inc(len(judgments))
        self.reasoning_tokens.inc(sum(j.reasoning_tokens for j in judgments))
        self.forced.inc(sum(j.forced for j in judgments))
        self.judge_latency.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

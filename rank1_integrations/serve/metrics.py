"""Prometheus metrics of one rank1-serve app, in a registry of its own (``GET /metrics``)."""

from __future__ import annotations

from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rank1_integrations.core.judgment import Judgment
from rank1_integrations.serve.sharing import InFlight

__all__ = ["ServeMetrics"]

# rank1 reasons before it answers: calls take from milliseconds (cache) to minutes (long budgets).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class ServeMetrics:
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
        waits = gauge(
            "rank1_serve_judgment_waits", "Requests waiting for in-flight judgments (one per request and batch)"
        )
        waits.set_function(lambda: in_flight.waiting)

    def judged_batch(self, judgments: list[Judgment], seconds: float) -> None:
        self.judged.inc(len(judgments))
        self.reasoning_tokens.inc(sum(j.reasoning_tokens for j in judgments))
        self.forced.inc(sum(j.forced for j in judgments))
        self.judge_latency.observe(seconds)

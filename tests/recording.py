"""A real backend that keeps what it was asked and what it answered (for exact checks on what was sent)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from rank1_integrations.backends.base import Backend, CompletionRequest, CompletionResult, ResultSink


class RecordingBackend:
    """Passes every submission to a real backend and records its requests and their results."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.batches: list[list[CompletionRequest]] = []
        self.results: list[list[CompletionResult | None]] = []
        """Per submission, each request's result (None until it came)."""

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def tokenizer(self) -> Any:
        return self.inner.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.inner.max_model_len

    def submit(self, requests: Sequence[CompletionRequest], on_result: ResultSink) -> Future[Any]:
        self.batches.append(list(requests))
        results: list[CompletionResult | None] = [None] * len(requests)
        self.results.append(results)

        def keep(position: int, result: CompletionResult) -> None:
            results[position] = result
            on_result(position, result)

        return self.inner.submit(requests, keep)

    def clear(self) -> None:
        self.batches.clear()
        self.results.clear()

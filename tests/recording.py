"""A real backend that keeps what it was asked and what it answered (for exact checks on what was sent)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rank1_integrations.backends.base import Backend, CompletionRequest, CompletionResult


class RecordingBackend:
    """Passes every call to a real backend and records each batch of requests and its results."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.batches: list[list[CompletionRequest]] = []
        self.results: list[list[CompletionResult]] = []

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def tokenizer(self) -> Any:
        return self.inner.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.inner.max_model_len

    def complete(self, requests: Sequence[CompletionRequest]) -> list[CompletionResult]:
        self.batches.append(list(requests))
        results = self.inner.complete(requests)
        self.results.append(results)
        return results

    def clear(self) -> None:
        self.batches.clear()
        self.results.clear()

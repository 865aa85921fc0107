"""A real backend that keeps what it was asked and what it answered (for exact checks on what was sent)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from rank1_integrations.backends.base import Backend, CompletionRequest, CompletionResult, ResultSink


@dataclass(frozen=True)
class Exchange:
    """One passage's requests: its reasoning, and the forced answer sent after it (if any)."""

    request: CompletionRequest
    completion: CompletionResult | None
    forced: CompletionRequest | None = None
    forced_result: CompletionResult | None = None


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

    def exchanges(self) -> list[Exchange]:
        """One per reasoning request, in the order sent (the passages' order when prompts are built ahead).

        Forced answers go out as their passages need them, in as many submissions as it takes;
        each is matched to the reasoning request whose prompt it extends (the longest shared prefix).
        """
        sent = [
            (request, result)
            for batch, results in zip(self.batches, self.results, strict=True)
            for request, result in zip(batch, results, strict=True)
        ]
        reasoning = [(request, result) for request, result in sent if request.max_tokens > 1]
        forced: dict[int, tuple[CompletionRequest, CompletionResult | None]] = {}
        for request, result in sent:
            if request.max_tokens == 1:
                owner = max(range(len(reasoning)), key=lambda i: _shared(reasoning[i][0], request))
                assert owner not in forced, "two forced answers for one passage"
                forced[owner] = (request, result)
        return [
            Exchange(request, result, *forced.get(number, (None, None)))
            for number, (request, result) in enumerate(reasoning)
        ]


def _shared(reasoning: CompletionRequest, forced: CompletionRequest) -> int:
    length = 0
    for a, b in zip(reasoning.prompt_token_ids, forced.prompt_token_ids, strict=False):
        if a != b:
            break
        length += 1
    return length

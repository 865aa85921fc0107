"""The seam between the rank1 core and an engine: requests in, completions out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from rank1_integrations.errors import Rank1Error
from rank1_integrations.tokenization import PromptTokenizer

__all__ = ["AsyncBackend", "Backend", "Completion", "CompletionRequest", "CompletionResult"]


@dataclass(frozen=True)
class CompletionRequest:
    """Greedy completion of a token-id prompt, with the two label log-probabilities at each step.

    Backends must decode with temperature 0 and keep special tokens in the text
    (``skip_special_tokens=False``) so that stop strings containing ``</think>`` match.
    """

    prompt_token_ids: tuple[int, ...]
    max_tokens: int
    stop: tuple[str, ...]
    label_token_ids: tuple[int, int]
    """(true, false): their log-probabilities are wanted exactly, not only when in a top-k."""


@dataclass(frozen=True)
class Completion:
    """What the engine generated for one request."""

    token_ids: tuple[int, ...]
    text: str
    """The engine's own detokenized text, stop string excluded."""
    finish_reason: str
    """"stop" (stop string or end of sequence) or "length" (budget exhausted)."""
    stop_reason: str | int | None
    """The stop string matched, a stop token id, or None (end of sequence / length)."""
    final_label_logprobs: tuple[float, float] | None
    """(true, false) log-probabilities at the last generated position; None if the engine gave none."""


CompletionResult = Completion | Rank1Error
"""A completion, or the typed error that kept one request from completing."""


@runtime_checkable
class Backend(Protocol):
    """A synchronous engine: one call completes a whole batch of requests."""

    @property
    def model_name(self) -> str: ...

    @property
    def tokenizer(self) -> PromptTokenizer: ...

    @property
    def max_model_len(self) -> int: ...

    def complete(self, requests: Sequence[CompletionRequest]) -> list[CompletionResult]:
        """Complete every request (one batch); per-request failures come back as errors."""
        ...


@runtime_checkable
class AsyncBackend(Backend, Protocol):
    """An engine that can also be awaited without blocking the event loop."""

    async def acomplete(self, requests: Sequence[CompletionRequest]) -> list[CompletionResult]: ...

"""The seam between the rank1 core and an engine: requests in, completions out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from rank1_integrations.core.tokenization import PromptTokenizer
from rank1_integrations.errors import Rank1Error

__all__ = ["Backend", "Completion", "CompletionRequest", "CompletionResult", "ResultSink"]


@dataclass(frozen=True)
class CompletionRequest:
    """Greedy completion of a token-id prompt, with the two label log-probabilities at each step.

    Backends keep special tokens in the text (``skip_special_tokens=False``): else the stop
    strings, which contain ``</think>``, never match.
    """

    prompt_token_ids: tuple[int, ...]
    max_tokens: int
    stop: tuple[str, ...]
    label_token_ids: tuple[int, int]
    """(true, false): their log-probabilities are wanted exactly, not only when in a top-k."""


@dataclass(frozen=True)
class Completion:
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


ResultSink = Callable[[int, CompletionResult], None]
"""Called with (position in the submitted requests, its result) as each request finishes."""


@runtime_checkable
class Backend(Protocol):
    """An engine that completes requests and reports each one as soon as it finishes."""

    @property
    def model_name(self) -> str: ...

    @property
    def tokenizer(self) -> PromptTokenizer: ...

    @property
    def max_model_len(self) -> int: ...

    def submit(self, requests: Sequence[CompletionRequest], on_result: ResultSink) -> Future[Any]:
        """Start every request now and return at once.

        ``on_result`` is called from the backend's own thread as each request finishes (a failure
        as its error). The future completes when all have, fails if the backend failed as a whole
        (some requests may have had no result), and cancelling it aborts the unfinished ones.
        """

"""The seam between the rank1 core and an engine: requests in, completions out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from rank1_integrations.core.tokenization import PromptTokenizer
from rank1_integrations.errors import Rank1Error

__all__ = ["Backend", "BackendInfo", "Completion", "CompletionRequest", "CompletionResult", "ResultSink"]


@dataclass(frozen=True)
class CompletionRequest:
    """Greedy completion of a token-id prompt, with the two label log-probabilities at each step. Backends
    keep special tokens in the text: else the stop strings, which contain ``</think>``, never match."""

    prompt_token_ids: tuple[int, ...]
    max_tokens: int
    stop: tuple[str, ...]
    label_token_ids: tuple[int, int]  # (true, false): log-probabilities wanted exactly, not only in a top-k


@dataclass(frozen=True)
class Completion:
    token_ids: tuple[int, ...]
    text: str  # the engine's own detokenized text, stop string excluded
    finish_reason: str  # "stop" (stop string or end of sequence) or "length" (budget exhausted)
    stop_reason: str | int | None  # the stop string matched, a stop token id, or None
    final_label_logprobs: tuple[float, float] | None  # (true, false) at the last generated position


CompletionResult = Completion | Rank1Error  # or the typed error that kept one request from completing
ResultSink = Callable[[int, CompletionResult], None]  # (position in the submitted requests, its result)


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


class BackendInfo:
    """The :class:`Backend` properties, set once by a backend's constructor."""

    _model_name: str
    _tokenizer: PromptTokenizer
    _max_model_len: int

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self._model_name!r}, max_model_len={self._max_model_len})"

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def tokenizer(self) -> PromptTokenizer:
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

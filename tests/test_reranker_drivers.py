"""The sync and async drivers around the judging core, with a backend that fails.

The backend here is a stand-in for a broken engine (pure driver logic); real engines
are covered in test_embedded_engine.py and the remote tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import pytest

from rank1_integrations import BackendError, PassagesFailedError, Rank1Reranker
from rank1_integrations.backends.base import CompletionRequest, ResultSink
from rank1_integrations.core.tokenization import HFPromptTokenizer, PromptTokenizer


class DeadEngine:
    """An engine whose every batch fails, as a crashed engine or unreachable server would."""

    def __init__(self, tokenizer: PromptTokenizer) -> None:
        self._tokenizer = tokenizer
        self.calls = 0

    model_name = "dead"
    max_model_len = 512

    @property
    def tokenizer(self) -> PromptTokenizer:
        return self._tokenizer

    def submit(self, requests: Sequence[CompletionRequest], on_result: ResultSink) -> Future[Any]:
        self.calls += 1
        raise BackendError("engine crashed")


@pytest.fixture
def dead(hf_tokenizer) -> DeadEngine:
    return DeadEngine(HFPromptTokenizer(hf_tokenizer))


def test_a_failed_batch_fails_the_call_naming_every_passage(dead) -> None:
    reranker = Rank1Reranker(dead, max_reasoning_tokens=64)
    with pytest.raises(PassagesFailedError, match="engine crashed") as caught:
        reranker.judge("q", ["a", "b", "c"])
    assert [f.index for f in caught.value.failures] == [0, 1, 2]
    assert dead.calls == 1


def test_with_mark_unjudged_every_passage_comes_back_unjudged_in_order(dead) -> None:
    reranker = Rank1Reranker(dead, max_reasoning_tokens=64, on_failure="mark_unjudged")
    for judgments in (reranker.judge("q", ["a", "b"]), asyncio.run(reranker.ajudge("q", ["a", "b"]))):
        assert [(j.index, j.judged, j.score) for j in judgments] == [(0, False, None), (1, False, None)]
        assert all("engine crashed" in (j.error or "") for j in judgments)

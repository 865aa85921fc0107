"""Judgments handed over as they become final: the driver's logic (scripted backends), then real engines.

The scripted backends below answer from their own thread in an order the test chooses,
as a real backend does; they test the driver (ordering, cancellation, failures), never
whether an engine works. The engine tests at the end run the same streams on the real
embedded engine and on a real vLLM server behind the fault proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path

import pytest

from rank1_integrations import BackendError, Judgment, PassagesFailedError, Rank1Reranker
from rank1_integrations.backends.base import Completion, CompletionRequest
from rank1_integrations.core.protocol import STOP_STRINGS
from rank1_integrations.core.tokenization import HFPromptTokenizer
from tests.conftest import SCRIPTED_BUDGET
from tests.fault_proxy import Fault, FaultProxy
from tests.models.tiny_models import (
    JOIN_PASSAGE,
    LEN_PASSAGE,
    LEN_QUERY,
    OPEN_PASSAGE,
    SORTED_PASSAGE,
)
from tests.vllm_server import VLLMServer, shared_server, stop_all


def _answer(request: CompletionRequest) -> Completion:
    """A natural answer ' true' (with the request's own label ids)."""
    return Completion((7, request.label_token_ids[0]), "Reasons.", "stop", STOP_STRINGS[0], (-0.1, -2.0))


class ScriptedBackend:
    """Answers each submitted request from its own thread, in the order ``order`` gives (by prompt)."""

    max_model_len = 512
    model_name = "scripted"

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.answer: Callable[[str, CompletionRequest], object] = lambda text, request: _answer(request)
        self.submissions: list[Future] = []
        self.release: dict[str, threading.Event] = {}
        self.fail_with: BaseException | None = None
        self.duplicate = False

    def gate(self, marker: str) -> threading.Event:
        """Requests whose prompt contains ``marker`` wait for this event."""
        return self.release.setdefault(marker, threading.Event())

    def submit(self, requests: Sequence[CompletionRequest], on_result) -> Future:
        future: Future = Future()
        self.submissions.append(future)
        texts = [self.tokenizer.decode(r.prompt_token_ids) for r in requests]

        def run() -> None:
            threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if future.set_running_or_notify_cancel():
                if self.fail_with is not None:
                    future.set_exception(self.fail_with)
                else:
                    future.set_result(None)

        def one(position: int) -> None:
            for marker, event in self.release.items():
                if marker in texts[position]:
                    while not event.wait(0.01):
                        if future.cancelled():
                            return
            if future.cancelled() or self.fail_with is not None:
                return
            on_result(position, self.answer(texts[position], requests[position]))
            if self.duplicate:
                on_result(position, BackendError("a second result for the same request"))

        threading.Thread(target=run, daemon=True).start()
        return future


@pytest.fixture
def scripted(hf_tokenizer) -> Iterator[tuple[Rank1Reranker, ScriptedBackend]]:
    backend = ScriptedBackend(HFPromptTokenizer(hf_tokenizer))
    yield Rank1Reranker(backend, max_reasoning_tokens=32, cache=True), backend  # type: ignore[arg-type]
    for event in backend.release.values():
        event.set()


def test_judgments_come_as_they_finish_with_cache_hits_first(scripted) -> None:
    reranker, backend = scripted
    reranker.judge("q", ["cached one"])
    slow, fast = backend.gate("slow"), backend.gate("fast")
    stream = reranker.judge_iter("q", ["slow one", "cached one", "fast one"])
    assert next(stream).index == 1  # from the cache, before anything else finished
    fast.set()
    assert next(stream).index == 2
    slow.set()
    assert next(stream).index == 0
    assert list(stream) == []


async def test_the_async_stream_is_the_same(scripted) -> None:
    reranker, backend = scripted
    slow = backend.gate("slow")
    seen: list[int] = []
    async for judgment in reranker.ajudge_stream("q", ["slow one", "quick one"]):
        seen.append(judgment.index)
        slow.set()
    assert seen == [1, 0]


def test_leaving_the_stream_early_cancels_the_rest(scripted) -> None:
    reranker, backend = scripted
    backend.gate("never")
    stream = reranker.judge_iter("q", ["at once", "never one", "never two"])
    first = next(stream)
    assert (first.index, first.forced) == (0, False)
    stream.close()
    assert len(backend.submissions) == 1
    assert backend.submissions[0].cancelled()


async def test_cancelling_an_async_stream_cancels_the_rest(scripted) -> None:
    reranker, backend = scripted
    backend.gate("never")
    async with contextlib.aclosing(reranker.ajudge_stream("q", ["at once", "never"])) as stream:
        async for judgment in stream:
            assert judgment.index == 0
            break
    assert len(backend.submissions) == 1
    assert backend.submissions[0].cancelled()


def test_under_raise_the_successes_come_first_then_the_error(scripted) -> None:
    reranker, backend = scripted
    backend.answer = lambda text, request: BackendError("503") if "bad" in text else _answer(request)
    stream = reranker.judge_iter("q", ["good", "bad", "good too"])
    got = [next(stream).index, next(stream).index]
    with pytest.raises(PassagesFailedError) as caught:
        next(stream)
    assert sorted(got) == [0, 2]
    assert [f.index for f in caught.value.failures] == [1]
    assert [j is None for j in caught.value.judgments] == [False, True, False]


def test_a_backend_that_fails_as_a_whole_fails_what_had_no_result(scripted) -> None:
    _, backend = scripted
    backend.gate("stuck")
    backend.fail_with = BackendError("engine step failed")

    def release_later() -> None:
        time.sleep(0.2)
        backend.release["stuck"].set()

    threading.Thread(target=release_later).start()
    unjudged = Rank1Reranker(backend, max_reasoning_tokens=32, on_failure="mark_unjudged", cache=False)  # type: ignore[arg-type]
    got = unjudged.judge("q", ["stuck a", "stuck b"])
    assert [j.judged for j in got] == [False, False]
    assert all("engine step failed" in (j.error or "") for j in got)


def test_a_bug_in_the_backend_is_raised_as_it_is(scripted) -> None:
    reranker, backend = scripted
    backend.fail_with = ZeroDivisionError("a bug")
    backend.gate("x").set()
    with pytest.raises(ZeroDivisionError, match="a bug"):
        reranker.judge("q", ["x"])


def test_a_second_result_for_one_request_is_ignored(scripted) -> None:
    _, backend = scripted
    backend.duplicate = True
    got = Rank1Reranker(backend, max_reasoning_tokens=32, cache=False).judge("q", ["a", "b"])  # type: ignore[arg-type]
    assert [(j.judged, j.forced) for j in got] == [(True, False), (True, False)]


# -- the real engines ------------------------------------------------------------------------

PASSAGES = [OPEN_PASSAGE, LEN_PASSAGE, SORTED_PASSAGE, JOIN_PASSAGE]


def _by_index(judgments: list[Judgment]) -> list[tuple]:
    return sorted((j.index, j.relevant, j.forced, j.reasoning, round(j.score or 0, 4)) for j in judgments)


@pytest.mark.engine
def test_the_embedded_stream_equals_judge_and_puts_the_forced_answer_last(scripted_reranker) -> None:
    reranker = Rank1Reranker(scripted_reranker.backend, max_reasoning_tokens=SCRIPTED_BUDGET, cache=False)
    want = reranker.judge(LEN_QUERY, PASSAGES)
    streamed = list(reranker.judge_iter(LEN_QUERY, PASSAGES))
    assert _by_index(streamed) == _by_index(want)
    # OPEN_PASSAGE reasons to the budget and then needs its forced answer: it is final last.
    assert streamed[-1].index == 0
    assert streamed[-1].forced
    async_streamed = asyncio.run(_collect(reranker.ajudge_stream(LEN_QUERY, PASSAGES)))
    assert _by_index(async_streamed) == _by_index(want)


async def _collect(stream) -> list[Judgment]:
    return [judgment async for judgment in stream]


@pytest.mark.engine
def test_leaving_an_embedded_stream_aborts_its_engine_requests(scripted_reranker) -> None:
    reranker = Rank1Reranker(scripted_reranker.backend, max_reasoning_tokens=SCRIPTED_BUDGET, cache=False)
    loop = reranker.backend._loop  # type: ignore[attr-defined]

    async def first_only() -> Judgment:
        async with contextlib.aclosing(reranker.ajudge_stream(LEN_QUERY, PASSAGES * 4)) as stream:
            async for judgment in stream:
                return judgment
        raise AssertionError("nothing came")

    first = asyncio.run(first_only())
    assert first.judged
    engine = reranker.backend.llm.llm_engine  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while engine.has_unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not engine.has_unfinished_requests()
    assert not loop._running  # the driver holds nothing of the abandoned call
    # The engine is fine for the next caller.
    assert [j.judged for j in reranker.judge(LEN_QUERY, PASSAGES)] == [True] * 4


@pytest.fixture(scope="module")
def server(scripted_model_dir: Path, model_cache: Path, request: pytest.FixtureRequest) -> VLLMServer:
    request.config.add_cleanup(stop_all)
    return shared_server(scripted_model_dir, "--enable-tokenizer-info-endpoint", log_dir=model_cache).wait_ready()


@pytest.mark.engine
def test_a_remote_stream_hands_over_the_quick_ones_first_and_hangs_up_on_the_rest(server, scripted_reranker) -> None:
    want = Rank1Reranker(scripted_reranker.backend, max_reasoning_tokens=SCRIPTED_BUDGET, cache=False).judge(
        LEN_QUERY, PASSAGES
    )
    with FaultProxy(server.root_url) as proxy:
        reranker = Rank1Reranker.from_server(
            proxy.base_url, server.model, max_reasoning_tokens=SCRIPTED_BUDGET, cache=False
        )
        streamed = list(reranker.judge_iter(LEN_QUERY, PASSAGES))
        assert _by_index(streamed) == _by_index(want)
        assert streamed[-1].index == 0  # the forced one

        slow_prompt = list(reranker.build_prompt(LEN_QUERY, SORTED_PASSAGE).token_ids)
        proxy.clear()
        proxy.add(Fault("delay", delay=20.0, times=-1, match=lambda body: body.get("prompt") == [slow_prompt]))

        async def first_then_leave() -> list[int]:
            seen = []
            async with contextlib.aclosing(reranker.ajudge_stream(LEN_QUERY, [LEN_PASSAGE, SORTED_PASSAGE])) as s:
                async for judgment in s:
                    seen.append(judgment.index)
                    break
            return seen

        started = time.monotonic()
        assert asyncio.run(first_then_leave()) == [0]
        assert time.monotonic() - started < 10  # did not wait for the slow one
        deadline = time.monotonic() + 5
        while "client disconnected" not in proxy.outcomes() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "client disconnected" in proxy.outcomes()
        reranker.close()

"""In-flight sharing (``rank1_integrations.serve.sharing.InFlight``): pure asyncio logic.

A stand-in judge that hands over each judgment when the test frees its passage and records
every call and cancellation: what the sharing decides (start, join, release each request as
soon as its own passages are judged, cancel only when nobody waits) is checked here without
an engine; tests/test_serve_flow.py checks the same through HTTP on a real engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import pytest

from rank1_integrations import BackendError, Judgment, Rank1Error
from rank1_integrations.serve.sharing import InFlight


class HeldJudge:
    """Judges ``passage`` as score len(passage)/100, as soon as the test frees it (:meth:`release`)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.cancelled: list[list[str]] = []
        self.freed: set[str] = set()
        self.everything = False
        self.moved = asyncio.Event()
        self.fail: Exception | None = None
        self.failing: set[str] = set()
        """With ``fail``: the passages that fail (then ``fail`` is raised); empty: all of them."""
        self.drop_one = False

    def release(self, *passages: str) -> None:
        """Free these passages (none named: every passage, from now on)."""
        self.freed.update(passages)
        self.everything = self.everything or not passages
        self.moved.set()

    async def __call__(
        self, query: str, passages: Sequence[str], changes: Mapping[str, Any] | None = None
    ) -> AsyncGenerator[Judgment, None]:
        self.calls.append(list(passages))
        left = dict(enumerate(passages))
        failed = False
        try:
            while left:
                ready = [i for i, p in left.items() if self.everything or p in self.freed]
                if not ready:
                    self.moved.clear()
                    await self.moved.wait()
                for i in ready:
                    passage = left.pop(i)
                    if self.fail is not None and (not self.failing or passage in self.failing):
                        failed = True
                    elif not (self.drop_one and i == len(passages) - 1):
                        yield Judgment(index=i, score=len(passage) / 100, relevant=True, reasoning=f"{query}/{passage}")
        except asyncio.CancelledError:
            self.cancelled.append(list(passages))
            raise
        if failed:
            assert self.fail is not None
            raise self.fail


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_overlapping_requests_judge_each_key_once_and_both_get_every_judgment() -> None:
    judge = HeldJudge()
    flights = InFlight(judge)
    first = asyncio.create_task(flights.join("q", {"a": "aa", "b": "bbb"}))
    await settle()
    second = asyncio.create_task(flights.join("q", {"b": "bbb", "c": "c"}))
    await settle()
    assert judge.calls == [["aa", "bbb"], ["c"]]  # b joined the first batch
    assert len(flights) == 3
    judge.release()
    one, two = await first, await second
    assert {k: j.score for k, j in one.judgments.items()} == {"a": 0.02, "b": 0.03}
    assert {k: j.score for k, j in two.judgments.items()} == {"b": 0.03, "c": 0.01}
    assert two.judgments["b"] is one.judgments["b"]
    assert (one.shared, two.shared) == (0, 1)
    assert len(flights) == 0  # done: repeats are the result cache's business


async def test_a_waiter_that_leaves_does_not_cancel_work_another_still_needs() -> None:
    judge = HeldJudge()
    flights = InFlight(judge)
    leaver = asyncio.create_task(flights.join("q", {"a": "aa", "b": "bbb"}))
    await settle()
    stayer = asyncio.create_task(flights.join("q", {"b": "bbb"}))
    await settle()
    leaver.cancel()
    await settle()
    assert leaver.cancelled()
    assert judge.cancelled == []
    judge.release()
    result = await stayer
    assert result.judgments["b"].score == 0.03
    assert judge.calls == [["aa", "bbb"]]


async def test_work_nobody_waits_for_is_cancelled_and_forgotten() -> None:
    judge = HeldJudge()
    flights = InFlight(judge)
    one = asyncio.create_task(flights.join("q", {"a": "aa"}))
    two = asyncio.create_task(flights.join("q", {"a": "aa"}))
    await settle()
    one.cancel()
    await settle()
    assert judge.cancelled == []  # the second waiter still needs it
    two.cancel()
    await settle()
    assert judge.cancelled == [["aa"]]
    assert len(flights) == 0
    # A later request starts fresh work instead of joining the cancelled batch.
    again = asyncio.create_task(flights.join("q", {"a": "aa"}))
    await settle()
    assert judge.calls == [["aa"], ["aa"]]
    judge.release()
    assert (await again).judgments["a"].score == 0.02


async def test_a_failed_batch_fails_every_waiter_and_is_not_remembered() -> None:
    judge = HeldJudge()
    judge.fail = BackendError("engine down")
    flights = InFlight(judge)
    waiters = [asyncio.create_task(flights.join("q", {"a": "aa"})) for _ in range(3)]
    await settle()
    judge.release()
    for waiter in waiters:
        with pytest.raises(BackendError, match="engine down"):
            await waiter
    assert judge.calls == [["aa"]]
    assert len(flights) == 0
    judge.fail = None
    assert (await flights.join("q", {"a": "aa"})).judgments["a"].score == 0.02


async def test_a_judge_that_loses_a_passage_fails_loudly() -> None:
    judge = HeldJudge()
    judge.drop_one = True
    judge.release()
    with pytest.raises(Rank1Error, match="1 judgments for 2 passages"):
        await InFlight(judge).join("q", {"a": "aa", "b": "bbb"})


async def test_nothing_to_judge_starts_nothing() -> None:
    judge = HeldJudge()
    result = await InFlight(judge).join("q", {})
    assert (result.judgments, result.shared, judge.calls) == ({}, 0, [])


async def test_work_nobody_waits_for_lingers_for_a_retry() -> None:
    judge = HeldJudge()
    flights = InFlight(judge, linger=0.2)
    first = asyncio.create_task(flights.join("q", {"a": "aa"}))
    await settle()
    first.cancel()  # the client timed out ...
    await asyncio.sleep(0.05)
    assert judge.cancelled == []
    retry = asyncio.create_task(flights.join("q", {"a": "aa"}))  # ... and came back
    await asyncio.sleep(0.3)  # past the linger: the retry holds the work
    assert judge.cancelled == []
    judge.release()
    assert (await retry).shared == 1
    assert judge.calls == [["aa"]]


async def test_lingering_work_is_cancelled_when_nobody_comes_back() -> None:
    judge = HeldJudge()
    flights = InFlight(judge, linger=0.1)
    first = asyncio.create_task(flights.join("q", {"a": "aa"}))
    await settle()
    first.cancel()
    await settle()
    assert len(flights) == 1  # still joinable
    await asyncio.sleep(0.2)
    assert judge.cancelled == [["aa"]]
    assert len(flights) == 0


async def test_cancel_all_stops_lingering_work() -> None:
    judge = HeldJudge()
    flights = InFlight(judge, linger=60)
    first = asyncio.create_task(flights.join("q", {"a": "aa", "b": "b"}))
    await settle()
    first.cancel()
    await settle()
    flights.cancel_all()
    await settle()
    assert judge.cancelled == [["aa", "b"]]
    assert len(flights) == 0


async def test_a_request_that_joined_a_batch_returns_when_its_own_passages_are_judged() -> None:
    judge = HeldJudge()
    flights = InFlight(judge)
    first = asyncio.create_task(flights.join("q", {"s": "slow", "x": "xx"}))
    await settle()
    second = asyncio.create_task(flights.join("q", {"x": "xx"}))
    await settle()
    judge.release("xx")
    assert (await asyncio.wait_for(second, 10)).judgments["x"].score == 0.02
    assert not first.done()
    assert (len(flights), flights.waiting) == (1, 1)  # x is forgotten; the first request still waits for s
    judge.release("slow")
    assert {k: j.score for k, j in (await first).judgments.items()} == {"s": 0.04, "x": 0.02}
    assert (judge.calls, judge.cancelled) == ([["slow", "xx"]], [])


async def test_a_request_done_with_a_batch_no_longer_keeps_the_rest_of_it_running() -> None:
    judge = HeldJudge()
    flights = InFlight(judge)
    leaver = asyncio.create_task(flights.join("q", {"a": "aa", "b": "bbb"}))
    await settle()
    stayer = asyncio.create_task(flights.join("q", {"b": "bbb", "c": "c"}))  # b joins; c starts a batch
    await settle()
    leaver.cancel()
    await settle()
    assert judge.cancelled == []  # the stayer still waits for b
    judge.release("bbb")
    await settle()
    assert judge.cancelled == [["aa", "bbb"]]  # nobody waits for a any more
    judge.release("c")
    assert {k: j.score for k, j in (await stayer).judgments.items()} == {"b": 0.03, "c": 0.01}


async def test_a_failed_passage_fails_only_its_waiters_and_the_others_are_not_held_up() -> None:
    judge = HeldJudge()
    judge.fail, judge.failing = BackendError("engine down"), {"bbb"}
    flights = InFlight(judge)
    both = asyncio.create_task(flights.join("q", {"a": "aa", "b": "bbb", "s": "slow"}))
    await settle()
    only_a = asyncio.create_task(flights.join("q", {"a": "aa"}))
    only_b = asyncio.create_task(flights.join("q", {"b": "bbb"}))
    await settle()
    judge.release("aa", "bbb")
    assert (await asyncio.wait_for(only_a, 10)).judgments["a"].score == 0.02
    assert not only_b.done()  # a failure is final when the batch ends (the reranker raises it then)
    judge.release("slow")
    for failed in (both, only_b):
        with pytest.raises(BackendError, match="engine down"):
            await failed
    assert len(flights) == 0

"""In-flight sharing (``rank1_integrations.serve.sharing.InFlight``): pure asyncio logic.

A stand-in judge that waits until the test releases it and records every call and
cancellation: what the sharing decides (start, join, cancel only when nobody waits) is
checked here without an engine; tests/test_serve.py checks the same through HTTP on a
real engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from rank1_integrations import BackendError, Judgment, Rank1Error
from rank1_integrations.serve.sharing import InFlight


class HeldJudge:
    """Judges ``passage`` as score len(passage)/100 once the test releases it."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.cancelled: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail: Exception | None = None
        self.drop_one = False

    async def __call__(self, query: str, passages: Sequence[str]) -> list[Judgment]:
        self.calls.append(list(passages))
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(list(passages))
            raise
        if self.fail is not None:
            raise self.fail
        judged = [
            Judgment(index=i, score=len(p) / 100, relevant=True, reasoning=f"{query}/{p}")
            for i, p in enumerate(passages)
        ]
        return judged[:-1] if self.drop_one else judged


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
    judge.release.set()
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
    judge.release.set()
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
    judge.release.set()
    assert (await again).judgments["a"].score == 0.02


async def test_a_failed_batch_fails_every_waiter_and_is_not_remembered() -> None:
    judge = HeldJudge()
    judge.fail = BackendError("engine down")
    flights = InFlight(judge)
    waiters = [asyncio.create_task(flights.join("q", {"a": "aa"})) for _ in range(3)]
    await settle()
    judge.release.set()
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
    judge.release.set()
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
    judge.release.set()
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

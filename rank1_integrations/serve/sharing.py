"""Identical judgments in flight (same key: query, passage, settings) are made once, for every request wanting them.

Clients time out and retry long rank1 calls: a batch (one ``ajudge_stream`` call) is cancelled, its engine
requests aborted, only when nobody waits on it and nobody came back within ``linger`` seconds. One event loop; no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rank1_integrations.core.judgment import Judgment
from rank1_integrations.errors import Rank1Error

__all__ = ["InFlight", "Joined"]

_Outcome = Judgment | Exception
Judge = Callable[[str, Sequence[str], Mapping[str, Any]], AsyncGenerator[Judgment, None]]
"""Yields each passage's judgment (``Judgment.index``: which one) once final; raising fails those not handed over."""


@dataclass(eq=False)
class _Batch:
    results: dict[str, asyncio.Future[_Outcome]]
    task: asyncio.Task[None] = field(init=False)
    waiters: int = 0
    expiry: asyncio.TimerHandle | None = None
    """Set while nobody waits: when the batch is cancelled unless a request joins it first."""


@dataclass(frozen=True)
class Joined:
    """The judgments a request asked for, by key, and how many it found already in flight."""

    judgments: dict[str, Judgment]
    shared: int


@dataclass
class InFlight:
    """Keys being judged now, and the batch judging each."""

    judge: Judge
    linger: float = 0.0
    """Seconds a batch nobody waits for keeps running before it is cancelled (0: at once)."""
    _batches: dict[str, _Batch] = field(default_factory=dict)

    def __len__(self) -> int:
        """Passages being judged now."""
        return len(self._batches)

    @property
    def waiting(self) -> int:
        """Requests waiting for judgments now (one per request and batch it waits on)."""
        return sum(batch.waiters for batch in set(self._batches.values()))

    async def join(self, query: str, passages: Mapping[str, str], changes: Mapping[str, Any] | None = None) -> Joined:
        """Judgments of ``passages`` (key -> text) for ``query`` with per-call ``changes`` (the keys tell them apart).

        Raises what judging raised; cancelling the caller cancels only batches nobody else awaits.
        """
        new = {key: text for key, text in passages.items() if key not in self._batches}
        if new:
            self._start(query, new, changes or {})
        futures = {key: self._batches[key].results[key] for key in passages}
        held: dict[_Batch, list[asyncio.Future[_Outcome]]] = {}
        for key, future in futures.items():
            held.setdefault(self._batches[key], []).append(future)
        for batch in held:
            batch.waiters += 1
            if batch.expiry is not None:  # a request came back for work nobody waited for
                batch.expiry.cancel()
                batch.expiry = None
        try:
            while held:
                for batch in [b for b, waited in held.items() if all(f.done() for f in waited)]:
                    del held[batch]  # its passages there are judged: the rest of it is not this request's
                    self._release(batch)
                if held:
                    # asyncio.wait never cancels what it waits on: leaving cancels nobody else's work.
                    waited = [f for fs in held.values() for f in fs if not f.done()]
                    await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for batch in held:
                self._release(batch)
        judgments: dict[str, Judgment] = {}
        for key, future in futures.items():
            outcome = future.result()
            if isinstance(outcome, Exception):
                # One error object may reach several requests: each raise starts a fresh traceback.
                raise outcome.with_traceback(None)
            judgments[key] = outcome
        return Joined(judgments, shared=len(passages) - len(new))

    def cancel_all(self) -> None:
        """Cancel every batch (the server is shutting down: no request can wait any more)."""
        for batch in set(self._batches.values()):
            self._cancel(batch)

    def _start(self, query: str, passages: Mapping[str, str], changes: Mapping[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        batch = _Batch({key: loop.create_future() for key in passages})
        for key in passages:
            self._batches[key] = batch
        batch.task = loop.create_task(self._run(batch, query, list(passages.values()), changes))
        batch.task.add_done_callback(lambda _: self._settle(batch))

    async def _run(self, batch: _Batch, query: str, texts: list[str], changes: Mapping[str, Any]) -> None:
        keys = list(batch.results)
        try:
            async with contextlib.aclosing(self.judge(query, texts, changes)) as judgments:
                async for judgment in judgments:
                    self._hand_over(batch, keys[judgment.index], judgment)
            if lost := [key for key in keys if not batch.results[key].done()]:
                raise Rank1Error(f"rank1 returned {len(keys) - len(lost)} judgments for {len(keys)} passages")
        except Exception as err:  # the waiters of what is left get the error; the HTTP layer decides what it says
            for key in keys:
                if not batch.results[key].done():
                    self._hand_over(batch, key, err)

    def _hand_over(self, batch: _Batch, key: str, outcome: _Outcome) -> None:
        # Forget first: a request for this key from now on finds it in the result cache or starts afresh.
        if self._batches.get(key) is batch:
            del self._batches[key]
        batch.results[key].set_result(outcome)

    def _settle(self, batch: _Batch) -> None:
        # However the batch ended (cancelled included), nobody may wait on it forever.
        if batch.expiry is not None:
            batch.expiry.cancel()
        self._cancel(batch)  # forgets it (cancelling a finished task does nothing)
        for future in batch.results.values():
            future.cancel()  # nothing, once done

    def _release(self, batch: _Batch) -> None:
        batch.waiters -= 1
        if self.linger > 0 and batch.waiters == 0 and not batch.task.done():
            batch.expiry = asyncio.get_running_loop().call_later(self.linger, self._expire, batch)
        else:
            self._expire(batch)

    def _expire(self, batch: _Batch) -> None:
        batch.expiry = None
        if batch.waiters == 0 and not batch.task.done():
            self._cancel(batch)

    def _cancel(self, batch: _Batch) -> None:
        # Forget first: a request arriving from now on starts fresh work instead of joining this.
        for key in batch.results:
            if self._batches.get(key) is batch:
                del self._batches[key]
        batch.task.cancel()

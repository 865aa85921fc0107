"""Identical judgments in flight are made once, for every request that wants them.

Clients time out and retry long rank1 calls, and several users ask about the same
passages: a passage already being judged for the same query and settings (the same
key) joins that work instead of being reasoned again. The passages a request brings
that nobody is judging yet start one new batch (one ``ajudge`` call, so they enter the
engine together).

Batches are reference-counted by the requests waiting on them: a request that goes away
(its client disconnected) stops waiting, and a batch is cancelled, which aborts its
engine requests, only when no request waits on it any more, and none has come back
within ``linger`` seconds: a client that timed out and retries at once joins the work
its first attempt started instead of starting it over. Each passage of a batch has its
own future, so a batch that delivers judgments one by one could release each waiter as
soon as its passages are done. Runs on one event loop; no locks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from rank1_integrations.errors import Rank1Error
from rank1_integrations.judgment import Judgment

__all__ = ["InFlight", "Joined"]

_Outcome = Judgment | Exception
Judge = Callable[[str, Sequence[str]], Awaitable[Sequence[_Outcome]]]
"""Judges passages for a query: each passage's judgment, or the error that kept it from one.
Raising fails every passage of the batch."""


@dataclass(eq=False)
class _Batch:
    results: dict[str, asyncio.Future[_Outcome]]
    task: asyncio.Task[None] | None = None
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
        return sum(batch.waiters for batch in {id(b): b for b in self._batches.values()}.values())

    async def join(self, query: str, passages: Mapping[str, str]) -> Joined:
        """Judgments of ``passages`` (key -> text) for ``query``, each key judged once across callers.

        Raises what judging raised; cancelling the caller cancels only batches nobody else awaits.
        """
        new = {key: text for key, text in passages.items() if key not in self._batches}
        if new:
            self._start(query, new)
        futures = {key: self._batches[key].results[key] for key in passages}
        batches = list({id(self._batches[key]): self._batches[key] for key in passages}.values())
        for batch in batches:
            batch.waiters += 1
            if batch.expiry is not None:  # a request came back for work nobody waited for
                batch.expiry.cancel()
                batch.expiry = None
        try:
            # asyncio.wait never cancels what it waits on: leaving cancels nobody else's work.
            if futures:
                await asyncio.wait(futures.values())
        finally:
            for batch in batches:
                batch.waiters -= 1
                if batch.waiters == 0 and batch.task is not None and not batch.task.done():
                    self._unwanted(batch)
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
        for batch in list({id(b): b for b in self._batches.values()}.values()):
            self._cancel(batch)

    def _start(self, query: str, passages: Mapping[str, str]) -> None:
        loop = asyncio.get_running_loop()
        batch = _Batch({key: loop.create_future() for key in passages})
        for key in passages:
            self._batches[key] = batch
        batch.task = loop.create_task(self._run(batch, query, list(passages.values())))
        batch.task.add_done_callback(lambda _: self._settle(batch))

    async def _run(self, batch: _Batch, query: str, texts: list[str]) -> None:
        outcomes: list[_Outcome]
        try:
            outcomes = list(await self.judge(query, texts))
            if len(outcomes) != len(texts):
                raise Rank1Error(f"rank1 returned {len(outcomes)} judgments for {len(texts)} passages")
        except Exception as err:  # every waiter gets the error; the HTTP layer decides what it says
            outcomes = [err] * len(texts)
        self._forget(batch)
        for future, outcome in zip(batch.results.values(), outcomes, strict=True):
            future.set_result(outcome)

    def _settle(self, batch: _Batch) -> None:
        # However the batch ended (cancelled included), nobody may wait on it forever.
        if batch.expiry is not None:
            batch.expiry.cancel()
        self._forget(batch)
        for future in batch.results.values():
            if not future.done():
                future.cancel()

    def _unwanted(self, batch: _Batch) -> None:
        if self.linger > 0:
            batch.expiry = asyncio.get_running_loop().call_later(self.linger, self._expire, batch)
        else:
            self._cancel(batch)

    def _expire(self, batch: _Batch) -> None:
        batch.expiry = None
        if batch.waiters == 0 and batch.task is not None and not batch.task.done():
            self._cancel(batch)

    def _cancel(self, batch: _Batch) -> None:
        # Forget first: a request arriving from now on starts fresh work instead of joining this.
        self._forget(batch)
        assert batch.task is not None
        batch.task.cancel()

    def _forget(self, batch: _Batch) -> None:
        for key in batch.results:
            if self._batches.get(key) is batch:
                del self._batches[key]

"""Drives judging calls on a backend, handing over each judgment as soon as it is final.

:class:`CallDriver` holds every decision of a call in flight (through the pure ``JudgingRun``);
the backend's threads and the prompt builders report into a queue, and the sync (:func:`drive`)
and async (:func:`adrive`) loops differ only in how they wait on it. Leaving a loop early cancels
what the call still has running.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

from rank1_integrations.backends.base import Backend, CompletionRequest, CompletionResult
from rank1_integrations.cache import JudgmentCache
from rank1_integrations.core.calls import CallPlan, Position
from rank1_integrations.core.judging import FailurePolicy
from rank1_integrations.core.judgment import Judgment
from rank1_integrations.core.prompting import PreparedPrompt
from rank1_integrations.errors import BackendError, Rank1Error

__all__ = ["CallDriver", "adrive", "drive", "drive_many"]


@dataclass(frozen=True)
class _Crash:
    """Something failed that is nobody's fault but ours (a bug) or the caller's (bad input): raised as it is."""

    error: BaseException


@dataclass(frozen=True)
class _Built:
    """A prompt built on the builders' pool (or why it could not be)."""

    index: int
    prompt: PreparedPrompt | Rank1Error


_Item = tuple[int, CompletionResult] | _Built | _Crash
Handed = tuple[Position, Judgment]
"""A judgment for the caller, with its (batch, index) position."""


class CallDriver:
    """One call in flight: it sends requests, takes results, and says which judgments are final."""

    def __init__(
        self,
        plan: CallPlan,
        backend: Backend,
        *,
        on_failure: FailurePolicy,
        cache: JudgmentCache | None,
        builders: Executor | None = None,
    ) -> None:
        """``builders`` builds the prompts not built ahead, each sent as soon as it is ready (a tokenizer
        with a round trip per text: no passage waits for the others' prompts)."""
        self._plan = plan
        self._backend = backend
        self._on_failure = on_failure
        self._cache = cache
        self._builders = builders
        self._notify: Callable[[_Item], None]  # set by start
        self._submissions: list[Future[Any]] = []
        self._pending = 0
        self._follow_ups: list[tuple[int, CompletionRequest]] = []

    @property
    def size(self) -> int:
        """The passages of the call."""
        return sum(self._plan.sizes)

    @property
    def done(self) -> bool:
        """Whether every prompt is built and every request sent has its result."""
        return self._pending == 0

    def start(self, notify: Callable[[_Item], None]) -> list[Handed]:
        """Send every reasoning request whose prompt is ready; returns what is final already, cache hits first."""
        self._notify = notify
        for index in range(len(self._plan.fresh)):
            if index in self._plan.prompts:
                self._begin(index, self._plan.prompts[index])
            elif self._builders is None:
                self._begin(index, self._plan.build(index))
            else:
                self._pending += 1
                build = self._builders.submit(self._build, index)
                build.add_done_callback(functools.partial(self._build_cancelled, index))
                self._submissions.append(build)
        return sorted(self._plan.known.items()) + self.flush()

    def handle(self, item: _Item) -> None:
        """Take one result or built prompt (from the queue the backend and the builders fill)."""
        if isinstance(item, _Crash):
            raise item.error
        self._pending -= 1
        if isinstance(item, _Built):
            self._begin(item.index, item.prompt)
            return
        index, result = item
        follow_up = self._plan.run.take(index, result)
        if follow_up is not None:
            self._follow_ups.append((index, follow_up))

    def flush(self) -> list[Handed]:
        """Send the requests that became due (one submission); the judgments that became final."""
        released, final = self._plan.run.drain()
        due, self._follow_ups = self._follow_ups + released, []
        if due:
            self._send(due)
        handed = [(i, j) for i in final if (j := self._plan.handed_over(i, self._on_failure))]
        keyed = {key: j for i, j in handed if (key := self._plan.store_key(i, j))}
        if self._cache is not None and keyed:
            self._cache.put_many(keyed)
        return [(self._plan.fresh[i], j) for i, j in handed]

    def cancel(self) -> None:
        """Abort whatever the call still has in the backend."""
        for submission in self._submissions:
            submission.cancel()

    def finish(self) -> list[list[Judgment]]:
        """Every passage's judgment, in the caller's order (or ``PassagesFailedError``)."""
        return self._plan.finish(self._on_failure)

    def _begin(self, index: int, prompt: PreparedPrompt | Rank1Error) -> None:
        request = self._plan.run.begin(index, prompt)
        if request is not None:
            self._follow_ups.append((index, request))

    def _build(self, index: int) -> None:  # on a builder's thread
        try:
            self._notify(_Built(index, self._plan.build(index)))
        except BaseException as err:  # bad input: the whole call fails, as when built ahead
            self._notify(_Crash(err))

    def _build_cancelled(self, index: int, build: Future[Any]) -> None:
        if build.cancelled():
            self._notify(_Built(index, _closed()))

    def _send(self, due: Sequence[tuple[int, CompletionRequest]]) -> None:
        indices = [index for index, _ in due]
        delivered: set[int] = set()
        lock = threading.Lock()
        notify = self._notify

        def on_result(position: int, result: CompletionResult) -> None:
            with lock:  # exactly one result per request, whatever the backend does
                if position in delivered or not 0 <= position < len(indices):
                    return
                delivered.add(position)
            notify((indices[position], result))

        def on_done(submission: Future[Any]) -> None:
            # A cancel is close()'s (or the caller's own, as its loop ends: then nobody reads this).
            error = _closed() if submission.cancelled() else submission.exception()
            missing: Rank1Error
            if error is None:
                missing = BackendError("the backend finished without a result for this request")
            elif isinstance(error, Rank1Error):
                missing = error
            else:
                notify(_Crash(error))
                return
            for position in range(len(indices)):
                on_result(position, missing)

        self._pending += len(due)
        try:
            submission = self._backend.submit([request for _, request in due], on_result)
        except Rank1Error as err:  # e.g. a closed backend: every one of these requests failed
            for position in range(len(indices)):
                on_result(position, err)
            return
        self._submissions.append(submission)
        submission.add_done_callback(on_done)


def drive(driver: CallDriver) -> Iterator[Handed]:
    """Run the call, waiting in this thread; yields each judgment as it becomes final."""
    return (handed for _, handed in drive_many([driver], max_in_flight=1))


def drive_many(calls: Iterable[CallDriver], *, max_in_flight: int) -> Iterator[tuple[int, Handed]]:
    """Run the calls with about ``max_in_flight`` passages in flight across them (a call holds its place
    until its last judgment), waiting in this thread; yields (which call, judgment) as each becomes final."""
    results: queue.SimpleQueue[tuple[int, _Item]] = queue.SimpleQueue()
    source = enumerate(calls)
    running: dict[int, CallDriver] = {}
    in_flight = 0
    try:
        while True:
            touched: set[int] = set()
            while in_flight < max_in_flight and (started := next(source, None)) is not None:
                number, driver = started
                running[number] = driver
                in_flight += driver.size
                yield from ((number, handed) for handed in driver.start(functools.partial(_tagged, results, number)))
                touched.add(number)
            if not running:
                return
            if not touched:
                touched.add(_handle(running, results.get()))
            while not results.empty():  # what else has arrived goes out with the same submissions
                touched.add(_handle(running, results.get_nowait()))
            for number in touched & running.keys():
                yield from ((number, handed) for handed in running[number].flush())
                if running[number].done:
                    in_flight -= running.pop(number).size
    finally:
        for driver in running.values():
            driver.cancel()


def _tagged(results: queue.SimpleQueue[tuple[int, _Item]], number: int, item: _Item) -> None:
    results.put((number, item))


def _handle(running: dict[int, CallDriver], tagged: tuple[int, _Item]) -> int:
    number, item = tagged
    if number in running:  # else a late word of a finished call (a cancelled build)
        running[number].handle(item)
    return number


async def adrive(driver: CallDriver) -> AsyncIterator[Handed]:
    """Run the call without blocking the event loop; yields each judgment as it becomes final."""
    loop = asyncio.get_running_loop()
    results: asyncio.Queue[_Item] = asyncio.Queue()

    def notify(item: _Item) -> None:
        with contextlib.suppress(RuntimeError):  # the caller's event loop is gone: nobody waits any more
            loop.call_soon_threadsafe(results.put_nowait, item)

    try:
        for handed in driver.start(notify):
            yield handed
        while not driver.done:
            driver.handle(await results.get())
            while not results.empty():
                driver.handle(results.get_nowait())
            for handed in driver.flush():
                yield handed
    finally:
        driver.cancel()


def _closed() -> BackendError:
    return BackendError("the reranker or its backend was closed while this call ran")

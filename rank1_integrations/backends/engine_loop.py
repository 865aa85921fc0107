"""Continuous admission for a stepped engine: concurrent callers share its running batch.

``vllm.LLM`` must not be entered from two threads at once, and a lock would make a late caller wait
for the whole running batch: so one driver thread admits new requests between any two steps.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from rank1_integrations.errors import BackendError

__all__ = ["EngineLoop", "EngineLoopStats", "SteppedEngine"]

RequestT = TypeVar("RequestT")
RequestT_contra = TypeVar("RequestT_contra", contravariant=True)
OutputT = TypeVar("OutputT")
OutputT_co = TypeVar("OutputT_co", covariant=True)
_ValueT = TypeVar("_ValueT")


class SteppedEngine(Protocol[RequestT_contra, OutputT_co]):
    """An engine that takes requests at any time and advances them one step per call."""

    def add(self, requests: Sequence[RequestT_contra]) -> list[str]:
        """Their engine ids in order. On error, none of them stays queued."""

    def step(self) -> Sequence[tuple[str, OutputT_co]]:
        """The requests that finished, by engine id."""

    def abort(self, request_ids: Sequence[str]) -> None: ...

    def has_unfinished(self) -> bool: ...


@dataclass
class EngineLoopStats:
    """How requests from different calls came to share engine steps."""

    admissions: int = 0  # times the driver queued newly submitted calls (one or more each time)
    steps: int = 0
    shared_steps: int = 0  # steps that advanced the requests of more than one call
    most_calls_in_one_step: int = 0


@dataclass(eq=False)
class _Call(Generic[RequestT, OutputT]):
    requests: Sequence[RequestT]
    future: Future[list[OutputT]]
    on_output: Callable[[int, OutputT], None] | None
    outputs: list[OutputT | None] = field(default_factory=list)
    engine_ids: list[str] = field(default_factory=list)
    unfinished: int = 0


class EngineLoop(Generic[RequestT, OutputT]):
    """Feeds every caller's requests into one stepped engine, continuously."""

    def __init__(self, engine: SteppedEngine[RequestT, OutputT], *, idle_seconds: float = 5.0) -> None:
        self._engine = engine
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._work_arrived = threading.Condition(self._lock)
        self._submitted: list[_Call[RequestT, OutputT]] = []
        self._cancelled: list[_Call[RequestT, OutputT]] = []
        self._driver: threading.Thread | None = None
        self._closed = False
        # Owned by the driver thread alone.
        self._running: dict[str, tuple[_Call[RequestT, OutputT], int]] = {}
        self.stats = EngineLoopStats()

    def submit(
        self, requests: Sequence[RequestT], *, on_output: Callable[[int, OutputT], None] | None = None
    ) -> Future[list[OutputT]]:
        """The future gives the outputs in order; ``on_output(position, output)`` hears of each as it
        finishes (on the driver thread)."""
        call: _Call[RequestT, OutputT] = _Call(requests, Future(), on_output)
        if not requests:
            call.future.set_result([])
            return call.future
        call.future.add_done_callback(lambda _: self._note_cancelled(call))
        with self._lock:
            if self._closed:
                raise BackendError("the engine loop is closed")
            self._submitted.append(call)
            self._work_arrived.notify()
            if self._driver is None:
                self._driver = threading.Thread(target=self._drive, name="rank1-engine-loop", daemon=True)
                self._driver.start()
        return call.future

    def close(self, timeout: float | None = None) -> None:
        """Refuse new calls and wait for the running ones to finish."""
        with self._lock:
            self._closed = True
            self._work_arrived.notify()
            driver = self._driver
        if driver is not None and driver is not threading.current_thread():
            driver.join(timeout)

    def _note_cancelled(self, call: _Call[RequestT, OutputT]) -> None:
        if call.future.cancelled():
            with self._lock:
                self._cancelled.append(call)
                self._work_arrived.notify()

    def _drive(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._running and not self._closed:
                        self._work_arrived.wait_for(
                            lambda: bool(self._submitted or self._cancelled or self._closed), self._idle_seconds
                        )
                    arrived, self._submitted = self._submitted, []
                    cancelled, self._cancelled = self._cancelled, []
                    if not arrived and not cancelled and not self._running:
                        # Idle a few seconds (a new CPU thread pays for a new OpenMP team), or closed.
                        self._driver = None
                        return
                self._abort(cancelled)
                self._admit(arrived)
                if self._running:
                    self._step()
        except BaseException as err:  # a bug here must not leave callers waiting forever
            self._fail_running(err)
            with self._lock:
                waiting, self._submitted = self._submitted, []
                self._driver = None
            for call in waiting:
                _settle(call.future.set_exception, err)
            raise

    def _admit(self, arrived: list[_Call[RequestT, OutputT]]) -> None:
        admitted = 0
        for call in arrived:
            if call.future.done():  # cancelled before it reached the engine
                continue
            try:
                engine_ids = self._engine.add(call.requests)
                if len(engine_ids) != len(call.requests):
                    raise BackendError(f"the engine took {len(engine_ids)} of {len(call.requests)} requests")
            except BaseException as err:  # only this call's requests were refused
                _settle(call.future.set_exception, err)
                continue
            call.engine_ids = engine_ids
            call.outputs = [None] * len(engine_ids)
            call.unfinished = len(engine_ids)
            for position, engine_id in enumerate(engine_ids):
                self._running[engine_id] = (call, position)
            admitted += 1
        if admitted:
            self.stats.admissions += 1

    def _step(self) -> None:
        calls_in_step = len({id(call) for call, _ in self._running.values()})
        try:
            finished = self._engine.step()
            if not finished and not self._engine.has_unfinished():
                raise BackendError(f"the engine dropped {len(self._running)} unfinished requests")
        except BaseException as err:  # the engine's state is unknown: every running call fails
            self._fail_running(err)
            return
        self.stats.steps += 1
        if calls_in_step > 1:
            self.stats.shared_steps += 1
        self.stats.most_calls_in_one_step = max(self.stats.most_calls_in_one_step, calls_in_step)
        for engine_id, output in finished:
            entry = self._running.pop(engine_id, None)
            if entry is None:  # aborted meanwhile, or not ours
                continue
            call, position = entry
            call.outputs[position] = output
            call.unfinished -= 1
            if call.on_output is not None:
                with contextlib.suppress(Exception):  # a consumer's failure never fails the engine
                    call.on_output(position, output)
            if call.unfinished == 0:
                _settle(call.future.set_result, [o for o in call.outputs if o is not None])

    def _abort(self, cancelled: list[_Call[RequestT, OutputT]]) -> None:
        engine_ids = [i for call in cancelled for i in call.engine_ids if self._running.pop(i, None) is not None]
        if engine_ids:
            try:
                self._engine.abort(engine_ids)
            except Exception as err:  # the engine is failing: its next step will say so
                self._fail_running(err)

    def _fail_running(self, err: BaseException) -> None:
        calls = {id(call): call for call, _ in self._running.values()}
        engine_ids = list(self._running)
        self._running.clear()
        for call in calls.values():
            _settle(call.future.set_exception, err)
        with contextlib.suppress(Exception):  # best effort: the engine already failed
            self._engine.abort(engine_ids)


def _settle(setter: Callable[[_ValueT], None], value: _ValueT) -> None:
    """Complete a caller's future, unless the caller cancelled it meanwhile (checking ``done()``
    first would race with the cancel; the driver must never die of one)."""
    with contextlib.suppress(InvalidStateError):
        setter(value)

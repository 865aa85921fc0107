"""EngineLoop's logic on a scripted stepped engine (the real vLLM engine: test_embedded_engine).

Each request is ``(label, steps)``: the engine finishes it after that many of its steps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import CancelledError

import pytest

from rank1_integrations.backends.engine_loop import EngineLoop
from rank1_integrations.errors import BackendError

Request = tuple[str, int]


class ScriptedEngine:
    """Finishes each request after its number of steps; must never be entered twice at once."""

    def __init__(self, step_seconds: float = 0.0) -> None:
        self.step_seconds = step_seconds
        self.remaining: dict[str, tuple[str, int]] = {}
        self.aborted: list[str] = []
        self.added_at_step: dict[str, int] = {}
        self.steps = 0
        self.stepping_threads: list[threading.Thread] = []
        self.refuse: set[str] = set()
        self.fail_next_step = False
        self.drop_everything = False
        self._inside = 0
        self._next_id = 0

    def _enter(self) -> None:
        self._inside += 1
        assert self._inside == 1, "engine entered from two threads at once"

    def add(self, requests: Sequence[Request]) -> list[str]:
        self._enter()
        try:
            if any(label in self.refuse for label, _ in requests):
                raise ValueError("prompt too long")
            ids = []
            for label, steps in requests:
                engine_id = f"e{self._next_id}"
                self._next_id += 1
                self.remaining[engine_id] = (label, steps)
                self.added_at_step[label] = self.steps
                ids.append(engine_id)
            return ids
        finally:
            self._inside -= 1

    def step(self) -> list[tuple[str, str]]:
        self._enter()
        try:
            time.sleep(self.step_seconds)
            if not any(t is threading.current_thread() for t in self.stepping_threads):
                self.stepping_threads.append(threading.current_thread())
            self.steps += 1
            if self.fail_next_step:
                self.fail_next_step = False
                raise RuntimeError("device lost")
            if self.drop_everything:
                self.remaining.clear()
                return []
            finished = []
            for engine_id, (label, steps) in list(self.remaining.items()):
                if steps <= 1:
                    del self.remaining[engine_id]
                    finished.append((engine_id, f"{label}@{self.steps}"))
                else:
                    self.remaining[engine_id] = (label, steps - 1)
            return finished
        finally:
            self._inside -= 1

    def abort(self, request_ids: Sequence[str]) -> None:
        self.aborted.extend(request_ids)
        for engine_id in request_ids:
            self.remaining.pop(engine_id, None)

    def has_unfinished(self) -> bool:
        return bool(self.remaining)


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def _driver_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "rank1-engine-loop" and t.is_alive()]


def test_each_call_gets_its_own_outputs_in_order() -> None:
    loop: EngineLoop[Request, str] = EngineLoop(ScriptedEngine())
    outputs = loop.submit([("a", 3), ("b", 1), ("c", 2)]).result(timeout=10)
    # Finished in another order (b, c, a), returned in the caller's.
    assert outputs == ["a@3", "b@1", "c@2"]
    assert loop.submit([]).result(timeout=1) == []


def test_concurrent_callers_share_engine_steps() -> None:
    engine = ScriptedEngine(step_seconds=0.001)
    loop: EngineLoop[Request, str] = EngineLoop(engine)
    callers = 8
    steps = 200  # long enough that every caller arrives while the first is still running
    barrier = threading.Barrier(callers)
    results: list[list[str] | None] = [None] * callers

    def call(slot: int) -> None:
        barrier.wait()
        results[slot] = loop.submit([(f"c{slot}-x", steps), (f"c{slot}-y", steps)]).result(timeout=30)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for slot, outputs in enumerate(results):
        assert outputs is not None
        assert [o.split("@")[0] for o in outputs] == [f"c{slot}-x", f"c{slot}-y"]
    assert loop.stats.most_calls_in_one_step == callers
    # Far fewer steps than 8 callers x 200 steps one after another.
    assert engine.steps < 2 * steps


def test_a_late_call_joins_the_running_batch_instead_of_waiting_for_it() -> None:
    engine = ScriptedEngine(step_seconds=0.002)
    loop: EngineLoop[Request, str] = EngineLoop(engine)
    long_call = loop.submit([("long", 200)])
    _wait_until(lambda: engine.steps >= 5)
    short_call = loop.submit([("short", 3)])
    outputs = short_call.result(timeout=10)
    assert not long_call.done()
    finished_at = int(outputs[0].split("@")[1])
    assert finished_at < 200
    assert long_call.result(timeout=30) == ["long@200"]
    assert loop.stats.admissions == 2
    assert loop.stats.shared_steps >= 3


def test_a_refused_call_fails_alone() -> None:
    engine = ScriptedEngine(step_seconds=0.001)
    engine.refuse.add("bad")
    loop: EngineLoop[Request, str] = EngineLoop(engine)
    good = loop.submit([("good", 20)])
    bad = loop.submit([("fine", 1), ("bad", 1)])
    with pytest.raises(ValueError, match="prompt too long"):
        bad.result(timeout=10)
    assert good.result(timeout=10) == ["good@20"]


def test_an_engine_failure_fails_every_running_call_and_the_loop_recovers() -> None:
    engine = ScriptedEngine(step_seconds=0.001)
    loop: EngineLoop[Request, str] = EngineLoop(engine)
    first = loop.submit([("a", 10_000)])
    second = loop.submit([("b", 10_000), ("c", 10_000)])
    _wait_until(lambda: len(engine.remaining) == 3)
    engine.fail_next_step = True
    for future in (first, second):
        with pytest.raises(RuntimeError, match="device lost"):
            future.result(timeout=10)
    assert sorted(engine.aborted) == ["e0", "e1", "e2"]
    steps_before = engine.steps
    assert loop.submit([("d", 2)]).result(timeout=10) == [f"d@{steps_before + 2}"]


def test_an_engine_that_drops_requests_is_an_error_not_a_hang() -> None:
    engine = ScriptedEngine()
    engine.drop_everything = True
    loop: EngineLoop[Request, str] = EngineLoop(engine)
    with pytest.raises(BackendError, match="dropped 2 unfinished requests"):
        loop.submit([("a", 5), ("b", 5)]).result(timeout=10)


def test_cancelling_a_call_aborts_its_requests_and_spares_the_others() -> None:
    engine = ScriptedEngine(step_seconds=0.002)
    loop: EngineLoop[Request, str] = EngineLoop(engine)
    doomed = loop.submit([("doomed-1", 10_000), ("doomed-2", 10_000)])
    kept = loop.submit([("kept", 30)])
    _wait_until(lambda: engine.steps >= 2)
    assert doomed.cancel()
    # "kept" may be admitted a step or two after "doomed" began; it runs its own 30 steps from there.
    assert kept.result(timeout=10) == [f"kept@{engine.added_at_step['kept'] + 30}"]
    _wait_until(lambda: len(engine.aborted) == 2)
    assert sorted(engine.aborted) == ["e0", "e1"]
    with pytest.raises(CancelledError):
        doomed.result(timeout=1)
    _wait_until(lambda: not engine.remaining)


def test_progress_callback_runs_once_per_finished_request() -> None:
    loop: EngineLoop[Request, str] = EngineLoop(ScriptedEngine())
    seen: list[int] = []
    loop.submit([("a", 1), ("b", 2), ("c", 2)], on_output=lambda: seen.append(1)).result(timeout=10)
    assert len(seen) == 3


def test_a_failing_progress_callback_does_not_fail_the_call() -> None:
    loop: EngineLoop[Request, str] = EngineLoop(ScriptedEngine())

    def broken() -> None:
        raise OSError("terminal gone")

    assert loop.submit([("a", 2)], on_output=broken).result(timeout=10) == ["a@2"]
    assert loop.submit([("b", 1)]).result(timeout=10) == ["b@3"]


def test_back_to_back_calls_reuse_the_driver_which_exits_when_idle() -> None:
    engine = ScriptedEngine()
    loop: EngineLoop[Request, str] = EngineLoop(engine, idle_seconds=0.2)
    before = len(_driver_threads())
    loop.submit([("a", 3)]).result(timeout=10)
    loop.submit([("b", 3)]).result(timeout=10)
    # A call's forced-answer batch, or the next turn, runs on the same thread.
    assert len(engine.stepping_threads) == 1
    _wait_until(lambda: len(_driver_threads()) <= before)
    loop.submit([("c", 1)]).result(timeout=10)
    assert len(engine.stepping_threads) == 2


def test_close_refuses_new_calls() -> None:
    loop: EngineLoop[Request, str] = EngineLoop(ScriptedEngine())
    loop.submit([("a", 3)]).result(timeout=10)
    started = time.monotonic()
    loop.close(timeout=10)
    assert time.monotonic() - started < 5  # an idle driver leaves at once on close
    with pytest.raises(BackendError, match="closed"):
        loop.submit([("b", 1)])


def test_a_cancel_landing_as_the_driver_completes_a_call_concerns_that_call_only() -> None:
    # The caller cancels at the very moment the driver hands over its outputs: the driver
    # must not die of it, and the other running call must get its outputs.
    engine = ScriptedEngine()
    loop: EngineLoop[Request, str] = EngineLoop(engine)
    gate = threading.Event()
    engine_step = engine.step

    def gated_step() -> list[tuple[str, str]]:
        gate.wait(timeout=10)
        return engine_step()

    engine.step = gated_step  # type: ignore[method-assign]
    cancelled = loop.submit([("cancelled", 2)])
    kept = loop.submit([("kept", 5)])
    settle = cancelled.set_result

    def cancel_then_settle(outputs: list[str]) -> None:
        cancelled.cancel()  # lands after the driver decided to complete the call
        settle(outputs)

    cancelled.set_result = cancel_then_settle  # type: ignore[method-assign]
    gate.set()
    assert kept.result(timeout=10) == [f"kept@{engine.added_at_step['kept'] + 5}"]
    assert cancelled.cancelled()
    assert loop.submit([("after", 1)]).result(timeout=10)[0].startswith("after@")

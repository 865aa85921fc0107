"""BatchCoalescer: concurrent callers share batches, each gets exactly its own results."""

from __future__ import annotations

import threading
import time

import pytest

from rank1_integrations.backends.coalescing import BatchCoalescer


class SlowEngine:
    """A stand-in for a synchronous engine that must never be entered twice at once."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.inside = 0
        self.batches: list[list[str]] = []

    def __call__(self, requests: list[str]) -> list[str]:
        self.inside += 1
        assert self.inside == 1, "entered concurrently"
        time.sleep(self.delay)
        self.batches.append(list(requests))
        self.inside -= 1
        return [r.upper() for r in requests]


def _hammer(coalescer: BatchCoalescer[str, str], callers: int) -> list[list[str] | BaseException]:
    barrier = threading.Barrier(callers)
    results: list[list[str] | BaseException] = [[] for _ in range(callers)]

    def call(slot: int) -> None:
        barrier.wait()
        try:
            results[slot] = coalescer.submit([f"c{slot}-a", f"c{slot}-b"])
        except BaseException as err:
            results[slot] = err

    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_concurrent_callers_share_batches_and_get_their_own_results() -> None:
    engine = SlowEngine(delay=0.2)
    coalescer = BatchCoalescer(engine)
    results = _hammer(coalescer, callers=8)
    assert results == [[f"C{i}-A", f"C{i}-B"] for i in range(8)]
    assert coalescer.batches_run == len(engine.batches)
    assert len(engine.batches) < 8
    # Nothing lost or duplicated across batches.
    assert sorted(r for batch in engine.batches for r in batch) == sorted(f"c{i}-{x}" for i in range(8) for x in "ab")


def test_an_engine_failure_reaches_every_caller_in_that_batch() -> None:
    def broken(requests: list[str]) -> list[str]:
        time.sleep(0.1)
        raise OSError("engine died")

    results = _hammer(BatchCoalescer(broken), callers=4)
    assert all(isinstance(r, OSError) and str(r) == "engine died" for r in results)


def test_a_short_result_list_is_an_error_not_a_mismatch() -> None:
    coalescer: BatchCoalescer[str, str] = BatchCoalescer(lambda requests: requests[:-1])
    with pytest.raises(RuntimeError, match="1 results for 2 requests"):
        coalescer.submit(["a", "b"])

"""Group commit for a synchronous engine: concurrent callers share engine batches.

``vllm.LLM`` must not be entered from two threads at once. A plain lock would make
callers queue one batch after another; instead, whoever finds the engine idle runs
every request queued so far in one batch, and the callers who arrived meanwhile
find their results ready. Eight concurrent chatbot requests then cost about two
engine batches instead of eight.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["BatchCoalescer"]

RequestT = TypeVar("RequestT")
ResultT = TypeVar("ResultT")


class _Ticket(Generic[RequestT, ResultT]):
    __slots__ = ("error", "requests", "results")

    def __init__(self, requests: Sequence[RequestT]) -> None:
        self.requests = requests
        self.results: list[ResultT] | None = None
        self.error: BaseException | None = None


class BatchCoalescer(Generic[RequestT, ResultT]):
    """Runs ``run_batch`` on the union of concurrent callers' requests, one batch at a time."""

    def __init__(self, run_batch: Callable[[list[RequestT]], list[ResultT]]) -> None:
        self._run_batch = run_batch
        self._condition = threading.Condition()
        self._queue: list[_Ticket[RequestT, ResultT]] = []
        self._busy = False
        self.batches_run = 0
        """How many engine batches ran: fewer than calls when callers overlapped."""

    def submit(self, requests: Sequence[RequestT]) -> list[ResultT]:
        ticket: _Ticket[RequestT, ResultT] = _Ticket(requests)
        with self._condition:
            self._queue.append(ticket)
            while self._busy and ticket.results is None and ticket.error is None:
                self._condition.wait()
            if ticket.results is None and ticket.error is None:
                # The engine is idle and this caller's requests are still queued: lead a batch.
                self._busy = True
                batch, self._queue = self._queue, []
            else:
                batch = []
        if batch:
            self._lead(batch)
        if ticket.error is not None:
            raise ticket.error
        assert ticket.results is not None
        return ticket.results

    def _lead(self, batch: list[_Ticket[RequestT, ResultT]]) -> None:
        flat = [request for ticket in batch for request in ticket.requests]
        try:
            results = self._run_batch(flat)
            if len(results) != len(flat):
                raise RuntimeError(f"engine returned {len(results)} results for {len(flat)} requests")
        except BaseException as err:  # every waiting caller must hear about it
            for ticket in batch:
                ticket.error = err
        else:
            offset = 0
            for ticket in batch:
                ticket.results = results[offset : offset + len(ticket.requests)]
                offset += len(ticket.requests)
        finally:
            with self._condition:
                self.batches_run += 1
                self._busy = False
                self._condition.notify_all()

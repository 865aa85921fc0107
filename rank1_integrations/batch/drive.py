"""The one driver every engine runs: work units in, judgment records out, as soon as they are final.

A bounded window of units is in flight at once (``ajudge`` calls): on the embedded
engine their requests join its running batch, on vLLM servers they keep every server
busy. Records come out in completion order. Only :func:`judge_unit` talks to the reranker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TypeVar

from rank1_integrations.batch.plan import WorkUnit
from rank1_integrations.batch.records import PairRecord, text_digest
from rank1_integrations.errors import InvalidInputError, Rank1Error
from rank1_integrations.reranker import Rank1Reranker

__all__ = ["iterate", "judge_unit", "judge_units"]

T = TypeVar("T")


async def judge_unit(
    reranker: Rank1Reranker, unit: WorkUnit, settings: str, emit: Callable[[list[PairRecord]], None]
) -> None:
    """Judge one unit and ``emit`` a record for each of its pairs, exactly once.

    A failed pair is a failed record (the reranker marks it unjudged). Bad input (an
    empty passage) refuses a whole call, so then each pair is judged on its own and only
    the bad ones fail. Moving to per-judgment streaming changes this function only.
    """
    digests = [text_digest(unit.query, passage) for passage in unit.passages]
    try:
        judgments = await reranker.ajudge(unit.query, unit.passages)
    except InvalidInputError as err:
        if len(unit.docids) == 1:
            emit([PairRecord.failure(unit.qid, unit.docids[0], err, settings=settings, digest=digests[0])])
            return
        singles = [WorkUnit(unit.qid, unit.query, (d,), (p,)) for d, p in zip(unit.docids, unit.passages, strict=True)]
        await asyncio.gather(*(judge_unit(reranker, single, settings, emit) for single in singles))
        return
    except Rank1Error as err:  # the call failed as a whole (e.g. the engine stopped)
        emit(
            [
                PairRecord.failure(unit.qid, docid, err, settings=settings, digest=digest)
                for docid, digest in zip(unit.docids, digests, strict=True)
            ]
        )
        return
    emit(
        [
            PairRecord.of(unit.qid, unit.docids[j.index], j, settings=settings, digest=digests[j.index])
            for j in judgments
        ]
    )


async def judge_units(
    reranker: Rank1Reranker, units: Iterable[WorkUnit], *, max_in_flight: int, settings: str
) -> AsyncIterator[list[PairRecord]]:
    """Records of every unit's pairs, in completion order, with at most about ``max_in_flight`` pairs in flight."""
    finished: asyncio.Queue[list[PairRecord] | Exception] = asyncio.Queue()
    running: set[asyncio.Task[None]] = set()
    source = iter(units)
    outstanding = 0
    exhausted = False

    async def run(unit: WorkUnit) -> None:
        try:
            await judge_unit(reranker, unit, settings, finished.put_nowait)
        except Exception as err:  # a bug: stop the run (the checkpoint keeps what was judged)
            finished.put_nowait(err)

    try:
        while True:
            while not exhausted and outstanding < max_in_flight:
                unit = next(source, None)
                if unit is None:
                    exhausted = True
                    break
                outstanding += len(unit.docids)
                task = asyncio.create_task(run(unit))
                running.add(task)
                task.add_done_callback(running.discard)
            if outstanding == 0:
                return
            records = await finished.get()
            if isinstance(records, Exception):
                raise records
            outstanding -= len(records)
            yield records
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)


def iterate(stream: AsyncIterator[T]) -> Iterator[T]:
    """Run an async iterator on a private event loop, one item at a time, for synchronous callers.

    Closing the iterator (or an error in the caller) closes the stream, which cancels
    whatever it still has in flight.
    """
    loop = asyncio.new_event_loop()
    try:
        while True:
            step = asyncio.ensure_future(stream.__anext__(), loop=loop)
            try:
                item = loop.run_until_complete(step)
            except StopAsyncIteration:
                return
            except BaseException:
                if not step.done():  # interrupted (Ctrl-C): let the stream clean up first
                    step.cancel()
                    with contextlib.suppress(BaseException):
                        loop.run_until_complete(step)
                raise
            yield item
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            loop.run_until_complete(aclose())
        loop.close()

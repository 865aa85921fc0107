"""Run by test_embedded_engine in a fresh process with vLLM's default multiprocessing engine.

On a GPU, vLLM runs the engine core in its own process unless told otherwise; the
embedded backend must drive that client the same way. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time

from rank1_integrations import Rank1Reranker
from tests.models.tiny_models import JOIN_PASSAGE, JOIN_QUERY, LEN_PASSAGE, LEN_QUERY, SORTED_PASSAGE
from tests.test_embedded_engine import _summary


def main(model_dir: str, budget: int) -> None:
    reranker = Rank1Reranker.from_vllm(
        model_dir,
        max_reasoning_tokens=budget,
        cache=False,
        enforce_eager=True,
        dtype="float32",
        max_model_len=1024,
        seed=0,
    )
    cases = [(LEN_QUERY, [LEN_PASSAGE, SORTED_PASSAGE]), (JOIN_QUERY, [JOIN_PASSAGE, LEN_PASSAGE])] * 3
    sequential = [_summary(reranker.judge(q, p)) for q, p in cases]

    threaded: list = [None] * len(cases)
    barrier = threading.Barrier(len(cases))

    def work(slot: int) -> None:
        barrier.wait()
        threaded[slot] = _summary(reranker.judge(*cases[slot]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)

    async def together() -> list:
        return await asyncio.gather(*(reranker.ajudge(q, p) for q, p in cases))

    gathered = [_summary(r) for r in asyncio.run(together())]

    engine = reranker.backend.llm.llm_engine  # type: ignore[attr-defined]

    async def cancel_midway() -> bool:
        task = asyncio.create_task(reranker.ajudge(LEN_QUERY, [f"{LEN_PASSAGE} {i}" for i in range(12)]))
        while not engine.has_unfinished_requests():
            await asyncio.sleep(0.001)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    cancelled = asyncio.run(cancel_midway())
    deadline = time.monotonic() + 60
    while engine.has_unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.01)
    print(
        json.dumps(
            {
                "engine_core_client": type(engine.engine_core).__name__,
                "threads_equal": threaded == sequential,
                "asyncio_equal": gathered == sequential,
                "shared_steps": reranker.backend.engine_stats.shared_steps,  # type: ignore[attr-defined]
                "cancelled": cancelled,
                "left_running": engine.has_unfinished_requests(),
                "after_cancel_judged": all(j.judged for j in reranker.judge(LEN_QUERY, [LEN_PASSAGE])),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))

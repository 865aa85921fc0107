"""Concurrency: N callers on one embedded reranker at once (a chatbot server) vs the same calls serialized.

Each caller judges its own query against its own K passages. Serialized: one call after
another (what a lock around the engine gives). Threads: N threads released together
by a barrier, each calling ``judge``. Asyncio: N tasks on one event loop, each awaiting
``ajudge``. The embedded backend feeds one engine continuously: each call's requests
are admitted together, and concurrent calls' requests join the running batch at the
next engine step. The tables count admissions, engine steps, and steps shared by
several calls.
Latency is measured from the moment all N requests are there (for the serialized
mode: as if they queued on a lock).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bench._common import (
    EngineProbe,
    Report,
    Sample,
    add_common_args,
    engine_llm,
    finish_args,
    interleaved,
    load_reranker,
    make_passages,
    make_queries,
    median,
    paired_ratio,
)

TARGET_SPEEDUP = 3.0
HEARTBEAT_S = 0.005


@dataclass
class Outcome:
    latencies: list[float]
    batch_sizes: list[int]
    loop_stall: float | None = None
    steps: int = 0
    shared_steps: int = 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--callers", default="8", help="concurrent callers, or a comma list (e.g. 2,4,8)")
    parser.add_argument("--per-caller", type=int, default=None, help="K passages per caller (default 10; 2 smollm2)")
    parser.add_argument(
        "--executor-workers",
        type=int,
        default=0,
        help="also run the asyncio mode with a default executor of this many threads "
        "(asyncio's own default is min(32, cores + 4); ajudge on the embedded engine waits in one of them)",
    )
    args = parser.parse_args(argv)
    if args.per_caller is None:
        args.per_caller = 2 if args.model == "smollm2" else 10
    args = finish_args(args)
    callers_list = [int(n) for n in str(args.callers).split(",")]
    report = Report("concurrency", "Concurrency: N callers on one embedded reranker vs serialized", args)

    reranker = load_reranker(args, cache=False)
    report.set_engine(engine_llm(reranker))
    backend: Any = reranker.backend
    probe = EngineProbe(backend.llm)
    for callers in callers_list:
        queries = make_queries(callers, seed=args.seed, tag=f"n{callers}-")
        work = [
            (query, make_passages(args.per_caller, args.passage_words, seed=args.seed, tag=f"n{callers}c{i}-"))
            for i, query in enumerate(queries)
        ]

        def counted(mode: Callable[[], Outcome]) -> Callable[[], Outcome]:
            def run() -> Outcome:
                steps, shared = backend.engine_stats.steps, backend.engine_stats.shared_steps
                outcome = mode()
                outcome.steps = backend.engine_stats.steps - steps
                outcome.shared_steps = backend.engine_stats.shared_steps - shared
                return outcome

            return run

        def one_call(work: list[tuple[str, list[str]]] = work) -> Outcome:
            probe.take()
            start = time.perf_counter()
            reranker.judge_many(work)
            latency = time.perf_counter() - start
            return Outcome([latency] * len(work), [len(call.prompts) for call in probe.take()])

        def serialized(work: list[tuple[str, list[str]]] = work) -> Outcome:
            probe.take()
            start, latencies = time.perf_counter(), []
            for query, passages in work:
                reranker.judge(query, passages)
                latencies.append(time.perf_counter() - start)
            return Outcome(latencies, [len(call.prompts) for call in probe.take()])

        def threads(work: list[tuple[str, list[str]]] = work) -> Outcome:
            barrier = threading.Barrier(len(work) + 1)
            latencies = [0.0] * len(work)
            errors: list[BaseException] = []
            start = [0.0]

            def call(index: int) -> None:
                barrier.wait()
                try:
                    reranker.judge(*work[index])
                except BaseException as err:  # reported after the join
                    errors.append(err)
                latencies[index] = time.perf_counter() - start[0]

            pool = [threading.Thread(target=call, args=(i,)) for i in range(len(work))]
            for thread in pool:
                thread.start()
            probe.take()
            start[0] = time.perf_counter()
            barrier.wait()
            for thread in pool:
                thread.join()
            if errors:
                raise errors[0]
            return Outcome(latencies, [len(call.prompts) for call in probe.take()])

        def tasks(work: list[tuple[str, list[str]]] = work, workers: int = 0) -> Outcome:
            stalls: list[float] = []

            async def heartbeat(done: asyncio.Event) -> None:
                loop = asyncio.get_running_loop()
                while not done.is_set():
                    tick = loop.time()
                    await asyncio.sleep(HEARTBEAT_S)
                    stalls.append(loop.time() - tick - HEARTBEAT_S)

            async def run() -> list[float]:
                if workers:
                    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(workers))
                done = asyncio.Event()
                beat = asyncio.create_task(heartbeat(done))
                start = time.perf_counter()

                async def one(question: str, texts: list[str]) -> float:
                    await reranker.ajudge(question, texts)
                    return time.perf_counter() - start

                try:
                    return list(await asyncio.gather(*(one(q, p) for q, p in work)))
                finally:
                    done.set()
                    await beat

            probe.take()
            latencies = asyncio.run(run())
            return Outcome(latencies, [len(call.prompts) for call in probe.take()], max(stalls, default=0.0))

        names = [
            "serialized",
            f"{callers} threads (judge)",
            f"{callers} asyncio tasks (ajudge)",
            "one judge_many call (ideal coalescing)",
        ]

        def extra(name: str, result: Outcome) -> dict[str, float]:
            return {
                "batches": float(len(result.batch_sizes)),
                "latency_mean": sum(result.latencies) / len(result.latencies),
                "latency_max": max(result.latencies),
                "loop_stall": result.loop_stall if result.loop_stall is not None else math.nan,
                "steps": float(result.steps),
                "shared_steps": float(result.shared_steps),
            }

        print(f"{callers} callers x {args.per_caller} passages", flush=True)
        variants: dict[str, Callable[[], Outcome]] = {
            names[0]: counted(serialized),
            names[1]: counted(threads),
            names[2]: counted(tasks),
            names[3]: counted(one_call),
        }
        if args.executor_workers:
            names.append(f"{callers} asyncio tasks, {args.executor_workers}-thread executor")
            variants[names[-1]] = counted(functools.partial(tasks, work, args.executor_workers))
        samples = interleaved(variants, runs=args.runs, warmup=args.warmup, extra=extra)
        total = callers * args.per_caller
        rows = []
        for name in names:
            runs: list[Sample] = samples[name]
            wall = median([s.seconds for s in runs])
            speedup = paired_ratio(samples[names[0]], runs)
            stall = median([s.extra["loop_stall"] for s in runs])
            rows.append(
                [
                    name,
                    f"{wall:.3f}",
                    f"{min(s.seconds for s in runs):.3f}-{max(s.seconds for s in runs):.3f}",
                    f"{total / wall:.1f}",
                    f"{speedup:.2f}x",
                    f"{median([s.extra['latency_mean'] for s in runs]):.3f}",
                    f"{median([s.extra['latency_max'] for s in runs]):.3f}",
                    f"{median([s.extra['batches'] for s in runs]):.0f}",
                    " ".join(str(n) for n in runs[-1].result.batch_sizes),
                    f"{median([s.extra['steps'] for s in runs]):.0f}",
                    f"{median([s.extra['shared_steps'] for s in runs]):.0f}",
                    "-" if math.isnan(stall) else f"{stall * 1000:.0f}",
                    f"{runs[-1].rss_mib:.0f}",
                    f"{max(s.peak_rss_mib for s in runs):.0f}",
                ]
            )
            if name not in (names[0], names[3]) and callers == 8:
                report.check(
                    f"{name}: throughput >= {TARGET_SPEEDUP:.0f}x serialized",
                    speedup >= TARGET_SPEEDUP,
                    f"{speedup:.2f}x",
                )
        report.table(
            f"{callers} callers x {args.per_caller} passages, budget {args.budget}, median of {args.runs} runs",
            [
                "mode",
                "median s",
                "min-max s",
                "passages/s",
                "throughput vs serialized",
                "mean latency s",
                "max latency s",
                "admissions",
                "admitted sizes (last run)",
                "engine steps",
                "shared steps",
                "max loop stall ms",
                "RSS MiB",
                "peak RSS MiB",
            ],
            rows,
            note="'throughput vs serialized' is the median over rounds of serialized wall / this mode's wall. "
            "Every call runs a reasoning batch and a forced-answer batch, so serialized admits "
            f"{2 * callers} batches one after another; 'one judge_many call' puts every caller's passages in "
            "one call (2 batches): the most any sharing could give on this engine. 'admissions' counts the "
            "groups of requests added to the running engine ('admitted sizes': prompts in each, in order); "
            "'shared steps' the engine steps that advanced the requests of more than one call. "
            f"'max loop stall' (asyncio modes): the longest a {HEARTBEAT_S * 1000:.0f} ms heartbeat task on the "
            "event loop overslept (the reranker's own work on the loop, plus GIL contention with the engine thread).",
        )
        report.data.setdefault("speedups", {})[str(callers)] = {
            name: paired_ratio(samples[names[0]], samples[name]) for name in names[1:]
        }
    report.write()


if __name__ == "__main__":
    main()

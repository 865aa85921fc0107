"""Repeats: the result cache warm vs cold, for ``MemoryCache`` and ``DiskCache``.

Each run takes fresh passages (so the cold call really reasons) and a fresh cache, then:
cold (engine work, judgments stored), warm (the same call again: every passage from the
cache, no engine batch), and for the disk cache also reopened (a new ``DiskCache`` on the
same SQLite file, as after a restart) and half-warm (half the passages known, half new).
One engine serves every cache: each reranker wraps the same backend.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench._common import (
    Report,
    Sample,
    add_common_args,
    engine_llm,
    finish_args,
    load_reranker,
    make_passages,
    make_queries,
    median,
    timed,
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    args = finish_args(parser.parse_args(argv))
    report = Report("cache_repeat", "Repeats: result cache warm vs cold", args)

    from rank1_integrations import Rank1Reranker
    from rank1_integrations.cache import DiskCache, JudgmentCache, MemoryCache

    base = load_reranker(args, cache=False)
    report.set_engine(engine_llm(base))
    backend: Any = base.backend
    query = make_queries(1, seed=args.seed)[0]
    folder = Path(tempfile.mkdtemp(prefix="rank1-bench-cache-"))
    opened: list[DiskCache] = []

    def disk(run: int) -> DiskCache:
        cache = DiskCache(folder / f"run{run}.sqlite")
        opened.append(cache)
        return cache

    factories: dict[str, Callable[[int], JudgmentCache]] = {"MemoryCache": lambda run: MemoryCache(), "DiskCache": disk}
    phases: dict[tuple[str, str], list[Sample]] = {}
    all_same = True

    def record(kind: str, phase: str, reranker: Rank1Reranker, passages: list[str]) -> list[Any]:
        before = backend.engine_stats.admissions
        sample = timed(lambda: reranker.judge(query, passages))
        sample.extra["batches"] = float(backend.engine_stats.admissions - before)
        phases.setdefault((kind, phase), []).append(sample)
        print(f"  {kind:<12} {phase:<22} {sample.seconds:8.4f} s", flush=True)
        judgments: list[Any] = sample.result
        return judgments

    for run in range(args.warmup + args.runs):
        warm_up = run < args.warmup
        for kind, factory in factories.items():
            passages = make_passages(args.passages, args.passage_words, seed=args.seed, tag=f"{kind}{run}-")
            reranker = Rank1Reranker(backend, max_reasoning_tokens=args.budget, cache=factory(run))
            cold = record(kind, "cold", reranker, passages)
            warm = record(kind, "warm repeat", reranker, passages)
            all_same = all_same and cold == warm
            if kind == "DiskCache":
                reopened = Rank1Reranker(backend, max_reasoning_tokens=args.budget, cache=disk(run))
                again = record(kind, "reopened file, warm", reranker=reopened, passages=passages)
                all_same = all_same and again == cold
            half = passages[: len(passages) // 2] + make_passages(
                len(passages) - len(passages) // 2, args.passage_words, seed=args.seed, tag=f"{kind}{run}-new-"
            )
            record(kind, "half warm, half new", reranker, half)
        if warm_up:
            phases.clear()
    for cache in opened:
        cache.close()

    rows = []
    for (kind, phase), runs in phases.items():
        cold_s = median([s.seconds for s in phases[(kind, "cold")]])
        wall = median([s.seconds for s in runs])
        rows.append(
            [
                kind,
                phase,
                f"{wall * 1000:.1f}",
                f"{min(s.seconds for s in runs) * 1000:.1f}-{max(s.seconds for s in runs) * 1000:.1f}",
                f"{cold_s / wall:.1f}x" if phase != "cold" else "1x",
                f"{median([s.extra['batches'] for s in runs]):.0f}",
                f"{runs[-1].rss_mib:.0f}",
                f"{max(s.peak_rss_mib for s in runs):.0f}",
            ]
        )
    report.table(
        f"{args.passages} passages, budget {args.budget}, median of {args.runs} runs",
        ["cache", "call", "median ms", "min-max ms", "speed-up vs cold", "engine batches", "RSS MiB", "peak RSS MiB"],
        rows,
        note="cold: fresh passages, empty cache. warm repeat: the same call again on the same reranker. "
        "reopened: a new DiskCache on the same file. half warm: half the passages seen, half new.",
    )
    report.check("warm judgments equal cold ones", all_same)
    warm_batches = [
        sample.extra["batches"]
        for (_, phase), runs in phases.items()
        if phase in ("warm repeat", "reopened file, warm")
        for sample in runs
    ]
    report.check("fully warm calls run no engine batch", not any(warm_batches), f"{len(warm_batches)} calls")
    report.write()


if __name__ == "__main__":
    main()

"""Many queries: ``judge_many`` over Q queries x P passages in one batch vs Q separate ``judge`` calls.

Each query has its own P passages. ``judge_many`` sends all Q x P prompts as one engine
batch (plus one forced-answer batch); the loop sends Q batches (plus Q forced ones).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from bench._common import (
    Report,
    add_common_args,
    engine_llm,
    finish_args,
    interleaved,
    load_reranker,
    make_passages,
    make_queries,
    median,
    paired_ratio,
    stat_headers,
    stat_row,
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--queries", type=int, default=3, help="Q: number of queries")
    args = parser.parse_args(argv)
    if args.budget is None and args.model == "random":
        args.budget = 16  # a small budget keeps Q x P prompts quick on 2 CPU cores
    if args.passages is None and args.model == "smollm2":
        args.passages = 4
    args = finish_args(args)
    report = Report("many_queries", "Many queries: judge_many vs separate judge calls", args)

    reranker = load_reranker(args, cache=False)
    report.set_engine(engine_llm(reranker))
    backend: Any = reranker.backend
    queries = make_queries(args.queries, seed=args.seed)
    batches = [
        (query, make_passages(args.passages, args.passage_words, seed=args.seed, tag=f"q{i}-"))
        for i, query in enumerate(queries)
    ]
    total = args.queries * args.passages

    def counted(fn: Any) -> Any:
        def run() -> tuple[Any, int]:
            before = backend.engine_stats.admissions
            result = fn()
            return result, backend.engine_stats.admissions - before

        return run

    one_batch = counted(lambda: reranker.judge_many(batches))
    separate = counted(lambda: [reranker.judge(query, passages) for query, passages in batches])
    names = (f"judge_many ({args.queries} x {args.passages})", f"{args.queries} x judge ({args.passages})")

    def extra(name: str, result: Any) -> dict[str, float]:
        return {"engine_batches": float(result[1])}

    samples = interleaved({names[0]: one_batch, names[1]: separate}, runs=args.runs, warmup=args.warmup, extra=extra)
    many_s, loop_s = samples[names[0]], samples[names[1]]
    rows = []
    for name, runs in ((names[0], many_s), (names[1], loop_s)):
        rows.append([*stat_row(name, runs, work=total), f"{median([s.extra['engine_batches'] for s in runs]):.0f}"])
    report.table(
        f"{args.queries} queries x {args.passages} passages, budget {args.budget}, median of {args.runs} runs",
        [*stat_headers(work=True), "engine batches"],
        rows,
    )
    ratio = paired_ratio(loop_s, many_s)
    report.table(
        "Speed-up of one batch",
        ["measure", "value"],
        [["wall ratio separate / judge_many (median of paired runs)", f"{ratio:.2f}x"]],
    )
    many_j = many_s[-1].result[0]
    loop_j = loop_s[-1].result[0]
    diffs = [
        abs(a.score - b.score)
        for js_a, js_b in zip(many_j, loop_j, strict=True)
        for a, b in zip(js_a, js_b, strict=True)
        if a.score is not None and b.score is not None
    ]
    report.check(
        "same judgments either way",
        max(diffs, default=0.0) < 1e-3,
        f"max score difference {max(diffs, default=0.0):.2e} (batch composition may move scores slightly)",
    )
    report.data["ratio"] = ratio
    report.write()


if __name__ == "__main__":
    main()

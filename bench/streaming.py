"""Streamed judgments: time to the first (and the k-th) judgment against the batch call's wall time.

Each round judges fresh passages twice on the same engine, interleaved: once with ``judge``
(the caller sees everything when the slowest passage is done) and once with ``judge_iter``
(each judgment as soon as it is final), recording when each judgment arrived. Reasoning
lengths must differ between passages for streaming to matter: the script prints them. Use
an even number of rounds (the order alternates) and prefix caching off: both variants of a
round judge the same passages, so with it on the second reuses the first's KV blocks.

    python -m bench.streaming --model smollm2 --budget 96 --passages 8 --runs 4 --engine-arg enable_prefix_caching=false
    python -m bench.streaming                           # the tiny random model (engine overhead)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from bench._common import (
    Report,
    add_common_args,
    engine_llm,
    finish_args,
    load_reranker,
    make_passages,
    make_queries,
    median,
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    args = finish_args(parser.parse_args(argv))
    report = Report("streaming", "Streamed judgments: first and k-th judgment vs the batch call", args)
    reranker = load_reranker(args, cache=False)
    report.set_engine(engine_llm(reranker))
    query = make_queries(1, seed=args.seed)[0]

    batch_walls: list[float] = []
    stream_walls: list[float] = []
    arrivals: list[list[float]] = []  # per round: seconds from the call to each judgment, in arrival order
    lengths: list[int] = []
    same = True
    for run in range(args.warmup + args.runs):
        passages = make_passages(args.passages, args.passage_words, seed=args.seed, tag=f"s{run}-")
        order = ["batch", "stream"] if run % 2 == 0 else ["stream", "batch"]
        results = {}
        for variant in order:
            started = time.perf_counter()
            if variant == "batch":
                results["batch"] = reranker.judge(query, passages)
                wall = time.perf_counter() - started
                seen = []
            else:
                seen, got = [], []
                for judgment in reranker.judge_iter(query, passages):
                    seen.append(time.perf_counter() - started)
                    got.append(judgment)
                wall = time.perf_counter() - started
                results["stream"] = sorted(got, key=lambda j: j.index)
            if run < args.warmup:
                continue
            (batch_walls if variant == "batch" else stream_walls).append(wall)
            if variant == "stream":
                arrivals.append(seen)
            print(f"  run {run + 1 - args.warmup}/{args.runs}: {variant:<7} {wall:8.3f} s", flush=True)
        same = same and [(j.score, j.reasoning) for j in results["batch"]] == [
            (j.score, j.reasoning) for j in results["stream"]
        ]
        if run >= args.warmup:
            lengths += [j.reasoning_tokens for j in results["stream"]]

    batch = median(batch_walls)
    count = args.passages
    rows = []
    for k in sorted({1, max(1, count // 4), max(1, count // 2), count}):
        at_k = median([times[k - 1] for times in arrivals])
        rows.append([f"judgment {k} of {count}", f"{at_k:.3f}", f"{at_k / batch:.2f}"])
    rows.append(["whole stream", f"{median(stream_walls):.3f}", f"{median(stream_walls) / batch:.3f}"])
    rows.append(["batch judge (all at once)", f"{batch:.3f}", "1.00"])
    report.table(
        f"Time from the call ({args.passages} passages, budget {args.budget}, {args.runs} rounds, medians)",
        ["arrival", "seconds", "x batch wall"],
        rows,
        note=f"reasoning tokens per passage: min {min(lengths)}, median {median(lengths):.0f}, max {max(lengths)}, "
        f"forced answers {sum(1 for n in lengths if n >= args.budget)} of {len(lengths)}",
    )
    first = median([times[0] for times in arrivals]) / batch
    report.check("first judgment at <= 0.3x the batch wall time", first <= 0.3, f"{first:.2f}x")
    whole = median(stream_walls) / batch
    report.check("whole stream no slower than the batch (<= 1.02x)", whole <= 1.02, f"{whole:.3f}x")
    report.check("stream and batch give identical scores and reasoning", same)
    report.write()


if __name__ == "__main__":
    main()

"""Reasoning effort: passages/s and generated tokens for full reasoning, no-think and adaptive.

One engine, one workload (one query, ``--passages`` synthetic passages), every effort level
on it, interleaved rounds (``--runs``). Then adaptive's share of passages reasoned as its
knobs move (``--margins``, ``--top-k``), one run each.

    python -m bench.effort --model random --budget 256 --passages 16
    python -m bench.effort --model smollm2 --budget 128 --passages 16

Target (issue 22): no-think >= 20x the passages/s of full reasoning where reasoning runs to a
256-token budget. SmolLM2 stops on its own after a few dozen tokens: there the ratio is
reported with the tokens generated.
"""

from __future__ import annotations

import argparse
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
    median_seconds,
    stat_headers,
    stat_row,
)

EFFORTS = ("full", "none", "adaptive")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--margins", default="0,0.05,0.1,0.2,0.3,0.5", help="adaptive_margin values to sweep")
    parser.add_argument("--top-k", type=int, default=None, help="adaptive_top_k for the sweep (default: none)")
    args = finish_args(parser.parse_args(argv))
    report = Report("effort", "Reasoning effort: full, none (no-think), adaptive", args)
    reranker = load_reranker(args)
    report.set_engine(engine_llm(reranker))
    query = make_queries(1, seed=args.seed, tag="effort-")[0]
    passages = make_passages(args.passages, args.passage_words, seed=args.seed, tag="effort-")

    def judge(effort: str, **knobs: Any) -> Any:
        return reranker.judge(query, passages, reasoning_effort=effort, **knobs)

    def counts(_: str, judgments: Any) -> dict[str, float]:
        return {
            "tokens": float(sum(j.reasoning_tokens for j in judgments)),
            "reasoned": float(sum(j.reasoned for j in judgments)),
            "forced": float(sum(j.forced for j in judgments)),
        }

    samples = interleaved(
        {effort: (lambda e=effort: judge(e)) for effort in EFFORTS},
        runs=args.runs,
        warmup=args.warmup,
        extra=counts,
    )
    rows = []
    for effort in EFFORTS:
        extra = samples[effort][-1].extra
        rows.append(
            [
                *stat_row(effort, samples[effort], work=len(passages)),
                f"{extra['tokens'] / len(passages):.1f}",
                f"{int(extra['reasoned'])}/{len(passages)}",
                f"{int(extra['forced'])}",
            ]
        )
    headers = [*stat_headers(work=True), "generated tokens / passage", "reasoned", "forced"]
    report.table(f"{len(passages)} passages, budget {args.budget}", headers, rows)
    speedup = median_seconds(samples["full"]) / median_seconds(samples["none"])
    full_tokens = samples["full"][-1].extra["tokens"] / len(passages)
    report.note(
        f"no-think vs full reasoning: {speedup:.1f}x the passages/s; full reasoning generated "
        f"{full_tokens:.1f} tokens per passage (budget {args.budget}), no-think 0."
    )
    if args.budget >= 256 and full_tokens >= 0.9 * args.budget:  # the target: a 256-token budget used up
        report.check("no-think >= 20x full where reasoning runs to its budget", speedup >= 20, f"{speedup:.1f}x")
    report.check(
        "no-think generates no tokens", samples["none"][-1].extra["tokens"] == 0, f"{samples['none'][-1].extra}"
    )

    no_think = {j.index: j.score for j in judge("none")}
    sweep = []
    for margin in [float(m) for m in args.margins.split(",") if m.strip()]:
        sample = interleaved(
            {"adaptive": lambda m=margin: judge("adaptive", adaptive_margin=m, adaptive_top_k=args.top_k)},
            runs=1,
            warmup=0,
            extra=counts,
        )["adaptive"][0]
        uncertain = sum(abs(score - 0.5) <= margin for score in no_think.values() if score is not None)
        sweep.append(
            [
                f"{margin:g}",
                f"{int(sample.extra['reasoned'])}/{len(passages)}",
                f"{uncertain}",
                f"{sample.extra['tokens'] / len(passages):.1f}",
                f"{sample.seconds:.3f}",
                f"{len(passages) / sample.seconds:.1f}",
            ]
        )
    report.table(
        f"adaptive as its margin moves (adaptive_top_k={args.top_k})",
        ["margin", "reasoned", "no-think scores within the margin of 0.5", "tokens / passage", "s", "passages/s"],
        sweep,
        note="Rows: one run each. Reasoned = the no-think scores within the margin of the cut "
        "(adaptive_center 0.5), plus the top k when adaptive_top_k is set.",
    )
    report.data["no_think_speedup"] = speedup
    report.data["median_seconds"] = {e: median([s.seconds for s in samples[e]]) for e in EFFORTS}
    report.write()


if __name__ == "__main__":
    main()

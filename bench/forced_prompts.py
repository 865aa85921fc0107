"""Building forced-answer prompts: the step that turns completions into forced-answer requests.

Generates the reasoning batch once on the engine (untimed), then times ``JudgingRun.advance``
on those real completions: for every passage whose reasoning ran out of budget it builds the
forced prompt ``prompt + "\\n" + reasoning + "\\n</think>"`` as token ids. The script uses only
``Rank1Reranker``, ``PromptBuilder`` and ``JudgingRun``, whose signatures this change kept, so a
before/after comparison is the same script run in two checkouts (see docs/benchmarks.md).

    python -m bench.forced_prompts [--model random|smollm2] [--runs 30]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time

from bench._common import Report, add_common_args, finish_args, load_reranker, make_passages, make_queries


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    args = finish_args(parser.parse_args(argv))
    report = Report("forced_prompts", "Building forced-answer prompts (JudgingRun.advance)", args)

    from rank1_integrations.judging import JudgingRun
    from rank1_integrations.prompting import FORCED_ANSWER_MARGIN, PromptBuilder

    reranker = load_reranker(args, cache=False)
    query = make_queries(1, seed=args.seed)[0]
    passages = make_passages(args.passages, args.passage_words, seed=args.seed)
    builder = PromptBuilder(
        reranker.backend.tokenizer,
        template=reranker.template,
        max_prompt_tokens=reranker.context_size - reranker.max_reasoning_tokens - FORCED_ANSWER_MARGIN,
    )
    prompts = [builder.build(query, passage) for passage in passages]

    def new_run() -> JudgingRun:
        return JudgingRun(prompts, builder, label_token_ids=reranker.label_token_ids, max_reasoning_tokens=args.budget)

    completions = reranker.backend.complete(new_run().start())
    seconds, forced = [], []
    for run_number in range(args.warmup + args.runs):
        run = new_run()
        run.start()
        started = time.perf_counter()
        forced = run.advance(completions)
        if run_number >= args.warmup:
            seconds.append(time.perf_counter() - started)
    prompt_tokens = sum(len(p.token_ids) for p in prompts)
    forced_tokens = sum(len(r.prompt_token_ids) for r in forced)
    median_ms = statistics.median(seconds) * 1000
    report.table(
        "Forced-prompt building per call",
        ["passages", "forced", "prompt tokens", "forced prompt tokens", "median ms", "min-max ms", "ms per forced"],
        [
            [
                len(prompts),
                len(forced),
                prompt_tokens,
                forced_tokens,
                f"{median_ms:.2f}",
                f"{min(seconds) * 1000:.2f}-{max(seconds) * 1000:.2f}",
                f"{median_ms / max(len(forced), 1):.3f}",
            ]
        ],
        note=f"{args.runs} timed runs after {args.warmup} warm-up; budget {args.budget}.",
    )
    # Which forced prompts were built, to compare two checkouts' outputs as well as their times.
    report.data["forced_prompt_lengths"] = [len(r.prompt_token_ids) for r in forced]
    report.data["forced_prompt_ids_sha256"] = [
        hashlib.sha256(str(r.prompt_token_ids).encode()).hexdigest()[:16] for r in forced
    ]
    report.write()


if __name__ == "__main__":
    main()

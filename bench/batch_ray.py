"""Batch runner on real engines: one embedded engine in-process vs Ray Data with 1 and 2 embedded-engine actors.

Each variant reranks the same synthetic run (``--queries`` x ``--passages`` pairs) in a
fresh process with a fresh judgments file: ``rerank_run`` with the model itself, then
with a ``RayEngine`` of 1 and of 2 actors on a local Ray instance (``--cpus-per-engine``
each). Reported: the judging time, the time to the first judgments (Ray starts its
actors, each loading its own engine, in that time) and the throughput after it.

On a machine with one accelerator per actor the actors' throughputs add up; on the 2
CPU cores of this project's machines two engines share the same cores, so expect no
gain there: the point of the CPU figure is that it is measured, not assumed.

    python -m bench.batch_ray                      # random tiny model, CPU
    python -m bench.batch_ray --model smollm2 --queries 8 --passages 4
    python -m bench.batch_ray --model jhu-clsp/rank1-7b --gpus-per-engine 1    # a GPU node
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from bench._common import CACHE, Report, add_common_args, engine_kwargs, finish_args, model_path, run_child
from bench.batch_scaling import synthetic


def child(args: argparse.Namespace, variant: str) -> None:
    """One variant in this (fresh) process; the last stdout line is its JSON."""
    from rank1_integrations.batch import RayEngine, rerank_run
    from rank1_integrations.settings import Rank1Settings

    paths = {name: Path(getattr(args, name)) for name in ("run", "corpus", "queries")}
    rerankers = Rank1Settings(
        model=model_path(args.model), max_reasoning_tokens=args.budget, engine_args=engine_kwargs(args)
    )
    engine = (
        rerankers
        if variant == "in-process"
        else RayEngine(
            rerankers,
            num_engines=int(variant.split()[1]),
            cpus_per_engine=args.cpus_per_engine,
            gpus_per_engine=args.gpus_per_engine,
            batch_size=args.batch_size,
        )
    )
    work = CACHE / "batch_ray" / variant.replace(" ", "-")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result = rerank_run(
        paths["run"],
        corpus=paths["corpus"],
        queries=paths["queries"],
        out=work / "out.trec",
        reasoning=work / "judgments.jsonl",
        engine=engine,
        depth=args.passages,
        progress=False,
    )
    summary = result.summary
    scores = {f"{r['qid']}/{r['docid']}": r["score"] for r in map(json.loads, result.reasoning.open())}
    print(json.dumps({**vars(summary), "scores": scores}), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--queries", type=int, default=20, help="queries in the synthetic run")
    parser.add_argument("--cpus-per-engine", type=float, default=1.0)
    parser.add_argument("--gpus-per-engine", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per Ray batch")
    parser.add_argument("--variants", default="in-process,ray 1,ray 2")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    for name in ("run", "corpus", "queries-file"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.passages is None:
        args.passages = 8
    args = finish_args(args)
    if args.child:
        args.queries = args.queries_file
        child(args, args.child)
        return
    report = Report("batch_ray", "Batch runner: in-process engine vs Ray Data with 1 and 2 engine actors", args)
    pairs = args.queries * args.passages
    paths = synthetic(CACHE / "batch_ray" / f"data-{pairs}-{args.passages}", pairs, args.passages, 600, args.seed)
    passed = ["--model", args.model, "--budget", str(args.budget), "--passages", str(args.passages)]
    passed += ["--max-model-len", str(args.max_model_len), "--kv-cache-gib", str(args.kv_cache_gib)]
    passed += ["--seed", str(args.seed), "--batch-size", str(args.batch_size)]
    passed += ["--cpus-per-engine", str(args.cpus_per_engine)]
    if args.gpus_per_engine is not None:
        passed += ["--gpus-per-engine", str(args.gpus_per_engine)]
    for item in args.engine_arg:
        passed += ["--engine-arg", item]
    passed += ["--run", str(paths["run"]), "--corpus", str(paths["corpus"]), "--queries-file", str(paths["queries"])]
    results = {}
    for variant in args.variants.split(","):
        results[variant] = run_child("bench.batch_ray", [*passed, "--child", variant])
    rows = []
    reference = next(iter(results.values()))["scores"]
    for variant, result in results.items():
        after = result["first_judgment_after"] or 0.0
        steady = result["seconds"] - after
        rows.append(
            [
                variant,
                result["judged_now"],
                f"{result['seconds']:.1f}",
                f"{after:.1f}",
                f"{result['judged_now'] / result['seconds']:.2f}",
                f"{result['judged_now'] / steady:.2f}" if steady > 0 else "-",
            ]
        )
        diffs = [abs(result["scores"][key] - value) for key, value in reference.items()]
        report.check(f"{variant}: same scores as the first variant (1e-4)", max(diffs) < 1e-4, f"max {max(diffs):.1e}")
    report.table(
        f"{pairs} pairs ({args.queries} queries x {args.passages}), budget {args.budget}, one run each",
        ["variant", "pairs", "judging s", "first judgments after s", "pairs/s overall", "pairs/s after the first"],
        rows,
        note="Each variant in a fresh process. 'pairs/s after the first' leaves out the start-up (for Ray: the "
        "local instance's actors, each importing vLLM and loading its own engine).",
    )
    report.write()


if __name__ == "__main__":
    main()

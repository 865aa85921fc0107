"""Evaluation: rerank a TREC run with rank1 and score it against qrels (nDCG@10, MRR@10, Recall) with ir-measures.

Inputs are the usual formats: a TREC run (``qid Q0 docid rank score tag``, e.g. BM25 top-100
from Pyserini), TREC qrels, and BEIR-style ``corpus.jsonl`` (``_id``, ``title``, ``text``)
and ``queries.jsonl`` (``_id``, ``text``). The batch runner (``rerank_run``, the library
behind ``rank1 run``; see ``docs/batch.md``) judges the top ``--depth`` documents
of every query, reorders them by rank1's score (ties keep the first-stage order; documents
below the depth keep theirs), writes the reranked TREC run and rank1's judgments (score,
verdict, reasoning for every pair), and both runs are scored with ir-measures. The
judgments file is a checkpoint: an interrupted or repeated run does not reason again.

To check the paper's numbers on a GPU (BEIR with the paper's dataset prompts)::

    python cookbook/07_evaluation.py --model jhu-clsp/rank1-7b --run bm25.trec-covid.run \\
        --qrels trec-covid/qrels/test.qrels --corpus trec-covid/corpus.jsonl \\
        --queries trec-covid/queries.jsonl --depth 100 --template TRECCOVID

or the same with ``rank1 run`` (``--eval`` for the qrels), which also runs on vLLM
servers and Ray. Without arguments it uses the tiny set shipped in ``cookbook/data``
(stdlib docstrings; see ``data/make_tiny.py``). With the offline stand-in (SmolLM2, not
rank1) the reranked numbers say nothing about rank1; they show the pipeline working.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from _shared import note, optional, parser, resolve

from rank1_integrations.batch import rerank_run

DATA = Path(__file__).resolve().parent / "data"
MEASURES = "nDCG@10 RR@10 R@5 R@10"


def first_queries(run: Path, count: int, into: Path) -> Path:
    """The run's first ``count`` queries (their lines are together in a TREC run), for smoke runs."""
    kept: list[str] = []
    with run.open() as lines, into.open("w") as out:
        for line in lines:
            qid = line.split(maxsplit=1)[0] if line.strip() else None
            if qid is not None and qid not in kept:
                if len(kept) == count:
                    break
                kept.append(qid)
            out.write(line)
    return into


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=DATA / "tiny.run", help="first-stage TREC run to rerank")
    p.add_argument("--qrels", type=Path, default=DATA / "tiny.qrels")
    p.add_argument("--corpus", type=Path, default=DATA / "tiny_corpus.jsonl")
    p.add_argument("--queries", type=Path, default=DATA / "tiny_queries.jsonl")
    p.add_argument("--depth", type=int, default=10, help="rerank each query's top N (the paper: 100)")
    p.add_argument("--max-queries", type=int, help="only the first N queries of the run (smoke runs)")
    p.add_argument("--template", help="relevance template: FILL_QUERY_HERE text or a DATASET_PROMPTS name")
    p.add_argument("--measures", default=MEASURES, help=f"ir-measures names (default {MEASURES!r})")
    p.add_argument("--output", type=Path, default=Path("rank1.run"), help="the reranked TREC run to write")
    p.add_argument(
        "--judgments", type=Path, help="rank1's judgments (JSONL; the checkpoint), default: the output + .jsonl"
    )
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    args = p.parse_args(argv)
    optional("ir_measures", "ir-measures")
    judgments = args.judgments or args.output.with_name(args.output.name + ".jsonl")

    setup = resolve(args)
    reranker = setup.reranker(template=args.template, cache=False)
    with tempfile.TemporaryDirectory() as scratch:
        run = first_queries(args.run, args.max_queries, Path(scratch) / "run") if args.max_queries else args.run
        print(f"\nReranking the top {args.depth} of each query of {args.run.name} ...", flush=True)
        result = rerank_run(
            run,
            corpus=args.corpus,
            queries=args.queries,
            out=args.output,
            reasoning=judgments,
            engine=reranker,
            depth=args.depth,
            qrels=args.qrels,
            measures=args.measures.split(),
            progress=args.progress or None,
            say=note,
        )
    assert result.metrics is not None
    before, after = result.metrics["first stage"], result.metrics["rank1"]
    print(f"{result.summary.pairs} pairs judged; wrote {args.output} and {judgments}")
    print(f"\n{'measure':<10} {'first stage':>12} {'rank1':>8} {'change':>8}")
    for name in before:
        print(f"{name:<10} {before[name]:>12.4f} {after[name]:>8.4f} {after[name] - before[name]:>+8.4f}")
    if setup.model.fallback:
        print("\n(The reranked column is SmolLM2-135M-Instruct's, not rank1's: it shows the pipeline working.)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

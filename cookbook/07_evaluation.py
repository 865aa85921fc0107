"""Evaluation: rerank a TREC run with rank1 and score it against qrels (nDCG@10, MRR@10, Recall) with ir-measures.

Inputs are the usual formats: a TREC run (``qid Q0 docid rank score tag``, e.g. BM25 top-100
from Pyserini), TREC qrels, and BEIR-style ``corpus.jsonl`` (``_id``, ``title``, ``text``)
and ``queries.jsonl`` (``_id``, ``text``). The top ``--depth`` documents of every query are
judged in one engine batch (as rank1's authors ran it), reordered by rank1's score (ties
keep the first-stage order; documents below the depth keep theirs), written as a TREC run,
and both runs are scored with ir-measures (pytrec_eval). ``--judgments`` writes rank1's
score, verdict and reasoning for every pair; ``--cache`` keeps judgments on disk, so a rerun
(other measures, an interrupted run) does not reason again.

To check the paper's numbers on a GPU (BEIR with the paper's dataset prompts)::

    python cookbook/07_evaluation.py --model jhu-clsp/rank1-7b --run bm25.trec-covid.run \\
        --qrels trec-covid/qrels/test.qrels --corpus trec-covid/corpus.jsonl \\
        --queries trec-covid/queries.jsonl --depth 100 --template TRECCOVID

Without arguments it uses the tiny set shipped in ``cookbook/data`` (stdlib docstrings; see
``data/make_tiny.py``). With the offline stand-in (SmolLM2, not rank1) the reranked numbers
say nothing about rank1; they show the pipeline working.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _shared import optional, parser, resolve

from rank1_integrations import DiskCache

DATA = Path(__file__).resolve().parent / "data"
MEASURES = "nDCG@10 RR@10 R@5 R@10"


def read_jsonl(path: Path) -> dict[str, dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        return {str(r["_id"]): r for r in map(json.loads, lines) if r}


def passage(doc: dict[str, Any]) -> str:
    title, text = str(doc.get("title") or "").strip(), str(doc.get("text") or "").strip()
    return f"{title}: {text}" if title else text


def write_run(path: Path, ranking: dict[str, list[str]], tag: str) -> None:
    """TREC run; scores fall with rank, so every tool reads the same order (trec_eval sorts by score)."""
    with path.open("w") as out:
        for qid, docs in ranking.items():
            for rank, doc in enumerate(docs, start=1):
                out.write(f"{qid} Q0 {doc} {rank} {len(docs) - rank + 1} {tag}\n")


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
    p.add_argument("--judgments", type=Path, help="also write rank1's judgments here (jsonl)")
    p.add_argument("--cache", type=Path, help="SQLite judgment cache: a rerun does not reason again")
    p.add_argument("--progress", action="store_true", help="show a progress bar per engine batch")
    args = p.parse_args(argv)
    ir = optional("ir_measures", "ir-measures")
    measures = [ir.parse_measure(m) for m in args.measures.split()]

    first_stage: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for sd in ir.read_trec_run(str(args.run)):
        first_stage[sd.query_id].append((sd.doc_id, sd.score))
    qids = list(first_stage)[: args.max_queries]
    ranking = {q: [d for d, _ in sorted(first_stage[q], key=lambda x: -x[1])] for q in qids}
    qrels = [q for q in ir.read_trec_qrels(str(args.qrels)) if q.query_id in ranking]
    corpus, queries = read_jsonl(args.corpus), read_jsonl(args.queries)

    setup = resolve(args)
    reranker = setup.reranker(template=args.template, cache=DiskCache(args.cache) if args.cache else True)
    reranker.backend.progress = args.progress  # type: ignore[attr-defined]
    batches = [(str(queries[q]["text"]), [passage(corpus[d]) for d in ranking[q][: args.depth]]) for q in qids]
    print(f"\nReranking the top {args.depth} of {len(qids)} queries ({sum(len(b[1]) for b in batches)} pairs) ...")
    judged = reranker.judge_many(batches)  # one engine batch for every pair

    reranked = {}
    for q, judgments in zip(qids, judged, strict=True):
        order = sorted(judgments, key=lambda j: (-(j.score or 0.0), j.index))
        reranked[q] = [ranking[q][j.index] for j in order] + ranking[q][args.depth :]
    write_run(args.output, reranked, "rank1")
    if args.judgments:
        with args.judgments.open("w") as out:
            for q, judgments in zip(qids, judged, strict=True):
                for j in judgments:
                    record = {"qid": q, "docid": ranking[q][j.index], "score": j.score, "relevant": j.relevant}
                    out.write(json.dumps({**record, "forced": j.forced, "reasoning": j.reasoning}) + "\n")

    scores = {}
    for name, run in (("first stage", ranking), ("rank1", reranked)):
        docs = [ir.ScoredDoc(q, d, float(len(ds) - i)) for q, ds in run.items() for i, d in enumerate(ds)]
        scores[name] = ir.calc_aggregate(measures, qrels, docs)
    print(f"Wrote {args.output}\n\n{'measure':<10} {'first stage':>12} {'rank1':>8} {'change':>8}")
    for m in measures:
        before, after = scores["first stage"][m], scores["rank1"][m]
        print(f"{m!s:<10} {before:>12.4f} {after:>8.4f} {after - before:>+8.4f}")
    if setup.model.fallback:
        print("\n(The reranked column is SmolLM2-135M-Instruct's, not rank1's: it shows the pipeline working.)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

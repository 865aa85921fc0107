"""nDCG@10 and generated tokens per passage for each reasoning effort, on a data set with qrels.

Reranks the top ``--depth`` documents of each query of a first-stage run with one reranker,
once per effort level (full, none, adaptive), writes each as a TREC run and scores it
against the qrels with ir-measures (the ``eval`` extra). Data: BEIR files (corpus.jsonl,
queries.jsonl) or an ``irds:<dataset id>`` (ir_datasets), qrels as a TREC file or the same
``irds:`` id, and a TREC run file for the first stage.

Here (CPU, no rank1 weights): SmolLM2 on the cookbook's tiny data proves the harness runs:

    python -m bench.effort_quality --model smollm2 --budget 128

On a GPU with rank1-7b on a BEIR subset: see docs/benchmarks.md, "Reasoning effort".
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench._common import REPO, Report, add_common_args, engine_llm, finish_args, load_reranker

DATA = REPO / "cookbook" / "data"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--corpus", default=str(DATA / "tiny_corpus.jsonl"), help="corpus.jsonl or irds:<id>")
    parser.add_argument("--queries", default=str(DATA / "tiny_queries.jsonl"), help="queries.jsonl or irds:<id>")
    parser.add_argument("--qrels", default=str(DATA / "tiny.qrels"), help="TREC qrels file or irds:<id>")
    parser.add_argument("--first-stage", default=str(DATA / "tiny.run"), help="TREC run of the first stage")
    parser.add_argument("--depth", type=int, default=20, help="documents reranked per query")
    parser.add_argument("--max-queries", type=int, default=None, help="only the first N queries of the run")
    parser.add_argument("--efforts", default="full,none,adaptive", help="effort levels, comma-separated")
    parser.add_argument("--measures", default="nDCG@10,RR@10", help="ir-measures names, comma-separated")
    args = finish_args(parser.parse_args(argv))

    from rank1_integrations.batch.inputs import open_corpus, read_queries, read_run
    from rank1_integrations.batch.outputs import Evaluation

    measures = [m.strip() for m in args.measures.split(",") if m.strip()]
    evaluation = Evaluation(args.qrels, measures)  # fails on a typo before any engine starts
    queries = read_queries(args.queries)
    runs = list(read_run(Path(args.first_stage)))[: args.max_queries]
    work = Path(tempfile.mkdtemp(prefix="rank1-effort-quality-"))
    corpus = open_corpus(args.corpus, work / "corpus.index")
    batches = []
    for run in runs:
        docids = list(run.docids[: args.depth])
        texts = corpus.texts(docids)
        batches.append((run.qid, docids, [texts[d] for d in docids]))
    corpus.close()
    passages = sum(len(docids) for _, docids, _ in batches)

    report = Report("effort_quality", "Reasoning effort: quality and cost on a data set", args)
    reranker = load_reranker(args)
    report.set_engine(engine_llm(reranker))
    rows, run_files = [], {"first stage": Path(args.first_stage)}
    costs: dict[str, tuple[float, float, int]] = {}
    for effort in [e.strip() for e in args.efforts.split(",") if e.strip()]:
        started = time.perf_counter()
        judged = reranker.judge_many([(queries[qid], texts) for qid, _, texts in batches], reasoning_effort=effort)
        seconds = time.perf_counter() - started
        path = work / f"{effort}.run"
        with path.open("w") as out:
            for (qid, docids, _), judgments in zip(batches, judged, strict=True):
                ranked = sorted(zip(docids, judgments, strict=True), key=lambda pair: -(pair[1].score or 0.0))
                for rank, (docid, judgment) in enumerate(ranked, start=1):
                    out.write(f"{qid} Q0 {docid} {rank} {judgment.score or 0.0:.6f} rank1-{effort}\n")
        run_files[effort] = path
        flat = [j for judgments in judged for j in judgments]
        costs[effort] = (seconds, sum(j.reasoning_tokens for j in flat) / len(flat), sum(j.reasoned for j in flat))
    scores = evaluation(run_files)
    for name, values in scores.items():
        seconds, tokens, reasoned = costs.get(name, (float("nan"), 0.0, 0))
        rows.append(
            [name, *(f"{values[m]:.4f}" for m in values), f"{tokens:.1f}", f"{reasoned}/{passages}", f"{seconds:.1f}"]
        )
    report.table(
        f"{len(batches)} queries, top {args.depth} each ({passages} passages), budget {args.budget}",
        ["run", *measures, "generated tokens / passage", "reasoned", "s"],
        rows,
        note=f"Runs written to {work}.",
    )
    report.data["scores"] = scores
    report.write()


if __name__ == "__main__":
    main()

"""``rerank_run``: rerank a whole first-stage run with rank1, resumably, on any engine.

One code path for every engine: the checkpoint is opened (and locked), the inputs are
checked and counted, the engine judges what the checkpoint lacks while each record is
appended as it completes, then the checkpoint is compacted and the reranked run written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rank1_integrations.batch.checkpoint import Checkpoint
from rank1_integrations.batch.engines import Engine, Judge, open_judge
from rank1_integrations.batch.evaluate import DEFAULT_MEASURES, Evaluation
from rank1_integrations.batch.inputs import open_corpus, read_queries
from rank1_integrations.batch.outputs import read_trec, reranked, write_trec
from rank1_integrations.batch.plan import Plan
from rank1_integrations.batch.progress import Progress, RunSummary
from rank1_integrations.errors import IncompleteRunError, InvalidInputError

__all__ = ["RerankedRun", "rerank_run"]

logger = logging.getLogger("rank1_integrations.batch")


@dataclass(frozen=True)
class RerankedRun:
    """What a run produced: the reranked TREC run, rank1's judgments, the numbers, and metrics if asked."""

    out: Path
    reasoning: Path
    """The judgments JSONL (the checkpoint)."""
    summary: RunSummary
    metrics: dict[str, dict[str, float]] | None = None
    """``{"first stage": {measure: value}, "rank1": {...}}`` when qrels were given."""

    def rankings(self) -> Iterator[tuple[str, list[str]]]:
        """Each query's reranked documents, best first, read from ``out`` (nothing held in memory)."""
        return read_trec(self.out)

    def as_dict(self) -> dict[str, list[str]]:
        return dict(self.rankings())


def rerank_run(
    run: str | Path,
    *,
    corpus: str | Path,
    queries: str | Path,
    out: str | Path,
    reasoning: str | Path,
    engine: Engine,
    depth: int | None = 100,
    max_in_flight: int | None = None,
    allow_failures: bool = False,
    qrels: str | Path | None = None,
    measures: Sequence[str] = DEFAULT_MEASURES,
    progress: bool | None = None,
    fsync_interval: float = 5.0,
    say: Callable[[str], None] | None = None,
) -> RerankedRun:
    """Rerank each query's first ``depth`` documents of ``run`` with rank1 and write the reranked run to ``out``.

    ``reasoning`` (JSONL, one line per pair: qid, docid, score, relevant, forced,
    reasoning_tokens, reasoning, truncated, error) is also the checkpoint: started again
    after any interruption, the same call judges only the pairs it lacks. ``corpus`` and
    ``queries`` are BEIR JSONL files or ``irds:<dataset id>``; ``engine`` is a
    ``Rank1Reranker`` or an :class:`EmbeddedEngine`, :class:`ServerEngine` or
    :class:`RayEngine`. ``max_in_flight`` bounds the pairs judged at once in this process.

    Raises :class:`~rank1_integrations.errors.IncompleteRunError` when pairs failed (their
    errors are in ``reasoning``; the next run retries them) unless ``allow_failures``, which
    ranks them below the judged ones. ``qrels`` (a TREC qrels file or ``irds:<id>``) adds
    ``measures`` of the first-stage and the reranked run.
    """
    note = say or logger.info
    run_path, out_path, judgments_path = Path(run), Path(out), Path(reasoning)
    if not run_path.is_file():
        raise InvalidInputError(f"the run file {run_path} does not exist")
    if out_path.resolve() == judgments_path.resolve():
        raise InvalidInputError("out and reasoning must be different files")
    evaluation = Evaluation(qrels, measures) if qrels is not None else None
    with Checkpoint(judgments_path, fsync_interval=fsync_interval) as checkpoint:
        if checkpoint.records:
            note(f"Resuming: {judgments_path} holds {checkpoint.records} records")
        texts = read_queries(queries)
        documents = open_corpus(corpus, checkpoint.work_dir / "corpus.sqlite")
        try:
            plan = Plan(run_path, queries=texts, corpus=documents, checkpoint=checkpoint, depth=depth)
            survey = plan.survey()
            note(
                f"{survey.queries} queries, {survey.pairs} pairs: {survey.judged} judged before, "
                f"{survey.remaining} to judge ({survey.failed} of them failed before)"
            )
            summary = RunSummary(pairs=survey.pairs, from_checkpoint=survey.judged)
            judge = open_judge(engine, max_in_flight=max_in_flight)
            try:
                if survey.remaining:
                    _judge_all(plan, checkpoint, judge, summary, survey.remaining, progress)
                else:
                    checkpoint.check(judge.settings or judge.probe_settings())
            finally:
                judge.close()
            checkpoint.compact((ranking.qid, top) for ranking, top in plan.rankings())
            for ranking, top in plan.rankings():
                for state in checkpoint.states(ranking.qid, top).values():
                    summary.judged += state.judged
                    summary.forced += state.judged and state.forced
            summary.failed = summary.pairs - summary.judged
            note(summary.text())
            if summary.failed and not allow_failures:
                raise IncompleteRunError(
                    f"{summary.failed} of {summary.pairs} pairs could not be judged (their errors are in "
                    f"{judgments_path}); run the same command again to retry them, or allow failures to rank "
                    "them below the judged documents",
                    failed=summary.failed,
                    total=summary.pairs,
                )
            write_trec(
                out_path,
                (
                    (ranking.qid, reranked(ranking.docids, top, checkpoint.states(ranking.qid, top)))
                    for ranking, top in plan.rankings()
                ),
            )
        finally:
            documents.close()
    note(f"Wrote {out_path} and {judgments_path}")
    metrics = evaluation({"first stage": run_path, "rank1": out_path}) if evaluation is not None else None
    return RerankedRun(out_path, judgments_path, summary, metrics)


def _judge_all(
    plan: Plan, checkpoint: Checkpoint, judge: Judge, summary: RunSummary, total: int, progress: bool | None
) -> None:
    """Judge the remaining pairs, appending each batch of records to the checkpoint as it completes."""
    if judge.settings is not None:
        checkpoint.check(judge.settings)  # before any work: a mismatch costs nothing
    checked = judge.settings is not None
    bar = Progress(summary, total, enabled=progress)
    try:
        for records in judge.judge(plan.units(judge.unit_size)):
            if not checked and judge.settings is not None:
                checkpoint.check(judge.settings)  # Ray: the actors know their settings
                checked = True
            checkpoint.append(records)
            bar.update(records)
    finally:
        bar.close()

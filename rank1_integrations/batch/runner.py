"""``rerank_run``: rerank a whole first-stage run with rank1, resumably, on any engine.

One code path for every engine: the checkpoint is opened (and locked), the inputs are
checked and counted, the engine judges what the checkpoint lacks while each record is
appended as it completes, then the checkpoint is compacted and the reranked run written.
With nothing left to judge, no engine is started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rank1_integrations.batch.checkpoint import Checkpoint, side_files
from rank1_integrations.batch.engines import Engine, Judge, known_settings, open_judge
from rank1_integrations.batch.errors import IncompleteRunError, StorageError
from rank1_integrations.batch.evaluate import DEFAULT_MEASURES, Evaluation
from rank1_integrations.batch.inputs import IRDS_PREFIX, open_corpus, read_queries
from rank1_integrations.batch.outputs import read_trec, reranked, write_trec
from rank1_integrations.batch.plan import Plan
from rank1_integrations.batch.progress import Progress, RunSummary
from rank1_integrations.batch.records import PairRecord
from rank1_integrations.errors import InvalidInputError

__all__ = ["RerankedRun", "rerank_run"]

logger = logging.getLogger("rank1_integrations.batch")

_SHOWN = 10
"""Pairs named in an error about invalid input."""


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
    ``queries`` are BEIR JSONL files or ``irds:<dataset id>``; ``engine`` is a ``Rank1Reranker``,
    the ``Rank1Settings`` of one, or a :class:`RayEngine`. ``max_in_flight`` bounds the pairs
    judged at once in this process.

    Raises :class:`~rank1_integrations.errors.IncompleteRunError` when pairs failed (their
    errors are in ``reasoning``; the next run retries them, but for those refused as invalid
    input, which wait for their texts to change) unless ``allow_failures``, which ranks them
    below the judged ones; :class:`~rank1_integrations.errors.StorageError` when a file could
    not be written (the same call resumes). ``qrels`` (a TREC qrels file or ``irds:<id>``)
    adds ``measures`` of the first-stage and the reranked run.
    """
    note = say or logger.info
    run_path, out_path, judgments_path = Path(run), Path(out), Path(reasoning)
    if not run_path.is_file():
        raise InvalidInputError(f"the run file {run_path} does not exist")
    _check_paths({"run": run, "corpus": corpus, "queries": queries, "qrels": qrels}, out_path, judgments_path)
    evaluation = Evaluation(qrels, measures) if qrels is not None else None
    for name, path in (("out", out_path), ("reasoning", judgments_path)):
        _make_folder(name, path)
    with _storage_errors(judgments_path), Checkpoint(judgments_path, fsync_interval=fsync_interval) as checkpoint:
        if checkpoint.records:
            note(f"Resuming: {judgments_path} holds {checkpoint.records} records")
        texts = read_queries(queries)
        documents = open_corpus(corpus, checkpoint.work_dir / "corpus.sqlite")
        try:
            plan = Plan(run_path, queries=texts, corpus=documents, checkpoint=checkpoint, depth=depth)
            survey = plan.survey()
            note(
                f"{survey.queries} queries, {survey.pairs} pairs: {survey.judged} judged before, "
                f"{survey.remaining} to judge ({survey.failed} of them failed before), "
                f"{survey.invalid} invalid input (not judged again)"
            )
            summary = RunSummary(pairs=survey.pairs, from_checkpoint=survey.judged)
            # Other settings are refused before any engine starts, where the checkpoint's settings file can tell.
            told = checkpoint.check_known(known_settings(engine))
            if survey.remaining or not told:
                judge = open_judge(engine, max_in_flight=max_in_flight)
                try:
                    if survey.remaining:
                        _judge_all(plan, checkpoint, judge, summary, survey.remaining, progress)
                    else:
                        checkpoint.check(judge.settings or judge.probe_settings())
                finally:
                    judge.close()
            checkpoint.compact((ranking.qid, top) for ranking, top in plan.rankings())
            refused: list[str] = []
            for ranking, top in plan.rankings():
                for docid, state in checkpoint.states(ranking.qid, top).items():
                    summary.judged += state.judged
                    summary.forced += state.judged and state.forced
                    summary.invalid += state.invalid
                    if state.invalid and len(refused) < _SHOWN:
                        error = PairRecord.from_json(checkpoint.read(state.offset)).error
                        refused.append(f"{ranking.qid}/{docid} ({error})")
            summary.failed = summary.pairs - summary.judged
            note(summary.text())
            if summary.failed and not allow_failures:
                raise _incomplete(summary, refused, judgments_path)
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


def _check_paths(inputs: Mapping[str, str | Path | None], out: Path, judgments: Path) -> None:
    """Refuse outputs that would write over an input or over each other (links and relative paths resolved)."""
    sources = [
        (f"the {name} file", Path(path))
        for name, path in inputs.items()
        if path is not None and not (isinstance(path, str) and path.startswith(IRDS_PREFIX))
    ]
    checkpoint = [judgments, *side_files(judgments)]
    out_files = [out, out.with_name(out.name + ".tmp")]  # and write_trec's temporary file
    for name, written, kept in (
        ("reasoning", checkpoint, sources),
        ("out", out_files, [*sources, *(("the checkpoint's files", path) for path in checkpoint)]),
    ):
        for path in written:
            for what, other in kept:
                if _overlap(path, other):
                    raise InvalidInputError(f"{name} {written[0]} would write over {what} ({other}): choose another")


def _overlap(a: Path, b: Path) -> bool:
    """One path is the other (a link to it, a hard link included) or a folder holding it."""
    a_real, b_real = a.resolve(), b.resolve()
    if a_real == b_real or a_real in b_real.parents or b_real in a_real.parents:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _make_folder(name: str, path: Path) -> None:
    """Create an output's folder now: one that cannot be written fails before anything is judged."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InvalidInputError(f"cannot create the folder of {name} {path}: {err.strerror or err}") from None
    if path.is_dir():
        raise InvalidInputError(f"{name} {path} is a folder: name a file")


@contextlib.contextmanager
def _storage_errors(judgments: Path) -> Iterator[None]:
    """An OS error (a full disk, a file size limit) as a :class:`StorageError`, raised once the checkpoint is closed."""
    try:
        yield
    except (OSError, sqlite3.Error) as err:
        raise StorageError(
            f"the run stopped on an OS error ({type(err).__name__}: {err}); the judgments written before are kept "
            f"in {judgments}: fix the cause (disk space, a file size limit, permissions) and run the same command "
            "again to resume"
        ) from err


def _incomplete(summary: RunSummary, refused: list[str], judgments: Path) -> IncompleteRunError:
    """Why the run is incomplete, and what to do: retry the failed pairs, correct the invalid ones."""
    retry = summary.failed - summary.invalid
    reasons, remedies = [], []
    if retry:
        reasons.append(f"{retry} failed")
        remedies.append("run the same command again to retry the failed ones")
    if summary.invalid:
        reasons.append(f"{summary.invalid} are invalid input, e.g. {'; '.join(refused)}")
        remedies.append(
            "correct the invalid ones' texts in the corpus or queries (they are not judged again while their "
            "texts stay the same)"
        )
    return IncompleteRunError(
        f"{summary.failed} of {summary.pairs} pairs could not be judged ({', '.join(reasons)}; their errors are in "
        f"{judgments}): {'; '.join(remedies)}; or allow failures to rank them below the judged documents",
        failed=summary.failed,
        total=summary.pairs,
        invalid=summary.invalid,
    )


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

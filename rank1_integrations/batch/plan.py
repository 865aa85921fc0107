"""Which pairs a run still has to judge, as a stream of work units, and how a reranker judges them. The run is
read query by query (three passes: survey, work, output): only the queries in flight are in memory."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from rank1_integrations.batch.checkpoint import Checkpoint, CheckpointError, PairState
from rank1_integrations.batch.inputs import Corpus, QueryRun, read_run
from rank1_integrations.batch.records import PairRecord, text_digest
from rank1_integrations.errors import InvalidInputError
from rank1_integrations.reranker import Rank1Reranker
from rank1_integrations.settings import Rank1Settings

__all__ = ["Plan", "Survey", "WorkUnit", "judged_records", "run_reranker"]

SHOWN = 10  # examples named in an error about missing or changed inputs


@dataclass(frozen=True)
class WorkUnit:
    """Pairs of one query to judge together (one call)."""

    qid: str
    query: str
    docids: tuple[str, ...]
    passages: tuple[str, ...]


@dataclass(frozen=True)
class Survey:
    """The run at its start: how many pairs it has, and how many the checkpoint already holds."""

    queries: int
    pairs: int
    judged: int
    failed: int
    """Pairs whose last attempt failed (retried now)."""
    invalid: int
    """Pairs refused as invalid input, their texts unchanged since (not attempted again)."""

    @property
    def remaining(self) -> int:
        return self.pairs - self.judged - self.invalid


@dataclass(frozen=True)
class Plan:
    """The run's pairs (each query's first ``depth`` documents) against what the checkpoint holds."""

    run: Path
    queries: Mapping[str, str]
    corpus: Corpus
    checkpoint: Checkpoint
    depth: int | None

    def __post_init__(self) -> None:
        depth = self.depth
        if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool) or depth < 1):
            raise InvalidInputError(f"depth must be a positive int (or None for every document), got {depth!r}")

    def rankings(self) -> Iterator[tuple[QueryRun, tuple[str, ...]]]:
        """Each query of the run with the documents it reranks (its first ``depth``)."""
        for ranking in read_run(self.run):
            yield ranking, ranking.docids[: self.depth]

    def survey(self) -> Survey:
        """Count the work; refuse a run whose queries or documents are missing or whose texts changed."""
        queries = pairs = judged = failed = invalid = 0
        no_query, no_doc, changed = [], [], []
        for ranking, top in self.rankings():
            queries += 1
            pairs += len(top)
            if (query := self.queries.get(ranking.qid)) is None:
                no_query.append(ranking.qid)
                continue
            no_doc += [f"{ranking.qid}/{d}" for d in self.corpus.missing(top)]
            states = self.checkpoint.states(ranking.qid, top)
            done = [d for d, state in states.items() if state.judged]
            judged += len(done)
            texts = self.corpus.texts(list(states))
            refused = sum(_refused(states[d], query, texts[d]) for d in states if d in texts)
            invalid += refused
            failed += len(states) - len(done) - refused
            changed += [
                f"{ranking.qid}/{d}" for d in done if d in texts and text_digest(query, texts[d]) != states[d].digest
            ]
        if no_query:
            raise InvalidInputError(
                f"{len(no_query)} queries of the run are not in the queries file, e.g. {no_query[:SHOWN]}"
            )
        if no_doc:
            raise InvalidInputError(f"{len(no_doc)} documents of the run are not in the corpus, e.g. {no_doc[:SHOWN]}")
        if changed:
            raise CheckpointError(
                f"{self.checkpoint.path} judged {len(changed)} pairs on other texts than the corpus and queries "
                f"give now (query/document: {changed[:SHOWN]}): pass a new judgments file to judge the new texts"
            )
        return Survey(queries, pairs, judged, failed, invalid)

    def units(self, max_pairs: int) -> Iterator[WorkUnit]:
        """The pairs still to judge, query by query, at most ``max_pairs`` per unit."""
        for ranking, top in self.rankings():
            states = self.checkpoint.states(ranking.qid, top)
            todo = [d for d in top if not (d in states and states[d].judged)]
            texts = self.corpus.texts(todo)
            query = self.queries[ranking.qid]
            todo = [d for d in todo if not (d in states and _refused(states[d], query, texts[d]))]
            for start in range(0, len(todo), max_pairs):
                docids = tuple(todo[start : start + max_pairs])
                yield WorkUnit(ranking.qid, query, docids, tuple(texts[d] for d in docids))


def _refused(state: PairState, query: str, passage: str) -> bool:
    """Refused as invalid input, and these are still the texts refused: judging the pair again would fail again."""
    return state.invalid and state.digest == text_digest(query, passage)


def run_reranker(settings: Rank1Settings) -> Rank1Reranker:
    """A run's reranker: nothing is cached (the checkpoint is the run's memory)."""
    return Rank1Reranker.from_settings(settings, cache_entries=0, cache_path=None)


def judged_records(
    reranker: Rank1Reranker, units: Iterable[WorkUnit], *, max_in_flight: int, settings: str
) -> Iterator[list[PairRecord]]:
    """Each unit's records as its last pair is judged, about ``max_in_flight`` pairs in flight; a failed
    pair is a failed record, one rank1 refused as input an invalid one."""
    open_units: dict[int, tuple[WorkUnit, list[PairRecord]]] = {}

    def batches() -> Iterator[tuple[str, tuple[str, ...]]]:
        for number, unit in enumerate(units):
            open_units[number] = (unit, [])
            yield unit.query, unit.passages

    for number, judgment in reranker.judge_many_iter(batches(), max_in_flight=max_in_flight):
        unit, done = open_units[number]
        digest = text_digest(unit.query, unit.passages[judgment.index])
        done.append(PairRecord.of(unit.qid, unit.docids[judgment.index], judgment, settings=settings, digest=digest))
        if len(done) == len(unit.docids):
            del open_units[number]
            yield done

"""What a run gives: the reranked TREC run (rank1's order for the judged documents, the first stage's for the
rest) and its metrics against qrels, with ir-measures as the cookbook computes them."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rank1_integrations._optional import require
from rank1_integrations.batch.checkpoint import PairState, write_atomically
from rank1_integrations.batch.inputs import IRDS_PREFIX, read_run
from rank1_integrations.errors import InvalidInputError

__all__ = ["DEFAULT_MEASURES", "Evaluation", "read_trec", "reranked", "write_trec"]


def reranked(docids: Sequence[str], top: Sequence[str], states: Mapping[str, PairState]) -> list[str]:
    """One query's new order: ``top``'s judged documents by rank1 score (ties in first-stage order), then its
    unjudged ones, then those below the depth, both as the first stage ranked them."""
    judged = [d for d in top if d in states and states[d].judged]
    unjudged = [d for d in top if d not in states or not states[d].judged]
    judged.sort(key=lambda d: -(states[d].score or 0.0))  # stable: ties stay in first-stage order
    return judged + unjudged + list(docids[len(top) :])


def write_trec(path: Path, rankings: Iterable[tuple[str, Sequence[str]]], tag: str = "rank1") -> None:
    """Write a TREC run atomically. Scores fall strictly with rank, so every tool reads the same order
    (trec_eval sorts by score and would break ties its own way); rank1's scores are in the judgments file."""
    with write_atomically(path) as out:
        for qid, docids in rankings:
            out.writelines(
                f"{qid} Q0 {d} {rank} {len(docids) - rank + 1} {tag}\n".encode() for rank, d in enumerate(docids, 1)
            )


def read_trec(path: Path) -> Iterator[tuple[str, list[str]]]:
    """A run written by :func:`write_trec`, query by query, in its order."""
    return ((ranking.qid, list(ranking.docids)) for ranking in read_run(path))


DEFAULT_MEASURES = ("nDCG@10", "RR@10", "R@10", "R@100")


class Evaluation:
    """Measures of runs against qrels (a file or ``irds:<dataset id>``); built before a run starts, so a typo fails at
    once, not hours later."""

    def __init__(self, qrels: str | Path, measures: Sequence[str]) -> None:
        self._ir = require("ir_measures", extras=("eval",), purpose="Evaluating against qrels (--eval)")
        try:
            self._measures = [self._ir.parse_measure(name) for name in measures]
        except Exception as err:  # ir-measures raises several kinds for a name it does not know
            raise InvalidInputError(f"not an ir-measures measure in {list(measures)}: {err}") from None
        if not self._measures:
            raise InvalidInputError("no measures to evaluate")
        if isinstance(qrels, str) and qrels.startswith(IRDS_PREFIX):
            irds = require("ir_datasets", extras=("eval",), purpose="Reading ir_datasets qrels")
            self._qrels: Callable[[], Any] = irds.load(qrels[len(IRDS_PREFIX) :]).qrels_iter
        elif Path(qrels).is_file():
            self._qrels = functools.partial(self._ir.read_trec_qrels, str(qrels))
        else:
            raise InvalidInputError(f"qrels file {qrels} does not exist")

    def __call__(self, runs: Mapping[str, Path]) -> dict[str, dict[str, float]]:
        """Each run's aggregate measures: ``{run name: {measure: value}}``."""
        results: dict[str, dict[str, float]] = {}
        for name, run in runs.items():
            values = self._ir.calc_aggregate(self._measures, self._qrels(), self._ir.read_trec_run(str(run)))
            results[name] = {str(m): float(values[m]) for m in self._measures}
        return results

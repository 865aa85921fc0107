"""The reranked TREC run: rank1's order for each query's judged documents, the first stage's for the rest."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from rank1_integrations.batch.checkpoint import PairState
from rank1_integrations.errors import InvalidInputError

__all__ = ["read_trec", "reranked", "write_trec"]


def reranked(docids: Sequence[str], top: Sequence[str], states: Mapping[str, PairState]) -> list[str]:
    """One query's new order.

    The judged documents of ``top`` by rank1 score, highest first, ties in first-stage
    order; then any of ``top`` left unjudged, in first-stage order; then the documents
    below the depth, as the first stage ranked them.
    """
    first_stage = {docid: rank for rank, docid in enumerate(top)}
    judged = [d for d in top if d in states and states[d].judged]
    unjudged = [d for d in top if d not in states or not states[d].judged]
    judged.sort(key=lambda d: (-_score(states[d]), first_stage[d]))
    return judged + unjudged + list(docids[len(top) :])


def _score(state: PairState) -> float:
    assert state.score is not None
    return state.score


def write_trec(path: Path, rankings: Iterable[tuple[str, Sequence[str]]], tag: str = "rank1") -> None:
    """Write a TREC run atomically. Scores fall strictly with rank, so every tool reads the same order
    (trec_eval sorts by score and would break ties its own way); rank1's scores are in the judgments file."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as out:
        for qid, docids in rankings:
            count = len(docids)
            out.writelines(
                f"{qid} Q0 {docid} {rank} {count - rank + 1} {tag}\n" for rank, docid in enumerate(docids, 1)
            )
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def read_trec(path: Path) -> Iterator[tuple[str, list[str]]]:
    """A run written by :func:`write_trec`, query by query, in its order."""
    qid: str | None = None
    docids: list[str] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            parts = line.split()
            if len(parts) != 6:
                raise InvalidInputError(f"{path}:{number}: not a TREC run line")
            if parts[0] != qid:
                if qid is not None:
                    yield qid, docids
                qid, docids = parts[0], []
            docids.append(parts[2])
    if qid is not None:
        yield qid, docids

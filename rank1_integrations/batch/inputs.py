"""A run's inputs as streams: a TREC run query by query, a corpus by document id (a BEIR ``corpus.jsonl`` through
an on-disk index of byte offsets, ``irds:`` ids through ``ir_datasets``' document store)."""

from __future__ import annotations

import itertools
import json
import math
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rank1_integrations._optional import require
from rank1_integrations.errors import InvalidInputError

__all__ = ["IRDS_PREFIX", "Corpus", "QueryRun", "open_corpus", "passage_text", "read_queries", "read_run", "select_in"]

IRDS_PREFIX = "irds:"
_SQL_CHUNK = 500


@dataclass(frozen=True)
class QueryRun:
    """One query's documents in a first-stage run, best first."""

    qid: str
    docids: tuple[str, ...]


def read_run(path: Path) -> Iterator[QueryRun]:
    """The run's queries in file order, each with its documents by score (highest first), rank column, line.
    A query whose lines are not together is refused, naming the command that groups them."""
    seen: set[str] = set()
    with _open(path) as lines:
        rows = (_run_row(path, number, line.split()) for number, line in enumerate(lines, start=1) if line.strip())
        for qid, group in itertools.groupby(rows, key=lambda row: row[0]):
            ranked = list(group)
            if qid in seen:
                raise InvalidInputError(
                    f"{path}:{ranked[0][3]}: query {qid!r} comes back after other queries; group each query's "
                    f"lines together first, e.g. sort -s -k1,1 {path} > sorted.run"
                )
            seen.add(qid)
            docids = tuple(row[4] for row in sorted(ranked))
            if len(set(docids)) != len(docids):
                twice = sorted({d for d in docids if docids.count(d) > 1})
                raise InvalidInputError(f"{path}: query {qid!r} lists documents more than once: {twice[:10]}")
            yield QueryRun(qid, docids)


def _run_row(path: Path, number: int, parts: list[str]) -> tuple[str, float, int, int, str]:
    """A run line's sort key (query, -score, rank, line) and document."""
    if len(parts) != 6:
        raise InvalidInputError(
            f"{path}:{number}: a TREC run line has 6 columns (qid Q0 docid rank score tag), got {len(parts)}"
        )
    return parts[0], -_number(path, number, parts[4], float), _number(path, number, parts[3], int), number, parts[2]


def _number(path: Path, line: int, text: str, kind: type[int] | type[float]) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise InvalidInputError(f"{path}:{line}: {text!r} is not a valid {kind.__name__}") from None
    if not math.isfinite(value):
        raise InvalidInputError(f"{path}:{line}: {text!r} is not a finite number")
    return value


def _open(path: Path, mode: str = "r") -> Any:
    try:
        return path.open(mode, encoding=None if "b" in mode else "utf-8")
    except OSError as err:
        raise InvalidInputError(f"cannot read {path}: {err.strerror or err}") from None


def passage_text(title: Any, text: Any) -> str:
    """A BEIR document as one passage: title and text joined by a space (as MTEB and ir_datasets do)."""
    return " ".join(part for part in (_text(title), _text(text)) if part)


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


class JsonlCorpus:
    """A BEIR ``corpus.jsonl`` (``_id``, ``title``, ``text``): scanned once into an on-disk index of offsets."""

    def __init__(self, path: Path, index_path: Path) -> None:
        self._file = _open(path, "rb")
        self._db = sqlite3.connect(index_path)
        try:
            self._db.executescript(
                "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                "CREATE TABLE docs (docid TEXT PRIMARY KEY, offset INTEGER NOT NULL) WITHOUT ROWID;"
            )
            offset = 0
            for number, line in enumerate(self._file, start=1):
                if line.strip():
                    docid = _line_id(path, number, line, "corpus")[0]
                    try:
                        self._db.execute("INSERT INTO docs VALUES (?, ?)", (docid, offset))
                    except sqlite3.IntegrityError:
                        raise InvalidInputError(f"{path}:{number}: document id {docid!r} appears twice") from None
                offset += len(line)
            self._db.commit()
        except BaseException:
            self.close()
            raise

    def _offsets(self, docids: Sequence[str]) -> dict[str, int]:
        return dict(select_in(self._db, "SELECT docid, offset FROM docs WHERE docid IN ({})", docids))

    def missing(self, docids: Sequence[str]) -> list[str]:
        found = self._offsets(docids)
        return [d for d in docids if d not in found]

    def texts(self, docids: Sequence[str]) -> dict[str, str]:
        texts = {}
        for docid, offset in sorted(self._offsets(docids).items(), key=lambda item: item[1]):
            self._file.seek(offset)
            record = json.loads(self._file.readline())
            texts[docid] = passage_text(record.get("title"), record.get("text"))
        return texts

    def close(self) -> None:
        self._db.close()
        self._file.close()


class IrdsCorpus:
    """The documents of an ``ir_datasets`` dataset, through its document store."""

    def __init__(self, dataset_id: str) -> None:
        self._store = _irds_dataset(dataset_id, "docs").docs_store()

    def missing(self, docids: Sequence[str]) -> list[str]:
        found = self._store.get_many(docids)
        return [d for d in docids if d not in found]

    def texts(self, docids: Sequence[str]) -> dict[str, str]:
        return {docid: _irds_text(doc) for docid, doc in self._store.get_many(docids).items()}

    def close(self) -> None:
        return None


Corpus = JsonlCorpus | IrdsCorpus
"""Documents by id, read when asked for: ``missing`` ids in the order given, ``texts`` of those found."""


def open_corpus(source: str | Path, index_path: Path) -> Corpus:
    """``irds:<id>`` through ``ir_datasets``, else a BEIR ``corpus.jsonl`` path."""
    if isinstance(source, str) and source.startswith(IRDS_PREFIX):
        return IrdsCorpus(source[len(IRDS_PREFIX) :])
    return JsonlCorpus(Path(source), index_path)


def read_queries(source: str | Path) -> dict[str, str]:
    """Query id -> text, from a BEIR ``queries.jsonl`` (``_id``, ``text``) or ``irds:<id>``."""
    if isinstance(source, str) and source.startswith(IRDS_PREFIX):
        dataset = _irds_dataset(source[len(IRDS_PREFIX) :], "queries")
        return {str(query.query_id): _irds_text(query) for query in dataset.queries_iter()}
    path = Path(source)
    queries: dict[str, str] = {}
    with _open(path) as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            qid, record = _line_id(path, number, line, "query")
            if qid in queries:
                raise InvalidInputError(f"{path}: query id {qid!r} appears more than once")
            queries[qid] = _text(record.get("text"))
    return queries


def select_in(db: sqlite3.Connection, sql: str, ids: Sequence[str], *args: Any) -> Iterator[Any]:
    """Rows of ``sql`` (``{}``: the IN list of ``ids``, bound after ``args``), in chunks under SQLite's limits."""
    for start in range(0, len(ids), _SQL_CHUNK):
        chunk = list(ids[start : start + _SQL_CHUNK])
        yield from db.execute(sql.format(",".join("?" * len(chunk))), [*args, *chunk])


def _line_id(path: Path, number: int, line: str | bytes, what: str) -> tuple[str, dict[str, Any]]:
    try:
        record = json.loads(line)
    except ValueError:
        raise InvalidInputError(f"{path}:{number}: not a JSON object") from None
    key = record.get("_id") if isinstance(record, dict) else None
    if not isinstance(key, str | int) or isinstance(key, bool) or str(key) == "":
        raise InvalidInputError(f"{path}:{number}: a {what} line needs an '_id'")
    return str(key), record


def _irds_dataset(dataset_id: str, part: str) -> Any:
    ir_datasets = require("ir_datasets", extras=("eval",), purpose="Reading ir_datasets ids")
    try:
        dataset = ir_datasets.load(dataset_id)
    except KeyError:
        raise InvalidInputError(f"ir_datasets has no dataset {dataset_id!r}") from None
    if not getattr(dataset, f"has_{part}", lambda: False)():
        raise InvalidInputError(f"ir_datasets dataset {dataset_id!r} has no {part}")
    return dataset


def _irds_text(item: Any) -> str:
    """``default_text()`` where the record type has it (title and text for BEIR), else its text fields."""
    if hasattr(item, "default_text"):
        return str(item.default_text()).strip()
    return passage_text(getattr(item, "title", None), getattr(item, "text", None))

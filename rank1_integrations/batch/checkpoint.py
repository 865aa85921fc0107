"""The judgments JSONL as the run's checkpoint: read back at start, appended as judgments complete.

Every append is one write of whole lines, flushed to the kernel at once (a SIGKILL loses
nothing written), and ``fsync``-ed at most every ``fsync_interval`` seconds and at the end
(a power cut loses at most that much). A process killed mid-write leaves a torn last
line: it is dropped when the run starts again. Any other line that is not a record
stops the run, as do records written with other settings: nothing is ever mixed.

What each pair's latest state is (judged or failed, its score, where its line is)
lives in a small SQLite index on disk, so memory stays flat in the number of pairs.
A judged record is final; a failed one is replaced by the next attempt. When a run
completes, :meth:`Checkpoint.compact` rewrites the file in the run's order with one line
per pair, atomically, so an interrupted run ends with the same file as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, NamedTuple

from rank1_integrations.batch.records import PairRecord, RunSettings
from rank1_integrations.errors import CheckpointError

__all__ = ["Checkpoint", "PairState"]

logger = logging.getLogger("rank1_integrations.batch")

_SQL_CHUNK = 500


class PairState(NamedTuple):
    """A pair's latest record in the checkpoint."""

    judged: bool
    score: float | None
    forced: bool
    digest: str
    offset: int


class Checkpoint:
    """One run's judgments file, locked for this process while it is open."""

    def __init__(
        self,
        path: Path,
        *,
        fsync_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.settings_path = path.with_name(path.name + ".settings.json")
        self.work_dir = path.with_name(path.name + ".work")
        """Scratch space of the run holding the lock (indexes); removed at close, or by the next run."""
        self._compacting = path.with_name(path.name + ".compacting")
        self.fingerprint: str | None = None
        """The settings fingerprint of its records (None while it has none)."""
        self.records = 0
        """Lines read back at start."""
        self._fsync_interval = fsync_interval
        self._clock = clock
        self._synced_at = clock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer: IO[bytes] = path.open("ab")
        self._reader: IO[bytes] | None = None
        self._db: sqlite3.Connection | None = None
        try:
            _lock(self._writer, path)
            shutil.rmtree(self.work_dir, ignore_errors=True)  # left by a killed run; the lock makes it ours
            self.work_dir.mkdir()
            self._reader = path.open("rb")
            self._db = sqlite3.connect(self.work_dir / "state.sqlite")
            self._db.executescript(
                "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                "CREATE TABLE pairs (qid TEXT, docid TEXT, judged INTEGER, score REAL, forced INTEGER, digest TEXT,"
                " offset INTEGER, emitted INTEGER DEFAULT 0, new_offset INTEGER, PRIMARY KEY (qid, docid))"
                " WITHOUT ROWID; CREATE INDEX pairs_by_offset ON pairs (offset);"
            )
            with contextlib.suppress(FileNotFoundError):
                self._compacting.unlink()  # left by a run killed while compacting; the file itself is whole
            self._end = self._load()
        except BaseException:
            self.close()
            raise

    def _load(self) -> int:
        """Index every record; drop a torn last line. Returns where the next line goes."""
        assert self._reader is not None
        self._reader.seek(0)
        offset = 0
        line = self._reader.readline()
        number = 0
        while line:
            number += 1
            following = self._reader.readline()
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("the line is not finished")
                record = PairRecord.from_json(line)
            except ValueError as err:
                if following:
                    raise CheckpointError(
                        f"{self.path}:{number} is not a judgment record ({err}); the file is not a checkpoint "
                        "of this tool, or was edited: pass another --reasoning file"
                    ) from None
                logger.warning(
                    "%s: dropped a torn last line (%d bytes) left by an interrupted run", self.path, len(line)
                )
                self._writer.truncate(offset)
                break
            self._adopt(record.settings, number)
            self._remember(record, offset)
            self.records += 1
            offset += len(line)
            line = following
        self._commit()
        return offset

    def _adopt(self, fingerprint: str, number: int) -> None:
        if self.fingerprint is None:
            self.fingerprint = fingerprint
        elif fingerprint != self.fingerprint:
            raise CheckpointError(
                f"{self.path}:{number} was judged with other settings than the lines before it "
                f"({fingerprint} != {self.fingerprint}): the file mixes runs and cannot be resumed"
            )

    def check(self, settings: RunSettings) -> None:
        """Refuse ``settings`` unless its records were judged with them; an empty checkpoint takes them."""
        fingerprint = settings.fingerprint
        if self.fingerprint is None or (fingerprint == self.fingerprint and not self.settings_path.exists()):
            _write_atomically(
                self.settings_path,
                json.dumps({"fingerprint": fingerprint, "settings": settings.to_dict()}, indent=2).encode(),
            )
            self.fingerprint = fingerprint
            return
        if fingerprint == self.fingerprint:
            return
        theirs = self._written_settings()
        detail = (
            "; ".join(theirs.differences(settings))
            if theirs is not None and theirs.fingerprint == self.fingerprint
            else f"settings fingerprint {self.fingerprint} != {fingerprint}"
        )
        raise CheckpointError(
            f"{self.path} holds judgments made with other settings (checkpoint != this run: {detail}); "
            "resume with the settings it was written with, or pass a new judgments file"
        )

    def _written_settings(self) -> RunSettings | None:
        try:
            return RunSettings.from_dict(json.loads(self.settings_path.read_bytes())["settings"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def states(self, qid: str, docids: Sequence[str]) -> dict[str, PairState]:
        """The latest state of each of the query's pairs that has a record."""
        assert self._db is not None
        found: dict[str, PairState] = {}
        for start in range(0, len(docids), _SQL_CHUNK):
            chunk = list(docids[start : start + _SQL_CHUNK])
            rows = self._db.execute(
                "SELECT docid, judged, score, forced, digest, offset FROM pairs "
                f"WHERE qid = ? AND docid IN ({','.join('?' * len(chunk))})",
                [qid, *chunk],
            )
            for docid, judged, score, forced, digest, offset in rows:
                found[docid] = PairState(bool(judged), score, bool(forced), digest, offset)
        return found

    def append(self, records: Sequence[PairRecord]) -> None:
        """Write the records as whole lines and flush them (to the kernel: safe from SIGKILL)."""
        if not records:
            return
        wrong = next((r for r in records if r.settings != self.fingerprint), None)
        if wrong is not None:
            raise CheckpointError(
                f"a judgment was made with settings {wrong.settings}, not this checkpoint's {self.fingerprint}"
            )
        lines = [(record.to_json() + "\n").encode("utf-8", "surrogatepass") for record in records]
        self._writer.write(b"".join(lines))
        self._writer.flush()
        if self._clock() - self._synced_at >= self._fsync_interval:
            self._sync()
        offset = self._end
        for record, line in zip(records, lines, strict=True):
            self._remember(record, offset)
            offset += len(line)
        self._end = offset
        self._commit()

    def read(self, offset: int) -> bytes:
        """The line at ``offset`` (with its newline)."""
        assert self._reader is not None
        self._reader.seek(offset)
        return self._reader.readline()

    def compact(self, order: Iterable[tuple[str, Sequence[str]]]) -> None:
        """Rewrite the file with one line per pair: the run's pairs in ``order``, then any others as they were.

        Written beside it, synced and renamed over it: a kill at any moment leaves either file whole.
        """
        assert self._db is not None
        self._sync()
        db = self._db
        with self._compacting.open("wb") as out:
            written = 0

            def copy(qid: str, docid: str, offset: int) -> None:
                nonlocal written
                line = self.read(offset)
                out.write(line)
                db.execute(
                    "UPDATE pairs SET new_offset = ?, emitted = 1 WHERE qid = ? AND docid = ?", (written, qid, docid)
                )
                written += len(line)

            for qid, docids in order:
                states = self.states(qid, docids)
                for docid in docids:
                    if docid in states:
                        copy(qid, docid, states[docid].offset)
            last = -1
            while True:  # pairs outside this run (e.g. from a deeper earlier run), in file order
                rows = db.execute(
                    "SELECT qid, docid, offset FROM pairs WHERE emitted = 0 AND offset > ? ORDER BY offset LIMIT 1000",
                    (last,),
                ).fetchall()
                if not rows:
                    break
                for qid, docid, offset in rows:
                    copy(qid, docid, offset)
                    last = offset
            out.flush()
            os.fsync(out.fileno())
        os.replace(self._compacting, self.path)
        _sync_directory(self.path.parent)
        # Hold the new file from now on, and point the index at its lines.
        old_writer, old_reader = self._writer, self._reader
        self._writer, self._reader = self.path.open("ab"), self.path.open("rb")
        old_writer.close()
        if old_reader is not None:
            old_reader.close()
        _lock(self._writer, self.path)
        db.execute("UPDATE pairs SET offset = new_offset, new_offset = NULL, emitted = 0")
        self._end = written
        self._commit()

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._sync()
        for handle in (self._reader, self._writer):
            if handle is not None:
                handle.close()
        if self._db is not None:
            self._db.close()
            self._db = None
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _remember(self, record: PairRecord, offset: int) -> None:
        assert self._db is not None
        # A judged record is final; a failed one gives way to the next attempt.
        self._db.execute(
            "INSERT INTO pairs (qid, docid, judged, score, forced, digest, offset) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (qid, docid) DO UPDATE SET judged = excluded.judged, score = excluded.score, "
            "forced = excluded.forced, digest = excluded.digest, offset = excluded.offset WHERE pairs.judged = 0",
            (
                record.qid,
                record.docid,
                int(record.judged),
                record.score,
                int(record.forced),
                record.text_digest,
                offset,
            ),
        )

    def _commit(self) -> None:
        assert self._db is not None
        self._db.commit()

    def _sync(self) -> None:
        if not self._writer.closed:
            self._writer.flush()
            os.fsync(self._writer.fileno())
        self._synced_at = self._clock()


def _lock(handle: IO[bytes], path: Path) -> None:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise CheckpointError(f"another run is writing {path}: wait for it, or pass another judgments file") from None


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    _sync_directory(path.parent)


def _sync_directory(path: Path) -> None:
    """Make a rename durable (where the platform allows opening a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

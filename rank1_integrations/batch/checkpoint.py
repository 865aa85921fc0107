"""The judgments JSONL as the run's checkpoint. Appends are unbuffered writes of whole lines (a SIGKILL loses
nothing written); a torn last line (a write cut short) is dropped on the next start, any other line that is not
a record refuses the file. A lock file beside it keeps a second run out; an SQLite index holds each pair's state."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

from rank1_integrations.batch.inputs import select_in
from rank1_integrations.batch.records import PairRecord, RunSettings
from rank1_integrations.errors import InvalidInputError, Rank1Error

__all__ = ["Checkpoint", "CheckpointError", "PairState", "StorageError", "side_files", "write_atomically"]

logger = logging.getLogger("rank1_integrations.batch")

_RECORD_START = b'{"qid": "'  # how every record line begins (PairRecord.to_json)
_SIDE_SUFFIXES = (".settings.json", ".settings.json.tmp", ".compacting", ".lock", ".work")


def side_files(path: Path) -> list[Path]:
    """What a checkpoint at ``path`` writes beside it: settings (and temporary), compacted copy, lock, scratch."""
    return [path.with_name(path.name + suffix) for suffix in _SIDE_SUFFIXES]


class CheckpointError(InvalidInputError):
    """The checkpoint (the judgments JSONL) cannot be resumed by this run: other settings or texts, another run
    writing it, or a line that is not a record (a torn last line aside). Nothing in it is changed."""


class StorageError(Rank1Error, OSError):
    """An OS error on the run's files (a full disk, a file size limit, permissions): the run stopped, its
    checkpoint closed with every judgment written kept; the same command resumes once the cause is fixed."""


class PairState(NamedTuple):
    """A pair's latest record in the checkpoint."""

    judged: bool
    score: float | None
    forced: bool
    digest: str
    offset: int
    invalid: bool = False
    """Refused as invalid input (of the texts with ``digest``)."""


class Checkpoint(contextlib.AbstractContextManager["Checkpoint"]):
    """One run's judgments file, locked for this process while it is open."""

    def __init__(self, path: Path, *, fsync_interval: float = 5.0) -> None:
        self.path = path
        # work_dir: scratch space of the run holding the lock (indexes); removed at close, or by the next run.
        self.settings_path, _, self._compacting, lock_path, self.work_dir = side_files(path)
        self.fingerprint: str | None = None  # of its records' settings (None while it has none)
        self.records = 0  # lines read back at start
        self._fsync_interval = fsync_interval
        self._synced_at = time.monotonic()
        self._held = contextlib.ExitStack()  # released in reverse: the lock last
        try:
            self._held.callback(_unlock, _lock(lock_path, path), lock_path)
            # Unbuffered: a failed write leaves nothing pending that closing would try to write again.
            self._writer = self._held.enter_context(path.open("ab", buffering=0))
            shutil.rmtree(self.work_dir, ignore_errors=True)  # left by a killed run; the lock makes it ours
            self.work_dir.mkdir()
            self._held.callback(shutil.rmtree, self.work_dir, ignore_errors=True)
            self._reader = self._held.enter_context(path.open("rb"))
            self._db = self._held.enter_context(contextlib.closing(sqlite3.connect(self.work_dir / "state.sqlite")))
            self._db.executescript(
                "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                "CREATE TABLE pairs (qid TEXT, docid TEXT, judged INTEGER, score REAL, forced INTEGER, digest TEXT,"
                " offset INTEGER, invalid INTEGER, emitted INTEGER DEFAULT 0, new_offset INTEGER,"
                " PRIMARY KEY (qid, docid)) WITHOUT ROWID; CREATE INDEX pairs_by_offset ON pairs (offset);"
            )
            self._end = self._load()
            self._compacting.unlink(missing_ok=True)  # left by a run killed while compacting; the file itself is whole
        except BaseException:
            self._held.close()
            raise

    def _load(self) -> int:
        """Index every record, drop a torn last line, refuse any other line; returns where the next line goes."""
        offset = 0
        for number, line in enumerate(self._reader, start=1):
            try:
                if not line.endswith(b"\n"):
                    if not _torn(line):
                        raise ValueError("an unfinished last line that does not begin as a record")
                    logger.warning(
                        "%s: dropped a torn last line (%d bytes) left by an interrupted run", self.path, len(line)
                    )
                    self._writer.truncate(offset)
                    break
                record = PairRecord.from_json(line)
            except ValueError as err:
                raise CheckpointError(
                    f"{self.path}:{number} is not a judgment record ({err}); the file is not a checkpoint "
                    "of this tool, or was edited: pass another --reasoning file"
                ) from None
            if record.settings != (self.fingerprint or record.settings):
                raise CheckpointError(
                    f"{self.path}:{number} was judged with other settings than the lines before it "
                    f"({record.settings} != {self.fingerprint}): the file mixes runs and cannot be resumed"
                )
            self.fingerprint = record.settings
            self._remember(record, offset)
            self.records += 1
            offset += len(line)
        self._db.commit()
        return offset

    def check(self, settings: RunSettings) -> None:
        """Refuse ``settings`` unless its records were judged with them; an empty checkpoint takes them."""
        fingerprint = settings.fingerprint
        if self.fingerprint not in (None, fingerprint):
            detail = (
                "; ".join(theirs.differences(settings))
                if (theirs := self._written_settings()) is not None and theirs.fingerprint == self.fingerprint
                else f"settings fingerprint {self.fingerprint} != {fingerprint}"
            )
            raise CheckpointError(
                f"{self.path} holds judgments made with other settings (checkpoint != this run: {detail}); "
                "resume with the settings it was written with, or pass a new judgments file"
            )
        if self.fingerprint is None or not self.settings_path.exists():
            with write_atomically(self.settings_path) as out:
                out.write(json.dumps({"fingerprint": fingerprint, "settings": settings.to_dict()}, indent=2).encode())
            self.fingerprint = fingerprint

    def check_known(self, known: Mapping[str, Any]) -> bool:
        """:meth:`check` on the ``known`` settings alone (no engine needed): the rest are taken from the
        checkpoint's settings file. False where that cannot tell (no settings file, and not all are known)."""
        if self.fingerprint is None:
            return True  # nothing judged: the first judgments' settings will be taken
        if (theirs := self._written_settings()) is not None and theirs.fingerprint == self.fingerprint:
            self.check(dataclasses.replace(theirs, **known))
        elif known.keys() == {field.name for field in dataclasses.fields(RunSettings)}:
            self.check(RunSettings(**known))
        else:
            return False
        return True

    def _written_settings(self) -> RunSettings | None:
        try:
            return RunSettings.from_dict(json.loads(self.settings_path.read_bytes())["settings"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def states(self, qid: str, docids: Sequence[str]) -> dict[str, PairState]:
        """The latest state of each of the query's pairs that has a record."""
        sql = "SELECT docid, judged, score, forced, digest, offset, invalid FROM pairs WHERE qid = ? AND docid IN ({})"
        return {
            docid: PairState(bool(judged), score, bool(forced), digest, offset, bool(invalid))
            for docid, judged, score, forced, digest, offset, invalid in select_in(self._db, sql, docids, qid)
        }

    def append(self, records: Sequence[PairRecord]) -> None:
        """Write the records as whole lines, straight to the kernel; an ``OSError`` (a full disk) may leave
        a torn last line, which the next run drops: the run must stop there."""
        if (wrong := next((r for r in records if r.settings != self.fingerprint), None)) is not None:
            raise CheckpointError(
                f"a judgment was made with settings {wrong.settings}, not this checkpoint's {self.fingerprint}"
            )
        lines = [(record.to_json() + "\n").encode("utf-8", "surrogatepass") for record in records]
        data = memoryview(b"".join(lines))
        while data:  # a write may be cut short (the disk filling up): the rest follows, or fails
            data = data[self._writer.write(data) :]
        if time.monotonic() - self._synced_at >= self._fsync_interval:
            self._sync()
        offset = self._end
        for record, line in zip(records, lines, strict=True):
            self._remember(record, offset)
            offset += len(line)
        self._end = offset
        self._db.commit()

    def read(self, offset: int) -> bytes:
        """The line at ``offset`` (with its newline)."""
        self._reader.seek(offset)
        return self._reader.readline()

    def compact(self, order: Iterable[tuple[str, Sequence[str]]]) -> None:
        """Rewrite the file atomically, one line per pair: the run's pairs in ``order``, then any others as before."""
        self._sync()
        db = self._db

        def pairs() -> Iterator[tuple[str, str, int]]:
            for qid, docids in order:
                states = self.states(qid, docids)
                yield from ((qid, docid, states[docid].offset) for docid in docids if docid in states)
            last = -1
            others = "SELECT qid, docid, offset FROM pairs WHERE emitted = 0 AND offset > ? ORDER BY offset LIMIT 1000"
            while rows := db.execute(others, (last,)).fetchall():  # pairs outside this run, in file order
                yield from rows
                last = rows[-1][2]

        with write_atomically(self.path, self._compacting) as out:
            written = 0
            for qid, docid, offset in pairs():
                line = self.read(offset)
                out.write(line)
                db.execute(
                    "UPDATE pairs SET new_offset = ?, emitted = 1 WHERE qid = ? AND docid = ?", (written, qid, docid)
                )
                written += len(line)
        # Write and read the new file from now on (the lock file stays locked), and point the index at its lines.
        self._writer.close()
        self._reader.close()
        self._writer = self._held.enter_context(self.path.open("ab", buffering=0))
        self._reader = self._held.enter_context(self.path.open("rb"))
        db.execute("UPDATE pairs SET offset = new_offset, new_offset = NULL, emitted = 0")
        self._end = written
        db.commit()

    def close(self) -> None:
        """Release everything, whatever failed before (a sync that fails now loses nothing the next run needs)."""
        with contextlib.suppress(OSError, ValueError):
            self._sync()
        self._held.close()  # unbuffered files: nothing left to write

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _remember(self, r: PairRecord, offset: int) -> None:
        # A judged record is final; a failed one gives way to the next attempt.
        self._db.execute(
            "INSERT INTO pairs (qid, docid, judged, score, forced, digest, offset, invalid) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (qid, docid) DO UPDATE SET judged = excluded.judged, "
            "score = excluded.score, forced = excluded.forced, digest = excluded.digest, offset = excluded.offset, "
            "invalid = excluded.invalid WHERE pairs.judged = 0",
            (r.qid, r.docid, r.judged, r.score, r.forced, r.text_digest, offset, r.invalid),
        )

    def _sync(self) -> None:
        os.fsync(self._writer.fileno())  # a closed writer (a failed compaction) raises ValueError
        self._synced_at = time.monotonic()


def _torn(line: bytes) -> bool:
    """Whether an unterminated last line is an append cut short: a record's beginning, never other JSON."""
    if not (line.startswith(_RECORD_START) or _RECORD_START.startswith(line)):
        return False
    try:
        PairRecord.from_json(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return True  # cut short
    except ValueError:
        return False  # whole JSON, but not a record
    return True


def _lock(lock_path: Path, path: Path) -> int:
    """Lock ``path``'s checkpoint for this run: an exclusive lock on its lock file; returns the held descriptor."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CheckpointError(
                f"another run is writing {path}: wait for it, or pass another judgments file"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(lock_path)):
                return fd
        os.close(fd)  # the run before removed this lock file as it ended: lock the one now there


def _unlock(fd: int, lock_path: Path) -> None:
    """Remove the lock file while still holding it (a run that opened it meanwhile sees it gone), then release."""
    lock_path.unlink(missing_ok=True)
    os.close(fd)


@contextlib.contextmanager
def write_atomically(path: Path, temporary: Path | None = None) -> Iterator[IO[bytes]]:
    """Write ``temporary`` (default: ``path`` + ``.tmp``), sync, rename over ``path``: a kill leaves either whole."""
    temporary = temporary or path.with_name(path.name + ".tmp")
    with temporary.open("wb") as out:
        yield out
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    with contextlib.suppress(OSError):  # make the rename durable, where the platform can open a directory
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

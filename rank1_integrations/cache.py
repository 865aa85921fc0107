"""Result caches of judged passages: a chatbot that asks again about the same passage must not reason again.
A cache may only ever cost a miss: the reranker goes through :class:`GuardedCache`, so a failing cache
(a locked database, a full disk, a row of another shape) is logged once and judging goes on without it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from rank1_integrations.core.judgment import Judgment

__all__ = ["DiskCache", "GuardedCache", "JudgmentCache", "MemoryCache", "cache_key", "is_cacheable"]

logger = logging.getLogger("rank1_integrations.cache")

_KEY_VERSION = 2


def cache_key(
    *,
    model: str,
    template: str | None,
    query: str,
    passage: str,
    max_reasoning_tokens: int | None,
    context_size: int,
    how: Sequence[object] = ("full",),
) -> str:
    """A stable digest of everything a judgment depends on (``how``: the effort and what it depends on)."""
    material = json.dumps(
        [_KEY_VERSION, model, template, query, passage, max_reasoning_tokens, context_size, *how], ensure_ascii=False
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def is_cacheable(judgment: Any) -> bool:
    """Whether ``judgment`` is a well-formed judged :class:`Judgment` (what a cache may hold and return)."""
    if not isinstance(judgment, Judgment):
        return False
    score, tokens = judgment.score, judgment.reasoning_tokens
    return (
        isinstance(score, int | float)
        and not isinstance(score, bool)
        and 0.0 <= score <= 1.0  # a NaN or an infinity fails this too
        and type(tokens) is int
        and tokens >= 0
        and judgment.error is None
        and isinstance(judgment.relevant, bool)
        and all(isinstance(getattr(judgment, name), kind) for name, kind in _TYPES.items())
    )


_KINDS: dict[object, type] = {"bool": bool, "str": str}
_TYPES = {field.name: _KINDS[field.type] for field in dataclasses.fields(Judgment) if field.type in _KINDS}
"""The Judgment's own plain bool and str fields (``relevant`` may be None only when unjudged)."""


@runtime_checkable
class JudgmentCache(Protocol):
    """Where judgments are kept between calls; implementations must be thread-safe."""

    def get_many(self, keys: Sequence[str]) -> dict[str, Judgment]: ...

    def put_many(self, items: Mapping[str, Judgment]) -> None: ...


class GuardedCache:
    """Any :class:`JudgmentCache`, made harmless: its errors and bad entries become misses (the first one
    logged as a warning, later ones at debug level, so a broken cache neither fails calls nor floods the log)."""

    def __init__(self, cache: JudgmentCache) -> None:
        self.cache = cache
        self._warned = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"GuardedCache({self.cache!r})"

    def get_many(self, keys: Sequence[str]) -> dict[str, Judgment]:
        try:
            found = self.cache.get_many(keys)
            return {key: found[key] for key in keys if key in found and is_cacheable(found[key])}
        except Exception as err:  # any cache, any failure: a miss
            self._report("read from", err)
            return {}

    def put_many(self, items: Mapping[str, Judgment]) -> None:
        try:
            self.cache.put_many({key: judgment for key, judgment in items.items() if is_cacheable(judgment)})
        except Exception as err:  # any cache, any failure: judgments are returned, just not kept
            self._report("write to", err)

    def _report(self, action: str, err: Exception) -> None:
        with self._lock:
            first, self._warned = not self._warned, True
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "could not %s the judgment cache %r (%s: %s); judging goes on without it%s",
            action,
            self.cache,
            type(err).__name__,
            err,
            " (further cache errors are logged at DEBUG level)" if first else "",
        )


class MemoryCache:
    """A bounded in-process LRU cache (the default)."""

    def __init__(self, max_entries: int = 10_000) -> None:
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError("max_entries must be an int of at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Judgment] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, keys: Sequence[str]) -> dict[str, Judgment]:
        found: dict[str, Judgment] = {}
        with self._lock:
            for key in keys:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    found[key] = self._entries[key]
        return found

    def put_many(self, items: Mapping[str, Judgment]) -> None:
        with self._lock:
            for key, judgment in items.items():
                self._entries[key] = judgment
                self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


class DiskCache:
    """A cache in one SQLite file (WAL mode), shared across processes and restarts, keeping the ``max_entries``
    most recently written judgments. A writer waits at most ``busy_timeout`` seconds for another's lock."""

    def __init__(self, path: str | Path, *, max_entries: int = 1_000_000, busy_timeout: float = 2.0) -> None:
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError("max_entries must be an int of at least 1")
        self.path = Path(path)
        self.max_entries = max_entries
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Autocommit: each write is one explicit BEGIN IMMEDIATE transaction, which waits for
        # another process's write lock (a deferred one that reads first may fail at once in WAL).
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=busy_timeout, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS judgments (key TEXT PRIMARY KEY, judgment TEXT NOT NULL)")

    def __repr__(self) -> str:
        return f"DiskCache({str(self.path)!r})"

    def get_many(self, keys: Sequence[str]) -> dict[str, Judgment]:
        found: dict[str, Judgment] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT key, judgment FROM judgments WHERE key IN ({marks})", chunk)
                for key, text in rows:
                    try:  # a row of another shape: a miss
                        judgment = Judgment(**json.loads(text))
                    except (TypeError, ValueError):
                        continue
                    if is_cacheable(judgment):
                        found[key] = judgment
        return found

    def put_many(self, items: Mapping[str, Judgment]) -> None:
        rows = [(key, json.dumps(dataclasses.asdict(judgment))) for key, judgment in items.items()]
        with self._lock, self._db:  # one transaction: committed, or rolled back on any error
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR REPLACE INTO judgments (key, judgment) VALUES (?, ?)", rows)
            # Row ids grow with every write (a replaced row gets a new one): keep the newest.
            self._db.execute(
                "DELETE FROM judgments WHERE rowid <= (SELECT MAX(rowid) FROM judgments) - ?", (self.max_entries,)
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

"""Result caches: a chatbot that asks again about the same passage must not reason again.

A judgment depends on the model, the relevance template, the query, the passage, the
reasoning budget and the context size; the key covers all of them. Only judged
passages are stored, never failures.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from rank1_integrations.judgment import Judgment

__all__ = ["DiskCache", "JudgmentCache", "MemoryCache", "cache_key"]

_KEY_VERSION = 1


def cache_key(
    *, model: str, template: str | None, query: str, passage: str, max_reasoning_tokens: int, context_size: int
) -> str:
    """A stable digest of everything a judgment depends on."""
    material = json.dumps(
        [_KEY_VERSION, model, template, query, passage, max_reasoning_tokens, context_size], ensure_ascii=False
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


@runtime_checkable
class JudgmentCache(Protocol):
    """Where judgments are kept between calls; implementations must be thread-safe."""

    def get_many(self, keys: Sequence[str]) -> dict[str, Judgment]: ...

    def put_many(self, items: Mapping[str, Judgment]) -> None: ...


class MemoryCache:
    """A bounded in-process LRU cache (the default)."""

    def __init__(self, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
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
    """A cache in one SQLite file, shared across processes and restarts."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        with self._lock, self._db:
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
                found.update((key, Judgment(**json.loads(text))) for key, text in rows)
        return found

    def put_many(self, items: Mapping[str, Judgment]) -> None:
        rows: Iterable[tuple[str, str]] = (
            (key, json.dumps(dataclasses.asdict(judgment))) for key, judgment in items.items()
        )
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO judgments (key, judgment) VALUES (?, ?)", rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()

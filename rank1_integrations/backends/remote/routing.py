"""Which server gets the next request: a pure, thread-safe decision over server health.

How long a server has been failing is read from when its failed requests were *sent*: the time a
request was held before it timed out is no proof of an outage (the server may have answered others).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

__all__ = ["Router", "ServerHealth"]


@dataclass
class ServerHealth:
    url: str
    in_flight: int = 0
    consecutive_failures: int = 0
    down_until: float = 0.0
    failing_since: float | None = None  # when the first request failing since the last success was sent
    failing_until: float = 0.0  # when the last failed request was sent
    answered_at: float = 0.0
    disabled_reason: str | None = None
    successes: int = 0
    failures: int = 0


class Router:
    """Least-loaded choice among healthy servers, avoiding the ones a request already tried."""

    def __init__(
        self,
        servers: Sequence[str],
        *,
        base_cooldown: float = 1.0,
        max_cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not servers:
            raise ValueError("a router needs at least one server")
        self._servers = [ServerHealth(url) for url in servers]
        self._index = {url: i for i, url in enumerate(servers)}
        self._base_cooldown = base_cooldown
        self._max_cooldown = max_cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._turn = 0

    @property
    def servers(self) -> list[str]:
        return [server.url for server in self._servers]

    def health(self) -> list[ServerHealth]:
        """Copies of every server's state."""
        with self._lock:
            return [ServerHealth(**vars(server)) for server in self._servers]

    def pick(self, avoid: Collection[str] = ()) -> str:
        """Enabled, up and not in ``avoid`` (tried already), else up, else the one back soonest."""
        with self._lock:
            now = self._clock()
            enabled = [s for s in self._servers if s.disabled_reason is None] or self._servers
            up = [s for s in enabled if s.down_until <= now]
            fresh = [s for s in up if s.url not in avoid]
            candidates = fresh or up
            if not candidates:
                return min(enabled, key=lambda s: s.down_until).url
            # Least in flight; ties go round-robin so equal servers share the load.
            self._turn += 1
            count = len(self._servers)
            return min(candidates, key=lambda s: (s.in_flight, (self._index[s.url] - self._turn) % count)).url

    def can_route_around(self, url: str) -> bool:
        with self._lock:
            return any(s.url != url and s.disabled_reason is None for s in self._servers)

    def untried_server_up(self, tried: Collection[str]) -> bool:
        with self._lock:
            now = self._clock()
            return any(s.disabled_reason is None and s.down_until <= now and s.url not in tried for s in self._servers)

    def outage_seconds(self) -> float:
        """How long every enabled server has been failing (0 if one is not), from the sending of the
        first to the last of its failed requests."""
        with self._lock:
            enabled = [s for s in self._servers if s.disabled_reason is None] or self._servers
            spans = [s.failing_until - s.failing_since for s in enabled if s.failing_since is not None]
            return min(spans) if len(spans) == len(enabled) else 0.0

    def seconds_until_available(self, avoid: Collection[str] = ()) -> float:
        """How long until some enabled server is up, preferring ones not in ``avoid``."""
        with self._lock:
            now = self._clock()
            enabled = [s for s in self._servers if s.disabled_reason is None] or self._servers
            fresh = [s for s in enabled if s.url not in avoid] or enabled
            return max(0.0, min(s.down_until for s in fresh) - now)

    def started(self, url: str) -> float:
        """Count a request as sent; returns when (for :meth:`failed`)."""
        with self._lock:
            self._servers[self._index[url]].in_flight += 1
            return self._clock()

    def finished(self, url: str) -> None:
        with self._lock:
            server = self._servers[self._index[url]]
            server.in_flight = max(0, server.in_flight - 1)

    def succeeded(self, url: str) -> None:
        with self._lock:
            server = self._servers[self._index[url]]
            server.consecutive_failures = 0
            server.down_until = 0.0
            server.failing_since = None
            server.answered_at = self._clock()
            server.successes += 1

    def failed(self, url: str, *, sent: float | None = None, retry_after: float | None = None) -> None:
        """A failure that says the server is unwell, of a request ``sent`` then (None: now)."""
        with self._lock:
            now = self._clock()
            server = self._servers[self._index[url]]
            server.failures += 1
            sent = max(now if sent is None else sent, server.answered_at)  # it answered others since
            if server.failing_since is None:
                server.failing_since = sent
            server.failing_until = max(server.failing_until, sent)
            if now >= server.down_until:  # not a request that was in flight when the server went down
                server.consecutive_failures += 1
            cooldown = min(self._max_cooldown, self._base_cooldown * 2 ** max(0, server.consecutive_failures - 1))
            if retry_after is not None:  # the server said when to come back (already capped by the caller)
                cooldown = max(cooldown, retry_after)
            server.down_until = max(server.down_until, now + cooldown)

    def disable(self, url: str, reason: str) -> None:
        with self._lock:
            self._servers[self._index[url]].disabled_reason = reason

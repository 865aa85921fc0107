"""One error root with a small tree, so callers can catch by cause.

Library errors (vLLM, transformers, HTTP clients) are translated at the backend
boundary with ``raise ... from err``; nothing here carries secrets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rank1_integrations.core.judgment import Judgment

__all__ = [
    "BackendError",
    "IncompatibleServerError",
    "InvalidInputError",
    "MalformedResponseError",
    "MissingDependencyError",
    "ModelOutputError",
    "PassageFailure",
    "PassagesFailedError",
    "Rank1Error",
    "ServerConnectionError",
    "ServerStatusError",
    "ServerTimeoutError",
]


class Rank1Error(Exception):
    """Root of every error raised by rank1_integrations."""


class MissingDependencyError(Rank1Error, ImportError):
    """An optional dependency is not installed; the message names the extra."""

    def __init__(self, module: str, extras: Sequence[str], purpose: str) -> None:
        self.module = module
        self.extras = tuple(extras)
        # No extras: a core dependency is missing (a broken install); reinstalling brings it back.
        commands = " or ".join(f"pip install 'rank1-integrations[{extra}]'" for extra in self.extras)
        super().__init__(
            f"{purpose} needs the '{module}' package, which is not installed. "
            f"Install it with: {commands or 'pip install --force-reinstall rank1-integrations'}"
        )


class InvalidInputError(Rank1Error, ValueError):
    """The caller passed something rank1 cannot judge (empty query, non-string passage, ...)."""


class BackendError(Rank1Error):
    """The engine or server failed to produce completions (load failure, transport, timeout).

    ``server`` is the failing server's URL with any credentials removed (None: not a server's fault).
    """

    def __init__(self, message: str, *, server: str | None = None) -> None:
        super().__init__(message)
        self.server = server


class ServerConnectionError(BackendError):
    """A server could not be reached, or dropped the connection before answering."""


class ServerTimeoutError(ServerConnectionError):
    """A server did not answer within the request's timeout."""


class ServerStatusError(BackendError):
    """A server answered with an HTTP error status; ``retry_after`` is its Retry-After in seconds, if any."""

    def __init__(
        self, message: str, *, status: int, server: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, server=server)
        self.status = status
        self.retry_after = retry_after


class IncompatibleServerError(BackendError):
    """The server answered, but is not a vLLM server serving the requested model (or lacks a needed feature).

    Such a server is disabled for the rest of the process (``router.health()`` says why).
    """


class MalformedResponseError(IncompatibleServerError):
    """One answer was not a well-formed vLLM answer (not JSON, too large, a required field missing).

    A fault of that request, not proof that the server is incompatible: it is retried, the
    server cools down briefly, and it is never disabled for it.
    """


class ModelOutputError(Rank1Error):
    """The backend answered, but not with what the rank1 protocol needs (e.g. no label log-probabilities)."""


@dataclass(frozen=True)
class PassageFailure:
    """Why one passage could not be judged; ``batch`` is which (query, passages) pair of the call."""

    index: int
    error: Rank1Error
    batch: int = 0


class PassagesFailedError(BackendError):
    """Some passages of a call could not be judged; ``failures`` says which and why.

    Nothing judged is lost: ``batches`` holds every passage's judgment per (query, passages)
    pair of the call, ``None`` where it failed (the successes are also in the result cache);
    ``judgments`` is that list for a single-query call (``judge``/``ajudge``), and all of
    them in order for ``judge_many``.
    """

    def __init__(
        self, failures: Sequence[PassageFailure], total: int, *, batches: Sequence[Sequence[Judgment | None]] = ()
    ) -> None:
        self.batches = [list(batch) for batch in batches]
        self.judgments = [judgment for batch in self.batches for judgment in batch]
        self.failures = tuple(failures)
        indices = ", ".join(str(f.index) if f.batch == 0 else f"{f.batch}:{f.index}" for f in self.failures[:20])
        more = "" if len(self.failures) <= 20 else f" (+{len(self.failures) - 20} more)"
        first = self.failures[0].error if self.failures else None
        super().__init__(
            f"{len(self.failures)} of {total} passages could not be judged: indices {indices}{more}; "
            f"first cause: {first}"
        )

"""The batch runner's own errors (subclasses of the package's root tree)."""

from __future__ import annotations

from rank1_integrations.errors import InvalidInputError, Rank1Error

__all__ = ["CheckpointError", "IncompleteRunError", "StorageError"]


class CheckpointError(InvalidInputError):
    """The checkpoint (the judgments JSONL) cannot be resumed by this run: other settings or texts, another run
    writing it, or a line that is not a record (a torn last line aside). Nothing in it is changed."""


class IncompleteRunError(Rank1Error):
    """A run ended with pairs that could not be judged (their errors are in the checkpoint): the same command
    retries them, but for the ``invalid`` ones, attempted again only once their texts change."""

    def __init__(self, message: str, *, failed: int, total: int, invalid: int = 0) -> None:
        super().__init__(message)
        self.failed = failed
        self.total = total
        self.invalid = invalid
        """How many of the ``failed`` pairs are invalid input."""


class StorageError(Rank1Error, OSError):
    """An OS error on the run's files (a full disk, a file size limit, permissions): the run stopped, its
    checkpoint closed with every judgment written kept; the same command resumes once the cause is fixed."""

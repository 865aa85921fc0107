"""Pydantic settings both adapters share: bounded filter fields, assignments that are checked
like construction, and a server API key and URLs that never show in reprs or dumps.

Framework-free (pydantic only); the LangChain and LlamaIndex adapters declare their fields
with these types.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError

from rank1_integrations.backends.remote.config import redact_url, resolve_api_key
from rank1_integrations.errors import InvalidInputError

__all__ = [
    "MinKeep",
    "RollbackInvalidAssignment",
    "ScoreThreshold",
    "TopN",
    "api_key_from_env",
    "lift_api_key",
    "redacted_base_url",
    "redacted_repr_args",
]

TopN = Annotated[int, Field(strict=True, ge=0)] | None
"""``top_n``: an int >= 0 (``True`` is not a number of documents) or None."""
MinKeep = Annotated[int, Field(strict=True, ge=0)]
ScoreThreshold = Annotated[float, Field(strict=True, ge=0.0, le=1.0)] | None
"""``score_threshold``: a number in [0, 1] (ints accepted, bools not) or None."""


def api_key_from_env() -> SecretStr | None:
    """Default of the adapters' ``api_key``: ``RANK1_API_KEY``, else ``VLLM_API_KEY``, else None."""
    return resolve_api_key(None)


def lift_api_key(data: Any) -> Any:
    """Constructor data with an ``api_key`` given inside ``reranker_kwargs`` moved to the
    ``api_key`` field, so it is held as a ``SecretStr`` and never dumped as plain text."""
    if not isinstance(data, Mapping):
        return data
    kwargs = data.get("reranker_kwargs")
    if not isinstance(kwargs, Mapping) or "api_key" not in kwargs:
        return data
    if data.get("api_key") is not None:
        raise InvalidInputError("api_key is given twice: as api_key= and inside reranker_kwargs; pass it once")
    rest = {name: value for name, value in kwargs.items() if name != "api_key"}
    return {**data, "reranker_kwargs": rest, "api_key": kwargs["api_key"]}


def redacted_base_url(base_url: str | list[str] | None) -> str | list[str] | None:
    """``base_url`` without user info or query strings (either may carry a credential)."""
    if base_url is None:
        return None
    if isinstance(base_url, str):
        return redact_url(base_url)
    return [redact_url(url) for url in base_url]


def redacted_repr_args(args: Iterable[tuple[str | None, Any]]) -> Iterable[tuple[str | None, Any]]:
    """A pydantic ``__repr_args__`` with ``base_url`` redacted (``api_key`` is a ``SecretStr`` already)."""
    for name, value in args:
        yield name, redacted_base_url(value) if name == "base_url" else value


class RollbackInvalidAssignment:
    """With ``validate_assignment=True`` pydantic re-runs the model validators after it has
    stored the new value, and leaves it stored when they refuse it (e.g. ``top_n`` below
    ``min_keep``). This mixin puts the previous values back, so a refused assignment
    changes nothing."""

    def __setattr__(self, name: str, value: Any) -> None:
        before = dict(self.__dict__)
        try:
            super().__setattr__(name, value)
        except ValidationError:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

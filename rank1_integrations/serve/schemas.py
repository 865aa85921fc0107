"""The rerank APIs' requests (``/v1/rerank``, ``/rerank``: Jina / vLLM; ``/v2/rerank``: Cohere v2) and results.

Fields rank1 has no use for (Cohere's ``max_tokens_per_doc``, ...) are ignored; results add rank1's own fields.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from rank1_integrations.adapters.selection import Pick
from rank1_integrations.settings import Effort

__all__ = ["CohereRerankRequest", "JinaRerankRequest", "Result"]


def _document_text(value: object) -> object:
    # A string, or an object with a string "text" (Jina's and Cohere v1's form): one clear error otherwise.
    if isinstance(value, dict) and "text" in value:
        value = value["text"]
    if not isinstance(value, str):
        raise ValueError("a document must be a string or an object with a string 'text'")
    return value


class CohereRerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = None
    """The served model name; None: the server's (first) one."""
    query: StrictStr
    documents: list[Annotated[str, BeforeValidator(_document_text)]]
    top_n: Annotated[StrictInt, Field(ge=1)] | None = None
    """Return the best ``top_n`` documents; None: all of them, best first."""
    reasoning_effort: Effort | None = None
    """rank1's effort for this request; None: the server's."""
    max_reasoning_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    """The reasoning budget for this request, at most the server's; None: the server's."""

    @field_validator("query")
    @classmethod
    def _query_has_text(cls, query: str) -> str:
        if not query.strip():
            raise ValueError("query is empty")
        return query


class JinaRerankRequest(CohereRerankRequest):
    return_documents: StrictBool = True
    """Echo each document's text in its result (Jina's default)."""


class Result(BaseModel):
    """One ranked document: the API's ``index`` and ``relevance_score``, then rank1's own fields."""

    index: int
    relevance_score: float = Field(validation_alias="score")
    relevant: bool
    reasoning: str
    forced: bool
    reasoning_tokens: int
    reasoning_effort: str
    reasoned: bool
    document: dict[str, str] | None = None
    """Jina's echo of the document's text."""

    @classmethod
    def of(cls, pick: Pick, document: str | None = None) -> Result:
        echo = {"text": document} if document is not None else None
        return cls.model_validate(dataclasses.asdict(pick.judgment) | {"index": pick.index, "document": echo})

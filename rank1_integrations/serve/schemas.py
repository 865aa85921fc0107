"""Request and response bodies of the rerank APIs rank1-serve speaks.

``/v1/rerank`` and ``/rerank``: the Jina / vLLM shape. ``/v2/rerank``: Cohere's v2 shape.
Both take ``{model, query, documents, top_n}``, documents as strings or ``{"text": ...}``
objects; fields a client sends that rank1 has no use for (Cohere's ``max_tokens_per_doc``,
``priority``, ...) are ignored. Every result carries rank1's own fields besides the index and
score, which clients that do not know them ignore.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from rank1_integrations.settings import Effort

__all__ = [
    "ApiVersion",
    "BilledUnits",
    "CohereMeta",
    "CohereRerankRequest",
    "CohereRerankResponse",
    "CohereResult",
    "DocumentText",
    "ErrorBody",
    "ErrorInfo",
    "JinaRerankRequest",
    "JinaRerankResponse",
    "JinaResult",
    "ModelCard",
    "ModelList",
    "TextDocument",
    "Usage",
]


class TextDocument(BaseModel):
    """A document's text in a Jina result."""

    text: str


def _document_text(value: object) -> object:
    # A string, or an object with a string "text" (Jina's and Cohere v1's form): one clear error otherwise.
    if isinstance(value, dict) and "text" in value:
        value = value["text"]
    if not isinstance(value, str):
        raise ValueError("a document must be a string or an object with a string 'text'")
    return value


DocumentText = Annotated[str, BeforeValidator(_document_text)]


class _RerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = None
    """The served model name; None: the server's (first) one."""
    query: StrictStr
    documents: list[DocumentText]
    top_n: Annotated[StrictInt, Field(ge=1)] | None = None
    """Return the best ``top_n`` documents; None: all of them, best first."""
    reasoning_effort: Effort | None = None
    """rank1's effort for this request (``full``, ``none``, ``adaptive``); None: the server's."""
    max_reasoning_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    """The reasoning budget for this request, at most the server's; None: the server's."""

    @field_validator("query")
    @classmethod
    def _query_has_text(cls, query: str) -> str:
        if not query.strip():
            raise ValueError("query is empty")
        return query


class JinaRerankRequest(_RerankRequest):
    """``POST /v1/rerank`` and ``/rerank``."""

    return_documents: StrictBool = True
    """Echo each document's text in its result (Jina's default)."""


class CohereRerankRequest(_RerankRequest):
    """``POST /v2/rerank``."""


class CohereResult(BaseModel):
    """One ranked document: the API's ``index`` and ``relevance_score``, then rank1's own fields."""

    index: int
    """Position of the document in the request."""
    relevance_score: float
    """rank1's score: p(true) over true+false at the answer position."""
    relevant: bool
    """rank1's verdict."""
    reasoning: str
    """rank1's reasoning (cut back to a sentence end when the answer was forced)."""
    forced: bool
    """The reasoning ran out of budget and the answer was forced."""
    reasoning_tokens: int
    """Tokens of reasoning generated."""
    reasoning_effort: str
    """The effort this judgment was made with."""
    reasoned: bool
    """Whether rank1 reasoned (False: a no-think score)."""


class JinaResult(CohereResult):
    document: TextDocument | None = None


class Usage(BaseModel):
    total_tokens: int
    """Reasoning tokens behind the judgments returned (prompt tokens are not counted)."""


class JinaRerankResponse(BaseModel):
    id: str
    model: str
    usage: Usage
    results: list[JinaResult]


class ApiVersion(BaseModel):
    version: str = "2"


class BilledUnits(BaseModel):
    output_tokens: int
    """Reasoning tokens behind the judgments returned."""


class CohereMeta(BaseModel):
    api_version: ApiVersion = Field(default_factory=ApiVersion)
    billed_units: BilledUnits


class CohereRerankResponse(BaseModel):
    id: str
    results: list[CohereResult]
    meta: CohereMeta


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "rank1-integrations"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int
    """The HTTP status."""


class ErrorBody(BaseModel):
    """vLLM's (and OpenAI's) error body; the Cohere endpoint answers ``{"id", "message"}`` instead."""

    error: ErrorInfo

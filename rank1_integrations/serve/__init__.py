"""rank1 behind the rerank APIs every client already speaks: ``rank1-serve``.

``POST /v1/rerank`` and ``/rerank`` (Jina / vLLM shape), ``POST /v2/rerank`` (Cohere v2),
``GET /health``, ``GET /v1/models`` and Prometheus ``GET /metrics``, in front of one
``Rank1Reranker`` (an embedded engine, or vLLM servers through the remote backend).
Needs the ``serve`` extra (FastAPI, uvicorn, prometheus-client). See ``docs/serving.md``.
"""

from rank1_integrations._optional import require

require("fastapi", extras=("serve",), purpose="rank1_integrations.serve")

from rank1_integrations.serve.app import DEFAULT_DISCONNECT_GRACE, ModelNotFoundError, create_app  # noqa: E402
from rank1_integrations.serve.service import Limits, RequestTooLargeError  # noqa: E402

__all__ = ["DEFAULT_DISCONNECT_GRACE", "Limits", "ModelNotFoundError", "RequestTooLargeError", "create_app"]

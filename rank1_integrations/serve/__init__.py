"""``rank1-serve``: ``POST /v1/rerank``, ``/rerank`` (Jina / vLLM) and ``/v2/rerank`` (Cohere v2), ``GET /health``,
``/v1/models`` and Prometheus ``/metrics`` in front of one ``Rank1Reranker``; the ``serve`` extra, ``docs/serving.md``.
"""

from rank1_integrations._optional import require

require("fastapi", extras=("serve",), purpose="rank1_integrations.serve")

from rank1_integrations.serve.app import DEFAULT_DISCONNECT_GRACE, ModelNotFoundError, create_app  # noqa: E402
from rank1_integrations.serve.service import Limits, RequestTooLargeError  # noqa: E402

__all__ = ["DEFAULT_DISCONNECT_GRACE", "Limits", "ModelNotFoundError", "RequestTooLargeError", "create_app"]

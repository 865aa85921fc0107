"""The rank1-serve ASGI app (FastAPI): the rerank APIs in front of one ``Rank1Reranker``.

The app only translates: HTTP bodies to a query and documents for the
:class:`~.service.RerankService`, its rankings to the API's response shape, and errors to
the API's 4xx/5xx JSON (never a stack trace). It builds no prompts and never talks to an
engine or server itself. A client that disconnects cancels its request, which releases its
share of the in-flight judgments (aborted in the engine when nobody else waits for them,
after a short grace in which a retry can join them).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, SecretStr
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rank1_integrations import __version__
from rank1_integrations.adapters.selection import Pick
from rank1_integrations.errors import (
    BackendError,
    InvalidInputError,
    ModelOutputError,
    PassagesFailedError,
    Rank1Error,
    ServerConnectionError,
    ServerTimeoutError,
)
from rank1_integrations.reranker import Rank1Reranker
from rank1_integrations.serve.metrics import ServeMetrics
from rank1_integrations.serve.schemas import (
    BilledUnits,
    CohereMeta,
    CohereRerankRequest,
    CohereRerankResponse,
    CohereResult,
    ErrorBody,
    ErrorInfo,
    JinaRerankRequest,
    JinaRerankResponse,
    JinaResult,
    ModelCard,
    ModelList,
    TextDocument,
    Usage,
)
from rank1_integrations.serve.service import Limits, Ranking, RequestTooLargeError, RerankService

__all__ = ["DEFAULT_DISCONNECT_GRACE", "ModelNotFoundError", "create_app"]

logger = logging.getLogger("rank1_integrations.serve")

OPEN_PATHS = frozenset({"/health", "/metrics"})
"""Answered without an API key (load balancers and Prometheus scrapers)."""
_ENDPOINTS = frozenset({"/v1/rerank", "/v2/rerank", "/rerank", "/v1/models", "/health", "/metrics"})
_CLIENT_CLOSED = 499  # nginx's status for a request whose client went away; never reaches the client
_RETRY_AFTER = 5
"""Seconds a client is told to wait before retrying a request the server cancelled as it stopped."""

DEFAULT_DISCONNECT_GRACE = 2.0
"""Seconds a judgment keeps running after the last client waiting for it disconnected."""


class ModelNotFoundError(InvalidInputError):
    """The request names a model this server does not serve (HTTP 404)."""


def create_app(
    reranker: Rank1Reranker,
    *,
    served_model_names: Sequence[str] | None = None,
    api_key: str | SecretStr | None = None,
    limits: Limits | None = None,
    disconnect_grace: float = DEFAULT_DISCONNECT_GRACE,
    owns_reranker: bool = False,
) -> FastAPI:
    """An app serving ``reranker`` under ``served_model_names`` (default: the backend's model name).

    With ``api_key`` every endpoint but ``/health`` and ``/metrics`` needs
    ``Authorization: Bearer <api_key>`` (the key stripped of surrounding whitespace, which no
    client can send). Bodies over ``limits.max_body_bytes`` are refused unread. When a client
    disconnects, the judgments only it waited for keep running ``disconnect_grace`` seconds (a
    retry joins them), then are aborted. With ``owns_reranker`` the app closes the reranker when it shuts down (after
    its running requests); otherwise the caller keeps it.
    """
    names = list(served_model_names or [reranker.backend.model_name])
    if not names or not all(isinstance(name, str) and name for name in names):
        raise InvalidInputError("served_model_names must be non-empty strings")
    key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
    if key is not None and (not isinstance(key, str) or not key.strip()):
        raise InvalidInputError("api_key must be a non-empty string (or None for no key)")
    if key is not None:
        # HTTP strips the whitespace around a header value: no client can send a key that has some
        # (a key read from a secret file often ends in a newline), and unstripped it locks all out.
        key = key.strip()
    grace = disconnect_grace
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not 0 <= grace < math.inf:
        raise InvalidInputError(f"disconnect_grace must be a finite number of seconds >= 0, got {grace!r}")
    metrics = ServeMetrics()
    service = RerankService(
        reranker, limits=limits or Limits(), metrics=metrics, disconnect_grace=float(disconnect_grace)
    )
    metrics.watch(service.in_flight)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.in_flight.cancel_all()  # work still lingering after its clients left
        if owns_reranker:
            await asyncio.to_thread(reranker.close)  # an embedded engine finishes what it runs first
            logger.info("rank1-serve stopped; the reranker is closed")

    app = FastAPI(title="rank1-serve", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.service = service
    app.state.metrics = metrics
    # Added innermost first: the key is checked before the body is read, and _Measure sees every answer.
    assert service.limits.max_body_bytes is not None  # Limits derives it when not given
    app.add_middleware(_LimitBody, max_bytes=service.limits.max_body_bytes)
    if key is not None:
        app.add_middleware(_RequireKey, key=key.encode())
    app.add_middleware(_Measure, metrics=metrics)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Rank1Error, _rank1_error)
    app.add_exception_handler(Exception, _unexpected_error)

    def model_for(requested: str | None) -> str:
        if requested is None:
            return names[0]
        if requested not in names:
            raise ModelNotFoundError(f"the model {requested!r} is not served here; served: {', '.join(names)}")
        return requested

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models() -> Response:
        cards = [ModelCard(id=name, created=created, max_model_len=reranker.context_size) for name in names]
        return _json(ModelList(data=cards))

    @app.post("/v1/rerank")
    @app.post("/rerank")
    async def rerank_jina(body: JinaRerankRequest, request: Request) -> Response:
        model = model_for(body.model)
        ranking = await _unless_disconnected(
            request,
            service.rerank(body.query, body.documents, body.top_n, body.reasoning_effort, body.max_reasoning_tokens),
        )
        if ranking is None:
            return Response(status_code=_CLIENT_CLOSED)
        results = [
            JinaResult(
                **_result_fields(pick),
                document=TextDocument(text=body.documents[pick.index]) if body.return_documents else None,
            )
            for pick in ranking.picks
        ]
        usage = Usage(total_tokens=ranking.reasoning_tokens)
        return _json(JinaRerankResponse(id=_request_id(), model=model, usage=usage, results=results))

    @app.post("/v2/rerank")
    async def rerank_cohere(body: CohereRerankRequest, request: Request) -> Response:
        model_for(body.model)
        ranking = await _unless_disconnected(
            request,
            service.rerank(body.query, body.documents, body.top_n, body.reasoning_effort, body.max_reasoning_tokens),
        )
        if ranking is None:
            return Response(status_code=_CLIENT_CLOSED)
        results = [CohereResult(**_result_fields(pick)) for pick in ranking.picks]
        meta = CohereMeta(billed_units=BilledUnits(output_tokens=ranking.reasoning_tokens))
        return _json(CohereRerankResponse(id=_request_id(), results=results, meta=meta))

    return app


def _result_fields(pick: Pick) -> dict[str, Any]:
    j = pick.judgment
    return {
        "index": pick.index,
        "relevance_score": j.score,
        "relevant": bool(j.relevant),
        "reasoning": j.reasoning,
        "forced": j.forced,
        "reasoning_tokens": j.reasoning_tokens,
        "reasoning_effort": j.reasoning_effort,
        "reasoned": j.reasoned,
    }


def _request_id() -> str:
    return f"rerank-{uuid.uuid4().hex}"


def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(exclude_none=True), status_code=status, media_type="application/json")


async def _unless_disconnected(request: Request, work: Coroutine[Any, Any, Ranking]) -> Ranking | None:
    """``work``'s result, or None when the client disconnected first (``work`` is then cancelled).

    The body is already read, so the request's receive channel only says when the client goes.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this handler is cancelled (shutdown past its grace period)
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    return None


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


# -- errors: the API's JSON shape, safe messages -------------------------------------------


def error_response(path: str, status: int, kind: str, message: str, param: str | None = None) -> JSONResponse:
    """Cohere's ``{"id", "message"}`` on ``/v2/...``; vLLM's (OpenAI's) ``{"error": {...}}`` elsewhere."""
    if path.startswith("/v2/"):
        return JSONResponse({"id": _request_id(), "message": message}, status_code=status)
    body = ErrorBody(error=ErrorInfo(message=message, type=kind, param=param, code=status))
    return JSONResponse(body.model_dump(), status_code=status)


async def _invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    path = request.url.path
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        return error_response(path, 400, "invalid_request", "the request body is not valid JSON")
    if isinstance(exc.body, bytes):  # FastAPI parses JSON only when the client says it is JSON
        return error_response(
            path, 415, "unsupported_media_type", "send the body as JSON (Content-Type: application/json)"
        )
    problems = []
    for error in errors[:5]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        what = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append(f"{where}: {what}" if where else what)
    first = errors[0].get("loc", ()) if errors else ()
    param = ".".join(str(part) for part in first if part != "body") or None
    return error_response(path, 422, "invalid_request", "; ".join(problems), param)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    response = error_response(request.url.path, exc.status_code, kind, str(exc.detail))
    response.headers.update(exc.headers or {})
    return response


_RANK1_STATUS: tuple[tuple[type[Rank1Error], int, str], ...] = (
    (RequestTooLargeError, 413, "request_too_large"),
    (ModelNotFoundError, 404, "model_not_found"),
    (InvalidInputError, 400, "invalid_request"),
    (ServerTimeoutError, 504, "upstream_timeout"),
    (ServerConnectionError, 503, "upstream_unavailable"),
    (BackendError, 502, "backend_error"),
    (ModelOutputError, 502, "model_output_error"),
)


async def _rank1_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Rank1Error)
    status, kind = _status_of(exc)
    if status < 500:
        # Our own validation: the message names what is wrong with the request, nothing more.
        return error_response(request.url.path, status, kind, str(exc))
    # Backend failures may name upstream servers: the client learns the kind, the log the details.
    logger.warning("rerank failed (%s): %s", type(exc).__name__, exc)
    message = f"rank1 could not judge the documents: {type(exc).__name__}"
    return error_response(request.url.path, status, kind, message)


def _status_of(exc: Rank1Error) -> tuple[int, str]:
    # Failed passages: by what made them fail (every upstream unreachable is a 503, worth a retry).
    causes = [f.error for f in exc.failures] if isinstance(exc, PassagesFailedError) and exc.failures else [exc]
    for kind_of, status, kind in _RANK1_STATUS:
        if all(isinstance(cause, kind_of) for cause in causes):
            return status, kind
    return 500, "internal_error"


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.error("unexpected error answering %s", request.url.path, exc_info=exc)
    return error_response(request.url.path, 500, "internal_error", "internal server error")


# -- ASGI middleware (pure ASGI: a client's disconnect still reaches the handler) -------------


class _RequireKey:
    """Refuses requests without ``Authorization: Bearer <key>`` (401), before reading their body."""

    def __init__(self, app: ASGIApp, *, key: bytes) -> None:
        self.app = app
        self._key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
            response = error_response(scope["path"], 401, "unauthorized", "a valid API key is required")
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                # Constant-time: the comparison takes as long whatever the token shares with the key.
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)
        return False


class _LimitBody:
    """Refuses a body over ``max_bytes`` (413) before it is parsed: by its ``Content-Length``, or while
    reading it (chunked bodies too). The app then reads the body from here."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        over = declared.isdigit() and int(declared) > self.max_bytes  # the server refuses a malformed one
        received: list[Message] = []
        size = 0
        while not over:
            received.append(message := await receive())
            size += len(message.get("body", b""))
            over = size > self.max_bytes
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        if over:
            text = f"the request body is larger than this server's limit of {self.max_bytes} bytes"
            await error_response(scope["path"], 413, "request_too_large", text)(scope, receive, send)
            return
        replay = iter(received)

        async def replayed() -> Message:
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)


class _Measure:
    """Counts requests by endpoint and status, times them, and tracks those in progress.

    A request cancelled before its answer started (SIGTERM past the grace period) is answered
    503 with ``Retry-After``, in the API's JSON, instead of the ASGI server's plain-text 500.
    """

    def __init__(self, app: ASGIApp, *, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in _ENDPOINTS else "other"
        status: int | None = None  # None: no response started

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        started = time.perf_counter()
        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_and_note)
        except asyncio.CancelledError:
            if status is not None:
                raise
            # Only the server cancels a request (a client that goes away is told through receive): it is
            # stopping, past its grace period. A retry, to another replica or after the restart, can succeed.
            message = "the server is shutting down: send the request again"
            response = error_response(scope["path"], 503, "shutting_down", message)
            response.headers["Retry-After"] = str(_RETRY_AFTER)
            await response(scope, receive, send_and_note)
        finally:
            self.metrics.in_progress.dec()
            # 500: an exception escaped to the server
            self.metrics.requests.labels(endpoint, str(status or 500)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

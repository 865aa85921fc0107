"""The rank1-serve ASGI app: HTTP bodies to the :class:`~.service.RerankService`, its rankings to the API's
shape, errors to the API's 4xx/5xx JSON (never a stack trace). A client that disconnects cancels its request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr, TypeAdapter
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rank1_integrations import __version__, errors
from rank1_integrations.reranker import Rank1Reranker
from rank1_integrations.serve.schemas import CohereRerankRequest, JinaRerankRequest, Result
from rank1_integrations.serve.service import Limits, Ranking, RequestTooLargeError, RerankService, ServeMetrics

__all__ = ["DEFAULT_DISCONNECT_GRACE", "ModelNotFoundError", "create_app"]

logger = logging.getLogger("rank1_integrations.serve")

OPEN_PATHS = frozenset({"/health", "/metrics"})  # no API key: load balancers and Prometheus scrapers
_ENDPOINTS = frozenset({"/v1/rerank", "/v2/rerank", "/rerank", "/v1/models", "/health", "/metrics"})
_CLIENT_CLOSED = 499  # nginx's status for a request whose client went away; never reaches the client
_RETRY_AFTER = "5"  # seconds a client waits to retry a request the server cancelled as it stopped
_BODY = TypeAdapter(dict[str, Any])  # serializes the results inside as their models do

DEFAULT_DISCONNECT_GRACE = 2.0
"""Seconds a judgment keeps running after the last client waiting for it disconnected."""


class ModelNotFoundError(errors.InvalidInputError):
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

    With ``api_key`` every endpoint but ``/health`` and ``/metrics`` needs ``Authorization: Bearer <api_key>``;
    with ``owns_reranker`` the app closes the reranker when it shuts down.
    """
    names = list(served_model_names or [reranker.backend.model_name])
    # HTTP strips the whitespace around a header value: no client can send a key that has some
    # (a key read from a secret file often ends in a newline), and unstripped it locks all out.
    key = (api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key or "").strip()
    service = RerankService(reranker, limits=limits or Limits(), disconnect_grace=disconnect_grace)
    card = {"object": "model", "created": int(time.time()), "owned_by": "rank1-integrations"}
    cards = [card | {"id": name, "max_model_len": reranker.context_size} for name in names]

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.in_flight.cancel_all()  # work still lingering after its clients left
        if owns_reranker:
            await asyncio.to_thread(reranker.close)  # an embedded engine finishes what it runs first
            logger.info("rank1-serve stopped; the reranker is closed")

    app = FastAPI(title="rank1-serve", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.metrics = service.metrics
    app.add_middleware(
        _Edge, metrics=service.metrics, key=key.encode() or None, max_bytes=service.limits.max_body_bytes
    )
    for error in (RequestValidationError, HTTPException, errors.Rank1Error, Exception):
        app.add_exception_handler(error, _error_response)

    async def ranked(body: CohereRerankRequest, request: Request) -> Ranking | None:
        """The service's ranking, or None when the client disconnected first (the work is then cancelled)."""
        if body.model is not None and body.model not in names:
            raise ModelNotFoundError(f"the model {body.model!r} is not served here; served: {', '.join(names)}")
        args = (body.query, body.documents, body.top_n, body.reasoning_effort, body.max_reasoning_tokens)
        return await _unless_disconnected(request, service.rerank(*args))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": cards}

    @app.post("/v1/rerank")
    @app.post("/rerank")
    async def rerank_jina(body: JinaRerankRequest, request: Request) -> Response:
        if (ranking := await ranked(body, request)) is None:
            return Response(status_code=_CLIENT_CLOSED)
        echo = body.return_documents
        results = [Result.of(pick, body.documents[pick.index] if echo else None) for pick in ranking.picks]
        usage = {"total_tokens": ranking.reasoning_tokens}  # behind the judgments returned (prompt tokens not counted)
        return _json({"id": _request_id(), "model": body.model or names[0], "usage": usage, "results": results})

    @app.post("/v2/rerank")
    async def rerank_cohere(body: CohereRerankRequest, request: Request) -> Response:
        if (ranking := await ranked(body, request)) is None:
            return Response(status_code=_CLIENT_CLOSED)
        meta = {"api_version": {"version": "2"}, "billed_units": {"output_tokens": ranking.reasoning_tokens}}
        results = [Result.of(pick) for pick in ranking.picks]
        return _json({"id": _request_id(), "results": results, "meta": meta})

    return app


def _request_id() -> str:
    return f"rerank-{uuid.uuid4().hex}"


def _json(body: dict[str, Any]) -> Response:
    return Response(_BODY.dump_json(body, exclude_none=True), media_type="application/json")


async def _unless_disconnected(request: Request, work: Coroutine[Any, Any, Ranking]) -> Ranking | None:
    # The body is already read: the request's receive channel only says when the client goes.
    async def disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this handler is cancelled (shutdown past its grace period)
        watcher.cancel()
        task.cancel()  # nothing, when it is done
    return task.result() if task.done() else None


def error_response(
    path: str, status: int, kind: str, message: str, param: str | None = None, headers: Any = None
) -> JSONResponse:
    """Cohere's ``{"id", "message"}`` on ``/v2/...``; vLLM's (OpenAI's) ``{"error": {...}}`` elsewhere."""
    if path.startswith("/v2/"):
        body: dict[str, Any] = {"id": _request_id(), "message": message}
    else:
        body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


_RANK1_STATUS: tuple[tuple[type[errors.Rank1Error], int, str], ...] = (
    (RequestTooLargeError, 413, "request_too_large"),
    (ModelNotFoundError, 404, "model_not_found"),
    (errors.InvalidInputError, 400, "invalid_request"),
    (errors.ServerTimeoutError, 504, "upstream_timeout"),
    (errors.ServerConnectionError, 503, "upstream_unavailable"),
    (errors.BackendError, 502, "backend_error"),
    (errors.ModelOutputError, 502, "model_output_error"),
)


async def _error_response(request: Request, exc: Exception) -> Response:
    path = request.url.path
    if isinstance(exc, RequestValidationError):
        found = list(exc.errors())
        if any(error.get("type") == "json_invalid" for error in found):
            return error_response(path, 400, "invalid_request", "the request body is not valid JSON")
        if isinstance(exc.body, bytes):  # FastAPI parses JSON only when the client says it is JSON
            text = "send the body as JSON (Content-Type: application/json)"
            return error_response(path, 415, "unsupported_media_type", text)
        wheres = [".".join(str(part) for part in error.get("loc", ()) if part != "body") for error in found]
        whats = [str(error.get("msg", "invalid")).removeprefix("Value error, ") for error in found]
        problems = [f"{where}: {what}" if where else what for where, what in list(zip(wheres, whats, strict=True))[:5]]
        return error_response(path, 422, "invalid_request", "; ".join(problems), wheres[0] if wheres else None)
    if isinstance(exc, HTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(path, exc.status_code, kind, str(exc.detail), headers=exc.headers)
    if not isinstance(exc, errors.Rank1Error):
        logger.error("unexpected error answering %s", path, exc_info=exc)
        return error_response(path, 500, "internal_error", "internal server error")
    # Failed passages: by what made them fail (every upstream unreachable is a 503, worth a retry).
    causes = [f.error for f in exc.failures] if isinstance(exc, errors.PassagesFailedError) and exc.failures else [exc]
    status, kind = next(
        ((status, kind) for cls, status, kind in _RANK1_STATUS if all(isinstance(c, cls) for c in causes)),
        (500, "internal_error"),
    )
    if status < 500:  # our own validation: the message names what is wrong with the request, nothing more
        return error_response(path, status, kind, str(exc))
    # Backend failures may name upstream servers: the client learns the kind, the log the details.
    logger.warning("rerank failed (%s): %s", type(exc).__name__, exc)
    return error_response(path, status, kind, f"rank1 could not judge the documents: {type(exc).__name__}")


class _Edge:
    """Metrics, the API key (before the body is read) and the body limit (before it is parsed).

    Pure ASGI, so that a client's disconnect still reaches the handler. Only the server cancels a request
    (past its shutdown grace; a client that leaves is told through receive): one cancelled before its answer
    started gets the API's JSON 503 with ``Retry-After`` (a retry can succeed elsewhere), not a plain 500.
    """

    def __init__(self, app: ASGIApp, *, metrics: ServeMetrics, key: bytes | None, max_bytes: int) -> None:
        self.app, self.metrics, self.key, self.max_bytes = app, metrics, key, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        status: int | None = None  # None: no response started

        async def noted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        started = time.perf_counter()
        self.metrics.in_progress.inc()
        try:
            await self._guarded(scope, receive, noted)
        except asyncio.CancelledError:
            if status is not None:
                raise
            message = "the server is shutting down: send the request again"
            response = error_response(path, 503, "shutting_down", message, headers={"Retry-After": _RETRY_AFTER})
            await response(scope, receive, noted)
        finally:
            self.metrics.in_progress.dec()
            endpoint = path if path in _ENDPOINTS else "other"
            self.metrics.requests.labels(endpoint, str(status or 500)).inc()  # 500: an exception escaped
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, headers = scope["path"], dict(scope["headers"])
        if self.key is not None and path not in OPEN_PATHS:
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            # Constant-time: the comparison takes as long whatever the token shares with the key.
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)):
                refusal = error_response(path, 401, "unauthorized", "a valid API key is required")
                refusal.headers["WWW-Authenticate"] = "Bearer"
                return await refusal(scope, receive, send)
        declared = headers.get(b"content-length", b"")
        over = declared.isdigit() and int(declared) > self.max_bytes  # the server refuses a malformed one
        received: list[Message] = []
        size = 0
        while not over:  # chunked bodies too: counted while they are read
            received.append(message := await receive())
            size += len(message.get("body", b""))
            over = size > self.max_bytes
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        if over:
            text = f"the request body is larger than this server's limit of {self.max_bytes} bytes"
            return await error_response(path, 413, "request_too_large", text)(scope, receive, send)
        replay = iter(received)

        async def replayed() -> Message:
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)

"""Remote backend: rank1 on one or more vLLM OpenAI-compatible servers, sync and async.

A thin driver around :class:`~rank1_integrations.backends.remote.core.RemoteCore`: it
sends the HTTP calls the core asks for (with the ``openai`` client), retries them
with ``tenacity`` on the core's policy and hands the outcomes back. All network I/O
runs on one private event loop (:class:`~rank1_integrations.backends.remote.io_loop.BackgroundLoop`),
whoever calls (threads, or tasks on other event loops): one code path, one connection
pool per server and one bound of ``max_concurrency`` requests in flight. See
``docs/remote.md``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import weakref
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from pydantic import SecretStr

from rank1_integrations._optional import require
from rank1_integrations.backends.base import CompletionRequest, CompletionResult, ResultSink
from rank1_integrations.backends.remote.config import ServerURL, resolve_api_key
from rank1_integrations.backends.remote.core import HttpCall, Job, RemoteCore
from rank1_integrations.backends.remote.io_loop import BackgroundLoop
from rank1_integrations.backends.remote.routing import Router
from rank1_integrations.backends.remote.tokenizer import RemoteTokenizer, local_or_server
from rank1_integrations.core.tokenization import PromptTokenizer
from rank1_integrations.errors import (
    IncompatibleServerError,
    InvalidInputError,
    MalformedResponseError,
    Rank1Error,
)
from rank1_integrations.settings import TRANSPORT_FIELDS, Rank1Settings

__all__ = ["RemoteBackend"]

logger = logging.getLogger("rank1_integrations.backends.remote.backend")


class RemoteBackend:
    """Completes rank1 requests on vLLM servers over HTTP (a :class:`~rank1_integrations.backends.base.Backend`).

    Construction talks to the servers once: it checks that each serves ``model``
    (``/v1/models``), reads ``max_model_len`` there and sets up the server's
    tokenizer (``/tokenize``, ``/detokenize``, ``/tokenizer_info``). Servers that
    cannot be reached then are routed around until they answer.

    Args:
        base_url: One server (``http://host:8000/v1``) or a list of replicas. Credentials in a
            URL (``http://user:password@host/v1``) are sent as HTTP Basic auth, never shown.
        model: The served model name; None takes the only model the servers serve.
        api_key: Bearer key; None reads ``RANK1_API_KEY`` then ``VLLM_API_KEY``. Never shown.
        verify: TLS verification for https servers: True, a CA bundle path or an ``ssl.SSLContext``.
        tokenizer: How prompts are tokenized. None (default): with a local copy of the served
            model's tokenizer when one loads offline and agrees with the server's on probe
            texts (no round trip per prompt), else with the server's ``/tokenize``. A name or
            path (or a ``PromptTokenizer``): that tokenizer, checked the same way. ``"server"``:
            always the server's endpoints (the light install needs no ``transformers``).
        extra_protected: More strings that data may never turn into tokens of their own.
        **settings: Transport fields of :class:`~rank1_integrations.settings.Rank1Settings`
            (``timeout``, ``max_retries``, ``retry_budget``, ``max_concurrency``, backoff, ...).
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
        model: str | None = None,
        *,
        api_key: str | SecretStr | None = None,
        verify: bool | str | ssl.SSLContext = True,
        tokenizer: PromptTokenizer | str | None = None,
        extra_protected: Sequence[str] = (),
        **settings: Any,
    ) -> None:
        self._openai = require("openai", extras=(), purpose="The remote backend")
        unknown = sorted(set(settings) - set(TRANSPORT_FIELDS))
        if unknown:
            raise InvalidInputError(
                f"{', '.join(unknown)}: not a remote backend setting ({', '.join(TRANSPORT_FIELDS)})"
            )
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise InvalidInputError("base_url names no server")
        if model is not None and (not isinstance(model, str) or not model):
            raise InvalidInputError(f"model must be a non-empty string, got {model!r}")
        self._core = RemoteCore(
            servers=tuple(ServerURL.parse(url) for url in urls),
            model=model or "",
            settings=Rank1Settings.model_construct().replace(**settings),
            api_key=resolve_api_key(api_key),
        )
        self._verify = _tls_verification(verify)
        self._slots = asyncio.Semaphore(self._core.settings.max_concurrency)
        self._clients: dict[str, Any] = {}  # touched only on the I/O loop
        self._io = BackgroundLoop(name="rank1-remote-io")
        # Closes the loop, its thread and the connections even if close() is never called.
        self._finalizer = weakref.finalize(self, self._io.close, _closer(self._clients))
        try:
            self._max_model_len = self._io.run(self._discover())
            served = RemoteTokenizer(self._core, self.call, extra_protected=extra_protected)
            self._tokenizer = local_or_server(tokenizer, served, extra_protected=extra_protected)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        servers = [server.display for server in self._core.servers]
        return (
            f"{type(self).__name__}(model={self._core.model!r}, servers={servers}, max_model_len={self._max_model_len})"
        )

    @property
    def model_name(self) -> str:
        return self._core.model

    @property
    def tokenizer(self) -> PromptTokenizer:
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def settings(self) -> Rank1Settings:
        return self._core.settings

    @property
    def router(self) -> Router:
        """Where requests go, and each server's health (``router.health()``, for monitoring)."""
        return self._core.router

    # -- Backend ------------------------------------------------------------------------

    def submit(self, requests: Sequence[CompletionRequest], on_result: ResultSink) -> Future[Any]:
        """Send the requests (``max_concurrency`` at a time); ``on_result`` hears of each as its answer comes.

        Cancelling the future closes the requests still in flight (vLLM then aborts them).
        """
        return self._io.submit(self._complete(requests, on_result))

    def call(self, call: HttpCall) -> Any:
        """The JSON body of one HTTP call (retried on the core's policy); raises the last typed error."""
        return self._io.run(self._call(call))

    def close(self) -> None:
        """Cancel running requests and close every connection; later calls raise ``BackendError``."""
        self._finalizer()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> RemoteBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> RemoteBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the driver (on the I/O loop) -----------------------------------------------------

    async def _complete(self, requests: Sequence[CompletionRequest], on_result: ResultSink) -> None:
        async def run(job: Job) -> None:
            for position, result in zip(job.positions, await self._run_job(job), strict=True):
                on_result(position, result)

        jobs = [asyncio.ensure_future(run(job)) for job in self._core.plan_jobs(requests)]
        try:
            await asyncio.gather(*jobs)
        finally:  # a bug in one job (or a cancel) stops the others too
            for job in jobs:
                job.cancel()

    async def _run_job(self, job: Job) -> list[CompletionResult]:
        steps = self._core.run_job(job)
        outcome: Any = None
        try:
            while True:
                call = steps.send(outcome)
                try:
                    outcome = await self._call(call)
                except Rank1Error as err:
                    outcome = err
        except StopIteration as done:
            result: list[CompletionResult] = done.value
            return result

    async def _call(self, call: HttpCall) -> Any:
        from tenacity import AsyncRetrying

        tried: list[str] = []
        body: Any = None
        async for attempt in AsyncRetrying(**self._core.retry_arguments(call, tried)):
            with attempt:
                body = await self._attempt(call, tried)
        return body

    async def _attempt(self, call: HttpCall, tried: list[str]) -> Any:
        core = self._core
        async with self._slots:
            # Chosen once the request may go: chosen while it waited, every waiting request
            # would pick the server least loaded back then, all the same one.
            server = core.pick_server(call, tried)
            sent = core.router.started(server)
            try:
                # The whole attempt, however slowly the answer trickles in (httpx's timeouts are per read).
                content = await asyncio.wait_for(self._send(server, call), timeout=call.timeout)
                body = core.decode(content, call, server)
            except Exception as err:
                error = core.translate_error(err, server, call)
                if error is None:  # not the server's fault: our bug or environment, raised as it is
                    raise
                core.record_failure(server, error, sent)
            else:
                core.router.succeeded(server)
                return body
            finally:
                core.router.finished(server)
        # Raised here, outside the handler, so that no library error (whose text may hold what
        # a server echoed, an API key included) is chained to it.
        raise error

    async def _send(self, server: str, call: HttpCall) -> bytes:
        """One HTTP call, every endpoint the same way: the raw body of a successful answer."""
        timeout = self._openai.Timeout(call.timeout, connect=min(self._core.settings.connect_timeout, call.timeout))
        client = self._clients.get(server) or self._clients.setdefault(server, self._client(server))
        url = self._core.url_for(call, server)
        options = {"timeout": timeout}
        if call.body is None:
            content = await client.get(url, cast_to=bytes, options=options)
        else:
            content = await client.post(url, cast_to=bytes, body=dict(call.body), options=options)
        return bytes(content)

    def _client(self, display: str) -> Any:
        server = self._core.server(display)
        auth = (server.auth[0], server.auth[1].get_secret_value()) if server.auth else None
        http_client = self._openai.DefaultAsyncHttpxClient(
            verify=self._verify,
            auth=auth,
            event_hooks={"response": [_body_limit(self._openai, self._core.settings.max_response_bytes, display)]},
        )
        return self._openai.AsyncOpenAI(
            base_url=server.api,
            api_key=self._core.api_key_value,
            max_retries=0,  # tenacity owns the retry policy
            timeout=self._core.settings.metadata_timeout,
            http_client=http_client,
        )

    async def _discover(self) -> int:
        """Check every server's model list; the smallest ``max_model_len`` of those that answer."""
        servers = [server.display for server in self._core.servers]
        answers = await asyncio.gather(
            *(self._call(self._core.models_call(server)) for server in servers), return_exceptions=True
        )
        lengths: dict[str, int] = {}
        first_error: Rank1Error | None = None
        for server, answer in zip(servers, answers, strict=True):
            if isinstance(answer, IncompatibleServerError) and not isinstance(answer, MalformedResponseError):
                raise answer
            if isinstance(answer, Rank1Error) and self._core.is_retryable(answer):
                logger.warning("server %s is not answering (%s); routing around it for now", server, answer)
                first_error = first_error or answer
                continue
            if isinstance(answer, BaseException):
                raise answer
            lengths[server] = self._core.max_model_len(answer, server)
        if not lengths:
            assert first_error is not None
            raise first_error
        if len(set(lengths.values())) > 1:
            logger.warning("servers report different max_model_len %s; using the smallest", lengths)
        return min(lengths.values())


def _closer(clients: dict[str, Any]) -> Any:
    async def close_clients() -> None:
        for client in list(clients.values()):
            await client.close()
        clients.clear()

    return close_clients


def _body_limit(openai: Any, limit: int, server: str) -> Any:
    """An httpx response hook that refuses an answer larger than ``limit`` bytes, before it is read whole."""
    http = http_library(openai)

    def too_large(size: str) -> MalformedResponseError:
        message = f"{server} sent an answer of {size} bytes, over max_response_bytes"
        return MalformedResponseError(message, server=server)

    class BoundedStream(http.AsyncByteStream):  # type: ignore[misc,name-defined]
        def __init__(self, stream: Any) -> None:
            self._stream = stream

        async def __aiter__(self) -> Any:
            received = 0
            async for chunk in self._stream:
                received += len(chunk)
                if received > limit:
                    raise too_large(f"more than {limit}")
                yield chunk

        async def aclose(self) -> None:
            await self._stream.aclose()

    async def hook(response: Any) -> None:
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_large(length)
        response.stream = BoundedStream(response.stream)

    return hook


def http_library(openai: Any) -> Any:
    """The HTTP library the openai client is built on: httpx, or httpx2 from openai 3 on."""
    base = next(c for c in openai.DefaultAsyncHttpxClient.__mro__ if not c.__module__.startswith("openai"))
    return sys.modules[base.__module__.partition(".")[0]]


def _tls_verification(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    """A CA bundle path becomes an SSL context (httpx deprecates ``verify=<str>``)."""
    if not isinstance(verify, str):
        return verify
    try:
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as err:
        raise InvalidInputError(f"verify={verify!r} is not a readable CA bundle: {err}") from err

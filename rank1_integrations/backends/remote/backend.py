"""Remote backend: sends what :class:`.core.RemoteCore` asks for (``openai`` client, ``tenacity`` retries).

All network I/O runs on one private event loop on a daemon thread, whoever calls: one connection
pool per server and one bound of ``max_concurrency`` requests in flight.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import ssl
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from pydantic import SecretStr

from rank1_integrations._optional import require
from rank1_integrations.backends.base import BackendInfo, CompletionRequest, CompletionResult, ResultSink
from rank1_integrations.backends.remote.config import API_KEY_ENV_VARS, ServerURL, redact_url, resolve_api_key
from rank1_integrations.backends.remote.core import HttpCall, Job, RemoteCore
from rank1_integrations.backends.remote.routing import Router
from rank1_integrations.backends.remote.tokenizer import RemoteTokenizer, local_or_server
from rank1_integrations.backends.remote.wire import error_detail, retry_after
from rank1_integrations.core.tokenization import PromptTokenizer
from rank1_integrations.errors import (
    BackendError,
    IncompatibleServerError,
    InvalidInputError,
    MalformedResponseError,
    Rank1Error,
    ServerConnectionError,
    ServerStatusError,
    ServerTimeoutError,
)
from rank1_integrations.settings import TRANSPORT_FIELDS, Rank1Settings

__all__ = ["RemoteBackend"]

logger = logging.getLogger("rank1_integrations.backends.remote.backend")

T = TypeVar("T")


class RemoteBackend(BackendInfo):
    """Completes rank1 requests on vLLM servers over HTTP; arguments and policy: ``docs/remote.md``.

    Construction checks that each server serves ``model`` (None: the only one served); servers that do
    not answer then are routed around until they do."""

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
        if isinstance(verify, str):  # a CA bundle path: httpx deprecates verify=<str>
            try:
                verify = ssl.create_default_context(cafile=verify)
            except (OSError, ssl.SSLError) as err:
                raise InvalidInputError(f"verify={verify!r} is not a readable CA bundle: {err}") from err
        self._verify = verify
        self._slots = asyncio.Semaphore(self._core.settings.max_concurrency)
        self._clients: dict[str, Any] = {}  # touched only on the I/O loop
        self._io = _IOLoop()

        async def close_clients(clients: dict[str, Any] = self._clients) -> None:
            for client in clients.values():
                await client.close()

        # Even if close() is never called.
        self._finalizer = weakref.finalize(self, self._io.close, close_clients)
        try:
            self._max_model_len = self._io.run(self._discover())
            self._model_name = self._core.model
            served = RemoteTokenizer(self._core, self.call, extra_protected=extra_protected)
            self._tokenizer = local_or_server(tokenizer, served, extra_protected=extra_protected)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        model, servers = self._model_name, self._core.router.servers
        return f"{type(self).__name__}(model={model!r}, servers={servers}, max_model_len={self._max_model_len})"

    @property
    def settings(self) -> Rank1Settings:
        return self._core.settings

    @property
    def router(self) -> Router:
        """Where requests go, and each server's health (``router.health()``, for monitoring)."""
        return self._core.router

    def submit(self, requests: Sequence[CompletionRequest], on_result: ResultSink) -> concurrent.futures.Future[Any]:
        """Cancelling the future closes the requests still in flight (vLLM then aborts them)."""
        return self._io.submit(self._complete(requests, on_result))

    def call(self, call: HttpCall) -> Any:
        """The JSON body of one HTTP call (retried on the core's policy); raises the last typed error."""
        return self._io.run(self._call(call))

    def close(self) -> None:
        """Cancel running requests and close every connection; later calls raise ``BackendError``."""
        self._finalizer()

    async def _complete(self, requests: Sequence[CompletionRequest], on_result: ResultSink) -> None:
        async def run(job: Job) -> None:
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
                results: list[CompletionResult] = done.value
            for position, result in zip(job.positions, results, strict=True):
                on_result(position, result)

        jobs = [asyncio.ensure_future(run(job)) for job in self._core.plan_jobs(requests)]
        try:
            await asyncio.gather(*jobs)
        finally:  # a bug in one job (or a cancel) stops the others too
            for job in jobs:
                job.cancel()

    async def _call(self, call: HttpCall) -> Any:
        from tenacity import AsyncRetrying

        tried: list[str] = []
        async for attempt in AsyncRetrying(**self._core.retry_arguments(call, tried)):
            with attempt:
                return await self._attempt(call, tried)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _attempt(self, call: HttpCall, tried: list[str]) -> Any:
        core = self._core
        async with self._slots:
            # Chosen once the request may go: chosen while it waited, every waiting request
            # would pick the server least loaded back then, all the same one.
            server = call.server if call.server is not None else core.router.pick(tried)
            tried.append(server)
            sent = core.router.started(server)
            try:
                # The whole attempt, however slowly the answer trickles in (httpx's timeouts are per read).
                content = await asyncio.wait_for(self._send(server, call), timeout=call.timeout)
                body = core.decode(content, call, server)
            except Exception as err:
                error = translate_error(core, err, server, call)
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
        timeout = self._openai.Timeout(call.timeout, connect=min(self._core.settings.connect_timeout, call.timeout))
        client = self._clients.get(server) or self._clients.setdefault(server, self._client(server))
        url, options = self._core.url_for(call, server), {"timeout": timeout}
        if call.body is None:
            return bytes(await client.get(url, cast_to=bytes, options=options))
        return bytes(await client.post(url, cast_to=bytes, body=dict(call.body), options=options))

    def _client(self, name: str) -> Any:
        server, api_key = self._core.server(name), self._core.api_key
        auth = (server.auth[0], server.auth[1].get_secret_value()) if server.auth else None
        hook = _body_limit(self._openai, self._core.settings.max_response_bytes, name)
        return self._openai.AsyncOpenAI(
            base_url=server.api,
            api_key=api_key.get_secret_value() if api_key is not None else "EMPTY",  # vLLM's "no key"
            max_retries=0,  # tenacity owns the retry policy
            http_client=self._openai.DefaultAsyncHttpxClient(
                verify=self._verify, auth=auth, event_hooks={"response": [hook]}
            ),
        )

    async def _discover(self) -> int:
        """The smallest ``max_model_len`` of the servers that answer."""
        servers = self._core.router.servers
        calls = (self._call(self._core.meta_call("models", server)) for server in servers)
        answers = await asyncio.gather(*calls, return_exceptions=True)
        lengths: dict[str, int] = {}
        down: list[Rank1Error] = []
        for server, answer in zip(servers, answers, strict=True):
            if isinstance(answer, IncompatibleServerError) and not isinstance(answer, MalformedResponseError):
                raise answer
            if isinstance(answer, Rank1Error) and self._core.is_retryable(answer):
                logger.warning("server %s is not answering (%s); routing around it for now", server, answer)
                down.append(answer)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                lengths[server] = self._core.max_model_len(answer, server)
        if not lengths:
            raise down[0]
        if len(set(lengths.values())) > 1:
            logger.warning("servers report different max_model_len %s; using the smallest", lengths)
        return min(lengths.values())


def translate_error(core: RemoteCore, err: BaseException, server: str, call: HttpCall) -> Rank1Error | None:
    """A transport or HTTP error as this project's error, with nothing secret in it; None for anything
    else (a bug, a missing package): not the server's fault, so raised as it is."""
    import openai

    where = redact_url(core.url_for(call, server))
    if isinstance(err, Rank1Error):
        return err
    if isinstance(err, openai.APITimeoutError | TimeoutError | asyncio.TimeoutError):
        return ServerTimeoutError(f"{where} did not answer within {call.timeout:.0f} s", server=server)
    if isinstance(err, openai.APIConnectionError):
        cause = err.__cause__ or err.__context__
        if isinstance(cause, Rank1Error):  # raised by our own hook while the answer was read
            return cause
        detail = f": {type(cause).__name__}" if cause is not None else ""
        if cause is not None and str(cause):
            detail += f" ({core.scrub(str(cause))[:200]})"
        return ServerConnectionError(f"could not reach {where}{detail}", server=server)
    if isinstance(err, openai.APIStatusError):
        status = err.status_code
        hint = ""
        if status == 401:
            hint = f" (the server needs an API key: pass api_key= or set {API_KEY_ENV_VARS[0]})"
        elif status == 404 and call.endpoint in ("tokenize", "detokenize"):
            hint = " (rank1 needs vLLM's /tokenize and /detokenize endpoints: is this a vLLM server?)"
        return ServerStatusError(
            f"{where} answered HTTP {status}{hint}: {core.scrub(error_detail(err.body))}",
            status=status,
            server=server,
            retry_after=retry_after(err.response.headers, core.settings.retry_budget),
        )
    return None


class _IOLoop:
    """An event loop on its own daemon thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rank1-remote-io", daemon=True)
        self._lock = threading.Lock()
        self._closed = False
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        with self._lock:
            if self._closed:
                coroutine.close()
                raise _closed_error()
            return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("a blocking call was made from the backend's own event loop thread")
        future = self.submit(coroutine)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise _closed_error() from None
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: stop the work too
            raise

    def close(self, cleanup: Callable[[], Awaitable[None]]) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True

        async def shutdown() -> None:
            running = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await cleanup()

        if threading.current_thread() is self._thread:  # closed from a callback on the loop: never block
            self._loop.call_soon(self._loop.stop)
            return
        # If the loop is stuck, give up waiting: its daemon thread dies with the process.
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


def _closed_error() -> BackendError:
    return BackendError("the backend is closed (close() was called): make a new one")


def _body_limit(openai: Any, limit: int, server: str) -> Any:
    """An httpx response hook that refuses an answer over ``limit`` bytes before it is read whole."""
    http = http_library(openai)

    def too_large(size: str) -> MalformedResponseError:
        return MalformedResponseError(
            f"{server} sent an answer of {size} bytes, over max_response_bytes", server=server
        )

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

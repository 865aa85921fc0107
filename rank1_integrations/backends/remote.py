"""Remote backend: rank1 on one or more vLLM OpenAI-compatible servers, sync and async.

Two thin drivers around :class:`~rank1_integrations.backends.remote_core.RemoteCore`:
they only send the HTTP calls the core asks for (with the ``openai`` client), retry
them with ``tenacity`` on the core's policy and hand the outcomes back. The sync
driver runs jobs on a thread pool, the async one on the event loop; both keep at
most ``max_concurrency`` HTTP requests in flight. See ``docs/remote.md``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import weakref
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

from pydantic import SecretStr

from rank1_integrations.backends.base import CompletionRequest, CompletionResult
from rank1_integrations.backends.remote_core import (
    HttpCall,
    Job,
    RemoteCore,
    RemoteSettings,
    ServerURL,
    resolve_api_key,
)
from rank1_integrations.backends.remote_tokenizer import RemoteTokenizer
from rank1_integrations.backends.remote_wire import OPENAI_COMPLETION_PARAMS
from rank1_integrations.backends.routing import Router
from rank1_integrations.errors import (
    IncompatibleServerError,
    InvalidInputError,
    Rank1Error,
)
from rank1_integrations.tokenization import PromptTokenizer

__all__ = ["RemoteBackend"]

logger = logging.getLogger("rank1_integrations.backends.remote")

_SETTING_NAMES = frozenset(f.name for f in fields(RemoteSettings))


@dataclass
class _LoopState:
    """Async clients and the concurrency bound of one event loop (httpx pools are loop-bound)."""

    clients: dict[str, Any]
    slots: asyncio.Semaphore


class RemoteBackend:
    """Completes rank1 requests on vLLM servers over HTTP; implements ``Backend`` and ``AsyncBackend``.

    Construction talks to the servers once: it checks that each serves ``model``
    (``/v1/models``), reads ``max_model_len`` there and sets up the server's
    tokenizer (``/tokenize``, ``/detokenize``, ``/tokenizer_info``). Servers that
    cannot be reached then are routed around until they answer.

    Args:
        base_url: One server (``http://host:8000/v1``) or a list of replicas.
        model: The served model name; None takes the only model the servers serve.
        api_key: Bearer key; None reads ``RANK1_API_KEY`` then ``VLLM_API_KEY``. Never shown.
        verify: TLS verification for https servers: True, a CA bundle path or an ``ssl.SSLContext``.
        tokenizer: A local tokenizer to use instead of the server's endpoints (must be the server's).
        extra_protected: More strings that data may never turn into tokens of their own.
        **settings: Fields of :class:`RemoteSettings` (``timeout``, ``max_retries``,
            ``max_concurrency``, ``prompts_per_request``, backoff, ...).
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
        model: str | None = None,
        *,
        api_key: str | SecretStr | None = None,
        verify: bool | str | ssl.SSLContext = True,
        tokenizer: PromptTokenizer | None = None,
        extra_protected: Sequence[str] = (),
        **settings: Any,
    ) -> None:
        unknown = sorted(set(settings) - _SETTING_NAMES)
        if unknown:
            raise InvalidInputError(f"unknown remote settings {unknown}; valid ones: {sorted(_SETTING_NAMES)}")
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise InvalidInputError("base_url names no server")
        if model is not None and (not isinstance(model, str) or not model):
            raise InvalidInputError(f"model must be a non-empty string, got {model!r}")
        self._core = RemoteCore(
            servers=tuple(ServerURL.parse(url) for url in urls),
            model=model or "",
            settings=RemoteSettings(**settings),
            api_key=resolve_api_key(api_key),
        )
        self._verify = _tls_verification(verify)
        self._clients = {server.display: self._sync_client(server) for server in self._core.servers}
        self._slots = threading.BoundedSemaphore(self._core.settings.max_concurrency)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()
        try:
            self._max_model_len = self._discover()
            self._tokenizer: PromptTokenizer = (
                tokenizer
                if tokenizer is not None
                else RemoteTokenizer(self._core, self._call, extra_protected=extra_protected)
            )
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
    def settings(self) -> RemoteSettings:
        return self._core.settings

    @property
    def router(self) -> Router:
        """Where requests go, and each server's health (``router.health()``, for monitoring)."""
        return self._core.router

    # -- Backend ----------------------------------------------------------------------

    def complete(self, requests: Sequence[CompletionRequest]) -> list[CompletionResult]:
        """Complete every request, up to ``max_concurrency`` HTTP requests at once on a thread pool."""
        if not requests:
            return []
        jobs = self._core.plan_jobs(requests)
        if len(jobs) == 1:
            outcomes = [self._run_job(jobs[0])]
        else:
            workers = min(len(jobs), self._core.settings.max_concurrency)
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rank1-remote") as pool:
                outcomes = list(pool.map(self._run_job, jobs))
        return self._core.assemble(len(requests), jobs, outcomes)

    async def acomplete(self, requests: Sequence[CompletionRequest]) -> list[CompletionResult]:
        """Complete every request concurrently on the event loop, up to ``max_concurrency`` at once."""
        if not requests:
            return []
        jobs = self._core.plan_jobs(requests)
        outcomes = await asyncio.gather(*(self._arun_job(job) for job in jobs))
        return self._core.assemble(len(requests), jobs, outcomes)

    def close(self) -> None:
        """Close the synchronous connection pools (async ones close with :meth:`aclose`)."""
        for client in self._clients.values():
            client.close()

    async def aclose(self) -> None:
        """Close this event loop's connection pools and the synchronous ones."""
        state = self._loops.pop(asyncio.get_running_loop(), None)
        if state is not None:
            for client in state.clients.values():
                await client.close()
        self.close()

    def __enter__(self) -> RemoteBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> RemoteBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- sync driver ------------------------------------------------------------------

    def _run_job(self, job: Job) -> list[CompletionResult]:
        return _drive(self._core.run_job(job), self._call_outcome)

    def _call_outcome(self, call: HttpCall) -> Any:
        try:
            return self._call(call)
        except Rank1Error as err:
            return err

    def _call(self, call: HttpCall) -> Any:
        """The JSON body of one call, retried on the core's policy; raises the last typed error."""
        from tenacity import Retrying

        tried: list[str] = []
        body: Any = None
        for attempt in Retrying(**self._core.retry_arguments(call, tried)):
            with attempt:
                body = self._attempt(call, tried)
        return body

    def _attempt(self, call: HttpCall, tried: list[str]) -> Any:
        server = self._core.pick_server(call, tried)
        router = self._core.router
        with self._slots:
            router.started(server)
            try:
                body = self._send(server, call)
                self._core.check_response(call, body, server)
            except Exception as err:
                raise self._failure(server, call, err) from _cause(err)
            finally:
                router.finished(server)
        router.succeeded(server)
        return body

    def _send(self, server: str, call: HttpCall) -> Any:
        import httpx2

        client = self._clients[server]
        timeout = httpx2.Timeout(call.timeout, connect=min(self._core.settings.connect_timeout, call.timeout))
        if call.endpoint == "completions":
            params, extra = _split_completion_body(call)
            raw = client.completions.with_raw_response.create(**params, extra_body=extra, timeout=timeout)
            return raw.http_response.json()
        url = self._core.url_for(call, server)
        if call.body is None:
            response = client.get(url, cast_to=httpx2.Response, options={"timeout": timeout})
        else:
            response = client.post(url, cast_to=httpx2.Response, body=dict(call.body), options={"timeout": timeout})
        return response.json()

    # -- async driver -----------------------------------------------------------------

    async def _arun_job(self, job: Job) -> list[CompletionResult]:
        steps = self._core.run_job(job)
        outcome: Any = None
        try:
            while True:
                call = steps.send(outcome)
                try:
                    outcome = await self._acall(call)
                except Rank1Error as err:
                    outcome = err
        except StopIteration as done:
            result: list[CompletionResult] = done.value
            return result

    async def _acall(self, call: HttpCall) -> Any:
        from tenacity import AsyncRetrying

        tried: list[str] = []
        body: Any = None
        async for attempt in AsyncRetrying(**self._core.retry_arguments(call, tried)):
            with attempt:
                body = await self._aattempt(call, tried)
        return body

    async def _aattempt(self, call: HttpCall, tried: list[str]) -> Any:
        state = self._loop_state()
        server = self._core.pick_server(call, tried)
        router = self._core.router
        async with state.slots:
            router.started(server)
            try:
                # The read timeout bounds waits between bytes; this bounds the whole call.
                total = call.timeout + self._core.settings.connect_timeout
                body = await asyncio.wait_for(self._asend(state, server, call), timeout=total)
                self._core.check_response(call, body, server)
            except Exception as err:
                raise self._failure(server, call, err) from _cause(err)
            finally:
                router.finished(server)
        router.succeeded(server)
        return body

    async def _asend(self, state: _LoopState, server: str, call: HttpCall) -> Any:
        import httpx2

        client = state.clients.get(server)
        if client is None:
            client = state.clients[server] = self._async_client(self._core.server(server))
        timeout = httpx2.Timeout(call.timeout, connect=min(self._core.settings.connect_timeout, call.timeout))
        if call.endpoint == "completions":
            params, extra = _split_completion_body(call)
            raw = await client.completions.with_raw_response.create(**params, extra_body=extra, timeout=timeout)
            return raw.http_response.json()
        url = self._core.url_for(call, server)
        if call.body is None:
            response = await client.get(url, cast_to=httpx2.Response, options={"timeout": timeout})
        else:
            response = await client.post(
                url, cast_to=httpx2.Response, body=dict(call.body), options={"timeout": timeout}
            )
        return response.json()

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopState({}, asyncio.Semaphore(self._core.settings.max_concurrency))
        return state

    # -- shared -----------------------------------------------------------------------

    def _failure(self, server: str, call: HttpCall, err: Exception) -> Rank1Error:
        error = self._core.translate_error(err, server, call)
        self._core.record_failure(server, error)
        return error

    def _sync_client(self, server: ServerURL) -> Any:
        import openai

        http_client = openai.DefaultHttpxClient(verify=self._verify) if self._verify is not True else None
        return openai.OpenAI(
            base_url=server.api,
            api_key=self._core.api_key_value,
            max_retries=0,  # tenacity owns the retry policy
            timeout=self._core.settings.metadata_timeout,
            http_client=http_client,
        )

    def _async_client(self, server: ServerURL) -> Any:
        import openai

        http_client = openai.DefaultAsyncHttpxClient(verify=self._verify) if self._verify is not True else None
        return openai.AsyncOpenAI(
            base_url=server.api,
            api_key=self._core.api_key_value,
            max_retries=0,
            timeout=self._core.settings.metadata_timeout,
            http_client=http_client,
        )

    def _discover(self) -> int:
        """Check every server's model list; the smallest ``max_model_len`` of those that answer."""
        lengths: dict[str, int] = {}
        first_error: Rank1Error | None = None
        for server in self._core.servers:
            try:
                body = self._call(self._core.models_call(server.display))
            except IncompatibleServerError:
                raise
            except Rank1Error as err:
                if self._core.is_retryable(err):
                    logger.warning("server %s is not answering (%s); routing around it for now", server.display, err)
                    first_error = first_error or err
                    continue
                raise
            lengths[server.display] = self._core.max_model_len(body, server.display)
        if not lengths:
            assert first_error is not None
            raise first_error
        if len(set(lengths.values())) > 1:
            logger.warning("servers report different max_model_len %s; using the smallest", lengths)
        return min(lengths.values())


def _drive(steps: Generator[HttpCall, Any, list[CompletionResult]], call: Any) -> list[CompletionResult]:
    """Run a sans-I/O job generator to the end with a synchronous ``call``."""
    outcome: Any = None
    try:
        while True:
            outcome = call(steps.send(outcome))
    except StopIteration as done:
        result: list[CompletionResult] = done.value
        return result


def _tls_verification(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    """A CA bundle path becomes an SSL context (httpx deprecates ``verify=<str>``)."""
    if not isinstance(verify, str):
        return verify
    try:
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as err:
        raise InvalidInputError(f"verify={verify!r} is not a readable CA bundle: {err}") from err


def _split_completion_body(call: HttpCall) -> tuple[dict[str, Any], dict[str, Any]]:
    body = dict(call.body or {})
    params = {key: value for key, value in body.items() if key in OPENAI_COMPLETION_PARAMS}
    extra = {key: value for key, value in body.items() if key not in OPENAI_COMPLETION_PARAMS}
    return params, extra


def _cause(err: Exception) -> Exception | None:
    """The exception to chain: the library error, never our own error chained to itself."""
    return None if isinstance(err, Rank1Error) else err

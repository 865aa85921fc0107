"""The I/O-free core of the remote backend: what to send, how to read it, when to retry.

The driver (:mod:`.backend`) only sends the calls it is given. A batch is cut into *jobs* (equal
sampling settings, ``prompts_per_request`` prompts each), each the generator :meth:`RemoteCore.run_job`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import SecretStr
from tenacity import RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from rank1_integrations.backends.base import Completion, CompletionRequest, CompletionResult
from rank1_integrations.backends.remote import wire
from rank1_integrations.backends.remote.config import ServerURL, redact_url
from rank1_integrations.backends.remote.routing import Router
from rank1_integrations.errors import (
    IncompatibleServerError,
    InvalidInputError,
    MalformedResponseError,
    Rank1Error,
    ServerConnectionError,
    ServerStatusError,
)
from rank1_integrations.settings import Rank1Settings

__all__ = ["Endpoint", "HttpCall", "Job", "RemoteCore"]

logger = logging.getLogger("rank1_integrations.backends.remote.backend")

Endpoint = Literal["completions", "models", "tokenize", "detokenize", "tokenizer_info"]

# 408 Request Timeout, 425 Too Early, 429 Too Many Requests, and 5xx can change on a retry.
_RETRYABLE_STATUS = frozenset({408, 425, 429})


@dataclass(frozen=True)
class HttpCall:
    """One HTTP call to make; ``server`` pins it to one server (else the router chooses)."""

    endpoint: Endpoint
    body: Mapping[str, Any] | None
    timeout: float
    server: str | None = None

    @property
    def path(self) -> str:
        """``/v1/completions`` and ``/v1/models`` live under the API base, the rest at the root."""
        return f"/v1/{self.endpoint}" if self.endpoint in ("completions", "models") else f"/{self.endpoint}"


@dataclass(frozen=True)
class Job:
    """Requests sent together, and their positions in the batch."""

    positions: tuple[int, ...]
    requests: tuple[CompletionRequest, ...]


@dataclass
class RemoteCore:
    """Every decision of the remote backend that involves no I/O; one per backend."""

    servers: tuple[ServerURL, ...]
    model: str
    settings: Rank1Settings
    api_key: SecretStr | None = None
    router: Router = field(init=False)
    label_ids_supported: bool = True  # False once a server has rejected logprob_token_ids (vLLM < 0.32)

    def __post_init__(self) -> None:
        names = [server.api for server in self.servers]  # in logs, errors and router.health()
        if len(set(names)) != len(names):
            raise InvalidInputError(f"the same server is listed twice: {names}")
        if self.api_key is not None and any(server.auth for server in self.servers):
            raise InvalidInputError(
                "give either an API key or credentials in a server URL, not both: both would go in the "
                "Authorization header"
            )
        self.router = Router(names, base_cooldown=self.settings.initial_backoff, max_cooldown=self.settings.max_backoff)
        self._by_name = dict(zip(names, self.servers, strict=True))

    def completion_timeout(self, max_tokens: int) -> float:
        if self.settings.timeout is not None:
            return float(self.settings.timeout)
        return self.settings.base_timeout + self.settings.seconds_per_token * max_tokens

    def server(self, name: str) -> ServerURL:
        return self._by_name[name]

    def meta_call(self, endpoint: Endpoint, server: str | None = None, **body: Any) -> HttpCall:
        """A GET without ``body``, else a POST of ``body`` for the model."""
        return HttpCall(
            endpoint, {"model": self.model, **body} if body else None, self.settings.metadata_timeout, server
        )

    def plan_jobs(self, requests: Sequence[CompletionRequest]) -> list[Job]:
        """Group requests with equal sampling settings, ``prompts_per_request`` to a job, in order."""
        groups: dict[tuple[int, tuple[str, ...], tuple[int, int]], list[int]] = {}
        for position, request in enumerate(requests):
            groups.setdefault((request.max_tokens, request.stop, request.label_token_ids), []).append(position)
        size = self.settings.prompts_per_request
        chunks = [
            tuple(group[start : start + size]) for group in groups.values() for start in range(0, len(group), size)
        ]
        return [Job(chunk, tuple(requests[p] for p in chunk)) for chunk in chunks]

    def run_job(self, job: Job) -> Generator[HttpCall, Any, list[CompletionResult]]:
        """Each yielded call is answered with its decoded body or the error left after retries."""
        while True:
            body = wire.completion_body(self.model, job.requests, label_ids=self.label_ids_supported)
            outcome = yield HttpCall("completions", body, self.completion_timeout(job.requests[0].max_tokens))
            rejected = isinstance(outcome, ServerStatusError) and outcome.status in (400, 422)
            if not (rejected and "logprob_token_ids" in body and "logprob_token_ids" in str(outcome)):
                break
            if self.label_ids_supported:
                logger.warning(
                    "server %s rejected logprob_token_ids (vLLM older than 0.32?); label log-probabilities "
                    "will be read from prompt log-probabilities instead (one extra request per answer)",
                    outcome.server,
                )
            self.label_ids_supported = False
        if isinstance(outcome, Rank1Error):
            return [outcome] * len(job.requests)
        results = wire.parse_completions(outcome, job.requests)
        pending = [
            (i, completion, pair)
            for i, (request, completion) in enumerate(zip(job.requests, results, strict=True))
            if isinstance(completion, Completion) and (pair := wire.label_prompts(request, completion))
        ]
        if pending:
            prompts = [prompt for _, _, pair in pending for prompt in pair]
            echo = yield HttpCall("completions", wire.echo_body(self.model, prompts), self.completion_timeout(1))
            for number, (i, completion, pair) in enumerate(pending):
                results[i] = wire.with_echoed_labels(completion, pair, 2 * number, echo)
        return results

    def decode(self, content: bytes, call: HttpCall, server: str) -> Any:
        """The JSON body of a successful answer, checked to be what a vLLM server sends."""
        where = redact_url(self.url_for(call, server))
        try:
            body = json.loads(content)
        except ValueError:
            raise MalformedResponseError(
                f"{where} answered with something that is not JSON: is it a vLLM server?", server=server
            ) from None
        if call.endpoint == "completions":
            wire.check_completions(body, self.model, server)
        elif call.endpoint == "tokenize" and not (isinstance(body, dict) and wire.is_token_list(body.get("tokens"))):
            raise MalformedResponseError(f"{where} answered without a token list: is it vLLM?", server=server)
        elif call.endpoint == "detokenize" and not (isinstance(body, dict) and isinstance(body.get("prompt"), str)):
            raise MalformedResponseError(f"{where} answered without the 'prompt' text: is it vLLM?", server=server)
        return body

    def max_model_len(self, models: Any, server: str) -> int:
        """From a server's ``/v1/models`` (choosing the model if unset)."""
        if not self.model:
            self.model = wire.only_model(models, server)
        return wire.max_model_len_of(models, self.model, server)

    def scrub(self, text: str) -> str:
        """Text without the API key or any URL credentials."""
        secrets = [self.api_key.get_secret_value()] if self.api_key is not None else []
        for secret in secrets + [s for server in self.servers for s in server.secrets()]:
            if secret:
                text = text.replace(secret, "**********")
        return text

    def is_retryable(self, err: BaseException) -> bool:
        if isinstance(err, ServerConnectionError | MalformedResponseError):  # includes timeouts
            return True
        if isinstance(err, ServerStatusError):
            return err.status in _RETRYABLE_STATUS or err.status >= 500
        if isinstance(err, IncompatibleServerError) and err.server is not None:
            return self.router.can_route_around(err.server)
        return False

    def record_failure(self, server: str, err: Rank1Error, sent: float | None = None) -> None:
        if isinstance(err, IncompatibleServerError) and not isinstance(err, MalformedResponseError):
            self.router.disable(server, str(err))
        elif self.is_retryable(err):
            come_back = err.retry_after if isinstance(err, ServerStatusError) else None
            self.router.failed(server, sent=sent, retry_after=come_back)

    def retry_arguments(self, call: HttpCall, tried: list[str]) -> dict[str, Any]:
        """Keyword arguments for ``tenacity.AsyncRetrying`` around one call (see docs/remote.md)."""
        settings = self.settings
        backoff = wait_random_exponential(multiplier=settings.initial_backoff, max=settings.max_backoff)
        attempts_used = stop_after_attempt(settings.max_retries + 1)

        def wait(state: RetryCallState) -> float:
            if call.server is None and self.router.untried_server_up(tried):
                return 0.0  # another healthy server takes the request now
            # Not before the server can take it again (its cool-down or Retry-After), then a
            # jittered backoff, so the retries of many requests do not all arrive at once.
            others = [] if call.server is None else [s for s in self.router.servers if s != call.server]
            return self.router.seconds_until_available(avoid=others or tried) + backoff(state)

        def stop(state: RetryCallState) -> bool:
            # Only an outage (every server failing for the budget) ends retries early: a call
            # unlucky on servers that answer others keeps its max_retries.
            fleet_down = self.router.outage_seconds() + state.upcoming_sleep > settings.retry_budget
            return attempts_used(state) or fleet_down

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            logger.warning(
                "retrying %s after %s (attempt %d of %d) in %.2f s: %s",
                call.path,
                type(error).__name__,
                state.attempt_number,
                settings.max_retries + 1,
                state.upcoming_sleep,
                error,
            )

        retry = retry_if_exception(self.is_retryable)
        return {"stop": stop, "wait": wait, "retry": retry, "reraise": True, "before_sleep": before_sleep}

    def url_for(self, call: HttpCall, server: str) -> str:
        return self.server(server).root + call.path

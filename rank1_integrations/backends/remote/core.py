"""The I/O-free core of the remote backend: what to send, how to read it, when to retry.

Shaped like httpx's ``BaseClient`` and tenacity's decision core: everything here is a
pure decision; the driver in :mod:`rank1_integrations.backends.remote.backend` only sends the
HTTP calls it is given and waits.

A batch of :class:`CompletionRequest` is cut into *jobs* (requests with the same
sampling settings, ``prompts_per_request`` prompts per HTTP request). Each job runs
the sans-I/O generator :meth:`RemoteCore.run_job`: it yields the HTTP calls it
needs and receives their outcome (a decoded JSON body or a typed error) until it
returns one result per request of the job. Retries and server choice happen around
each single call, with tenacity and the :class:`Router`.

Only transport and HTTP failures count against a server; anything else raised while
calling one (a bug, a missing package) is not translated and surfaces at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import SecretStr
from tenacity import RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from rank1_integrations.backends.base import Completion, CompletionRequest, CompletionResult
from rank1_integrations.backends.remote.config import API_KEY_ENV_VARS, ServerURL, redact_url
from rank1_integrations.backends.remote.routing import Router
from rank1_integrations.backends.remote.wire import (
    check_completions,
    completion_body,
    echo_body,
    error_detail,
    is_token_list,
    label_prompts,
    max_model_len_of,
    needs_label_fallback,
    only_model,
    parse_completions,
    retry_after,
    with_echoed_labels,
)
from rank1_integrations.errors import (
    IncompatibleServerError,
    InvalidInputError,
    MalformedResponseError,
    Rank1Error,
    ServerConnectionError,
    ServerStatusError,
    ServerTimeoutError,
)
from rank1_integrations.settings import Rank1Settings

__all__ = ["Endpoint", "HttpCall", "Job", "RemoteCore"]

logger = logging.getLogger("rank1_integrations.backends.remote.backend")

_NO_KEY = "EMPTY"  # vLLM's documented placeholder when the server needs no key

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


@dataclass(frozen=True)
class Job:
    """Requests sent together: their positions in the batch and the requests themselves."""

    positions: tuple[int, ...]
    requests: tuple[CompletionRequest, ...]


@dataclass
class RemoteCore:
    """Every decision of the remote backend that involves no I/O; one per backend."""

    servers: tuple[ServerURL, ...]
    model: str
    settings: Rank1Settings
    """Its transport fields (timeouts, retries, backoff, concurrency) rule the remote backend."""
    api_key: SecretStr | None = None
    router: Router = field(init=False)
    label_ids_supported: bool = True
    """False once a server has rejected ``logprob_token_ids`` (an older vLLM)."""

    def __post_init__(self) -> None:
        displays = [server.display for server in self.servers]
        if len(set(displays)) != len(displays):
            raise InvalidInputError(f"the same server is listed twice: {displays}")
        if self.api_key is not None and any(server.auth for server in self.servers):
            raise InvalidInputError(
                "give either an API key or credentials in a server URL, not both: both would go in the "
                "Authorization header"
            )
        self.router = Router(
            displays,
            base_cooldown=self.settings.initial_backoff,
            max_cooldown=self.settings.max_backoff,
        )
        self._by_display = {server.display: server for server in self.servers}

    def completion_timeout(self, max_tokens: int) -> float:
        """Seconds a completion of up to ``max_tokens`` generated tokens may take."""
        if self.settings.timeout is not None:
            return float(self.settings.timeout)
        return self.settings.base_timeout + self.settings.seconds_per_token * max_tokens

    def server(self, display: str) -> ServerURL:
        return self._by_display[display]

    @property
    def api_key_value(self) -> str:
        """What the openai client sends as the bearer token."""
        return self.api_key.get_secret_value() if self.api_key is not None else _NO_KEY

    # -- calls ------------------------------------------------------------------------

    def models_call(self, server: str) -> HttpCall:
        return HttpCall("models", None, self.settings.metadata_timeout, server=server)

    def tokenizer_info_call(self) -> HttpCall:
        return HttpCall("tokenizer_info", None, self.settings.metadata_timeout)

    def tokenize_call(self, text: str, *, add_special_tokens: bool, token_strs: bool = False) -> HttpCall:
        body = {
            "model": self.model,
            "prompt": text,
            "add_special_tokens": add_special_tokens,
            "return_token_strs": token_strs,
        }
        return HttpCall("tokenize", body, self.settings.metadata_timeout)

    def detokenize_call(self, token_ids: Sequence[int]) -> HttpCall:
        return HttpCall("detokenize", {"model": self.model, "tokens": list(token_ids)}, self.settings.metadata_timeout)

    def completion_call(self, requests: Sequence[CompletionRequest]) -> HttpCall:
        """One ``/v1/completions`` request for requests that share their sampling settings."""
        body = completion_body(self.model, requests, label_ids=self.label_ids_supported)
        return HttpCall("completions", body, self.completion_timeout(requests[0].max_tokens))

    def echo_call(self, prompts: Sequence[Sequence[int]]) -> HttpCall:
        """Prompt log-probabilities of ``prompts`` (each ends in the label to score)."""
        return HttpCall("completions", echo_body(self.model, prompts), self.completion_timeout(1))

    # -- jobs -------------------------------------------------------------------------

    def plan_jobs(self, requests: Sequence[CompletionRequest]) -> list[Job]:
        """Group requests with equal sampling settings, ``prompts_per_request`` to a job, in order."""
        groups: dict[tuple[int, tuple[str, ...], tuple[int, int]], list[int]] = {}
        for position, request in enumerate(requests):
            groups.setdefault((request.max_tokens, request.stop, request.label_token_ids), []).append(position)
        size = self.settings.prompts_per_request
        jobs = []
        for positions in groups.values():
            for start in range(0, len(positions), size):
                chunk = tuple(positions[start : start + size])
                jobs.append(Job(chunk, tuple(requests[p] for p in chunk)))
        return jobs

    def run_job(self, job: Job) -> Generator[HttpCall, Any, list[CompletionResult]]:
        """The calls one job needs, as a sans-I/O generator: send it outcomes, get results back.

        Each yielded :class:`HttpCall` is answered with the decoded JSON body, or the
        :class:`Rank1Error` left after retries. Never raises for a server's fault.
        """
        count = len(job.requests)
        while True:
            call = self.completion_call(job.requests)
            outcome = yield call
            if (
                isinstance(outcome, ServerStatusError)
                and "logprob_token_ids" in (call.body or {})
                and self.rejects_label_ids(outcome)
            ):
                if self.label_ids_supported:
                    logger.warning(
                        "server %s rejected logprob_token_ids (vLLM older than 0.32?); label log-probabilities "
                        "will be read from prompt log-probabilities instead (one extra request per answer)",
                        outcome.server,
                    )
                self.label_ids_supported = False
                continue
            break
        if isinstance(outcome, Rank1Error):
            return [outcome] * count
        results = parse_completions(outcome, job.requests)
        pending = [
            (i, request, result)
            for i, (request, result) in enumerate(zip(job.requests, results, strict=True))
            if isinstance(result, Completion) and needs_label_fallback(request, result)
        ]
        if not pending:
            return results
        prompts = [label_prompts(request, completion) for _, request, completion in pending]
        echo = yield self.echo_call([prompt for pair in prompts for prompt in pair])
        for number, ((i, _, completion), pair) in enumerate(zip(pending, prompts, strict=True)):
            results[i] = with_echoed_labels(completion, pair, 2 * number, echo)
        return results

    # -- reading answers --------------------------------------------------------------

    def decode(self, content: bytes, call: HttpCall, server: str) -> Any:
        """The JSON body of a successful answer, checked to be what a vLLM server sends.

        Raises :class:`MalformedResponseError` (retried) for an answer that is not one, and
        :class:`IncompatibleServerError` for proof that the server serves another model.
        """
        where = redact_url(self.url_for(call, server))
        try:
            body = json.loads(content)
        except ValueError:
            raise MalformedResponseError(
                f"{where} answered with something that is not JSON: is it a vLLM server?", server=server
            ) from None
        if call.endpoint == "completions":
            check_completions(body, self.model, server)
        elif call.endpoint == "tokenize" and not (isinstance(body, dict) and is_token_list(body.get("tokens"))):
            raise MalformedResponseError(f"{where} answered without a token list: is it vLLM?", server=server)
        elif call.endpoint == "detokenize" and not (isinstance(body, dict) and isinstance(body.get("prompt"), str)):
            raise MalformedResponseError(f"{where} answered without the 'prompt' text: is it vLLM?", server=server)
        return body

    def max_model_len(self, models: Any, server: str) -> int:
        """The model's ``max_model_len`` from a server's ``/v1/models`` (choosing the model if unset)."""
        if not self.model:
            self.model = only_model(models, server)
        return max_model_len_of(models, self.model, server)

    # -- errors and retries -----------------------------------------------------------

    def scrub(self, text: str) -> str:
        """Text with the API key and any URL credentials removed, should a message ever carry them."""
        secrets = [self.api_key.get_secret_value()] if self.api_key is not None else []
        secrets += [secret for server in self.servers for secret in server.secrets()]
        for secret in secrets:
            if secret:
                text = text.replace(secret, "**********")
        return text

    def translate_error(self, err: BaseException, server: str, call: HttpCall) -> Rank1Error | None:
        """A transport or HTTP error of one call as this project's error, with nothing secret in it.

        None for anything else (a bug, a missing package, a closed client): that is not the
        server's fault, must not count against it, and is raised as it is.
        """
        import openai

        where = redact_url(self.url_for(call, server))
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
                detail += f" ({self.scrub(str(cause))[:200]})"
            return ServerConnectionError(f"could not reach {where}{detail}", server=server)
        if isinstance(err, openai.APIStatusError):
            status = err.status_code
            detail = self.scrub(error_detail(err.response))
            hint = ""
            if status == 401:
                hint = f" (the server needs an API key: pass api_key= or set {API_KEY_ENV_VARS[0]})"
            elif status == 404 and call.endpoint in ("tokenize", "detokenize"):
                hint = " (rank1 needs vLLM's /tokenize and /detokenize endpoints: is this a vLLM server?)"
            return ServerStatusError(
                f"{where} answered HTTP {status}{hint}: {detail}",
                status=status,
                server=server,
                retry_after=retry_after(err.response.headers, self.settings.retry_budget),
            )
        return None

    @staticmethod
    def rejects_label_ids(err: ServerStatusError) -> bool:
        return err.status in (400, 422) and "logprob_token_ids" in str(err)

    def is_retryable(self, err: BaseException) -> bool:
        if isinstance(err, ServerConnectionError | MalformedResponseError):  # includes timeouts
            return True
        if isinstance(err, ServerStatusError):
            return err.status in _RETRYABLE_STATUS or err.status >= 500
        if isinstance(err, IncompatibleServerError) and err.server is not None:
            return self.router.can_route_around(err.server)
        return False

    def record_failure(self, server: str, err: Rank1Error, sent: float | None = None) -> None:
        """Tell the router what a failure of a request (sent at ``sent``) says about the server's health."""
        if isinstance(err, IncompatibleServerError) and not isinstance(err, MalformedResponseError):
            self.router.disable(server, str(err))
        elif self.is_retryable(err):
            come_back = err.retry_after if isinstance(err, ServerStatusError) else None
            self.router.failed(server, sent=sent, retry_after=come_back)

    def retry_arguments(self, call: HttpCall, tried: list[str]) -> dict[str, Any]:
        """Keyword arguments for ``tenacity.AsyncRetrying`` around one call (see docs/remote.md)."""
        settings = self.settings
        backoff = wait_random_exponential(multiplier=settings.initial_backoff, max=settings.max_backoff)

        def wait(state: RetryCallState) -> float:
            if call.server is None and self.router.untried_server_up(tried):
                return 0.0  # another healthy server takes the request now
            # Not before the server can take it again (its cool-down or Retry-After), then a
            # jittered backoff, so the retries of many requests do not all arrive at once.
            others = [] if call.server is None else [s for s in self.router.servers if s != call.server]
            return self.router.seconds_until_available(avoid=others or tried) + backoff(state)

        attempts_used = stop_after_attempt(settings.max_retries + 1)

        def stop(state: RetryCallState) -> bool:
            # Every server failing for the budget by the time of the retry: no more retries (each
            # call gets one attempt) until one of them answers again. Only an outage ends retries
            # early: a call that was unlucky on servers answering others keeps its max_retries.
            fleet_down = self.router.outage_seconds() + state.upcoming_sleep > settings.retry_budget
            return attempts_used(state) or fleet_down

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            logger.warning(
                "retrying %s after %s (attempt %d of %d) in %.2f s: %s",
                _endpoint_path(call.endpoint),
                type(error).__name__,
                state.attempt_number,
                settings.max_retries + 1,
                state.upcoming_sleep,
                error,
            )

        return {
            "stop": stop,
            "wait": wait,
            "retry": retry_if_exception(self.is_retryable),
            "reraise": True,
            "before_sleep": before_sleep,
        }

    def pick_server(self, call: HttpCall, tried: list[str]) -> str:
        server = call.server if call.server is not None else self.router.pick(tried)
        tried.append(server)
        return server

    def url_for(self, call: HttpCall, server: str) -> str:
        """The URL a call goes to (``/v1/completions`` and ``/v1/models`` under the API base, the rest at the root)."""
        urls = self.server(server)
        if call.endpoint in ("completions", "models"):
            return f"{urls.api}/{call.endpoint}"
        return f"{urls.root}/{call.endpoint}"


def _endpoint_path(endpoint: Endpoint) -> str:
    return "/v1/" + endpoint if endpoint in ("completions", "models") else "/" + endpoint

"""What the remote backend is told: server URLs, the API key, and its settings (pure, validated)."""

from __future__ import annotations

import base64
import math
import os
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import SecretStr

from rank1_integrations.errors import InvalidInputError

__all__ = ["API_KEY_ENV_VARS", "RemoteSettings", "ServerURL", "redact_url", "resolve_api_key"]

API_KEY_ENV_VARS = ("RANK1_API_KEY", "VLLM_API_KEY")
"""Where an API key is looked up when none is given, in order. ``OPENAI_API_KEY`` is
deliberately not read: it usually holds a key for api.openai.com, which must not be
sent to a self-hosted server."""


@dataclass(frozen=True)
class ServerURL:
    """One server: its OpenAI API base (``.../v1``), its root (``/tokenize`` lives there), and credentials.

    Credentials in the URL (``http://user:password@host/v1``, for a proxy with HTTP Basic
    authentication) are taken out of every URL, so no client, log or error ever shows them.
    """

    api: str
    root: str
    auth: tuple[str, SecretStr] | None = field(default=None, repr=False)
    """HTTP Basic credentials from the URL: (user, password)."""

    @property
    def display(self) -> str:
        """The server's name in logs, errors and ``router.health()``."""
        return self.api

    @classmethod
    def parse(cls, url: str) -> ServerURL:
        if not isinstance(url, str) or not url.strip():
            raise InvalidInputError(f"a server URL must be a non-empty string, got {url!r}")
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError:
            raise InvalidInputError(f"server URL {redact_url(url)!r} is not a valid URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInputError(
                f"server URL {redact_url(url)!r} must start with http:// or https:// and name a host"
            )
        if parts.query or parts.fragment:
            raise InvalidInputError(f"server URL {redact_url(url)!r} must not have a query string or fragment")
        path = parts.path.rstrip("/")
        root_path = path[: -len("/v1")] if path.endswith("/v1") else path
        netloc = _netloc(parts.hostname, port)
        auth = None
        if parts.username is not None or parts.password is not None:
            auth = (unquote(parts.username or ""), SecretStr(unquote(parts.password or "")))
        return cls(
            api=urlunsplit((parts.scheme, netloc, f"{root_path}/v1", "", "")),
            root=urlunsplit((parts.scheme, netloc, root_path, "", "")),
            auth=auth,
        )

    def secrets(self) -> list[str]:
        """What must never be shown: the password, and the Basic header value it travels as."""
        if self.auth is None:
            return []
        user, password = self.auth[0], self.auth[1].get_secret_value()
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return [s for s in (password, token) if s]


def _netloc(host: str | None, port: int | None) -> str:
    host = host or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port else host


def redact_url(url: str) -> str:
    """The URL without user info or query string (either may carry a credential)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    try:
        port = parts.port
    except ValueError:
        port = None
    return urlunsplit((parts.scheme, _netloc(parts.hostname, port), parts.path, "", ""))


def resolve_api_key(api_key: str | SecretStr | None) -> SecretStr | None:
    """The key to send: the one given, else the first of :data:`API_KEY_ENV_VARS` that is set."""
    if isinstance(api_key, SecretStr):
        value = api_key.get_secret_value()
    elif api_key is None:
        value = next((os.environ[name] for name in API_KEY_ENV_VARS if os.environ.get(name)), "")
    elif isinstance(api_key, str):
        value = api_key
    else:
        raise InvalidInputError(f"api_key must be a string or SecretStr, got {type(api_key).__name__}")
    return SecretStr(value) if value else None


@dataclass(frozen=True)
class RemoteSettings:
    """How the remote backend talks to its servers (see ``docs/remote.md``, "Failure policy")."""

    timeout: float | None = None
    """Seconds one completion request may take in all (connect, wait, read); None sizes it from its budget."""
    connect_timeout: float = 10.0
    metadata_timeout: float = 30.0
    """Seconds for the small calls (models, tokenize, detokenize)."""
    seconds_per_token: float = 0.1
    base_timeout: float = 120.0
    max_retries: int = 6
    """Retries per HTTP call after the first attempt (0 disables retrying)."""
    retry_budget: float = 8.0
    """Once every server has been failing for this long (by when its failed requests were sent),
    calls stop retrying (one attempt each) until one answers, so a call against a dead fleet
    fails within about this many seconds. Also the longest Retry-After honoured."""
    initial_backoff: float = 0.25
    """First cool-down of a failed server, and the first retry's random wait (full jitter); both double."""
    max_backoff: float = 2.0
    """Longest cool-down (a Retry-After may ask for more, up to ``retry_budget``) and longest random wait."""
    max_concurrency: int = 32
    """HTTP requests in flight at once, over all servers."""
    prompts_per_request: int = 1
    """Prompts sent in one ``/v1/completions`` request (vLLM batches concurrent requests anyway)."""
    max_response_bytes: int = 64 * 1024 * 1024
    """A larger answer is a malformed answer (retried), never read into memory whole."""
    tokenizer_cache_bytes: int = 32 * 1024 * 1024
    """Memory the server tokenizer's caches (texts -> ids, ids -> texts) may hold in all."""

    def __post_init__(self) -> None:
        positive = {
            "connect_timeout": self.connect_timeout,
            "metadata_timeout": self.metadata_timeout,
            "base_timeout": self.base_timeout,
            **({"timeout": self.timeout} if self.timeout is not None else {}),
        }
        non_negative = {
            "seconds_per_token": self.seconds_per_token,
            "retry_budget": self.retry_budget,
            "initial_backoff": self.initial_backoff,
            "max_backoff": self.max_backoff,
        }
        for name, value in {**positive, **non_negative}.items():
            if not _is_number(value) or not math.isfinite(value) or value < 0 or (name in positive and value == 0):
                kind = "positive" if name in positive else "non-negative"
                raise InvalidInputError(f"{name} must be a finite {kind} number, got {value!r}")
        for name, number, least in (
            ("max_concurrency", self.max_concurrency, 1),
            ("prompts_per_request", self.prompts_per_request, 1),
            ("max_response_bytes", self.max_response_bytes, 1),
            ("tokenizer_cache_bytes", self.tokenizer_cache_bytes, 0),
            ("max_retries", self.max_retries, 0),
        ):
            if not isinstance(number, int) or isinstance(number, bool) or number < least:
                raise InvalidInputError(f"{name} must be an int >= {least}, got {number!r}")

    def completion_timeout(self, max_tokens: int) -> float:
        """Seconds a completion of up to ``max_tokens`` generated tokens may take."""
        if self.timeout is not None:
            return float(self.timeout)
        return self.base_timeout + self.seconds_per_token * max_tokens


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

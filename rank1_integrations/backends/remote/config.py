"""Server URLs and the API key the remote backend is given (pure, validated)."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import SecretStr

from rank1_integrations.errors import InvalidInputError

__all__ = ["API_KEY_ENV_VARS", "ServerURL", "redact_url", "resolve_api_key"]

# Not OPENAI_API_KEY: it usually holds a key for api.openai.com, which must not go to a self-hosted server.
API_KEY_ENV_VARS = ("RANK1_API_KEY", "VLLM_API_KEY")


@dataclass(frozen=True)
class ServerURL:
    """One server: its API base (``.../v1``), its root (``/tokenize`` lives there), and the HTTP Basic
    credentials of its URL (``http://user:password@host/v1``), kept out of every URL, log and error."""

    api: str
    root: str
    auth: tuple[str, SecretStr] | None = field(default=None, repr=False)  # (user, password)

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
        root_path = parts.path.rstrip("/").removesuffix("/v1")
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
        """The password, and the Basic header value it travels as."""
        if self.auth is None:
            return []
        user, password = self.auth[0], self.auth[1].get_secret_value()
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return [s for s in (password, token) if s]


def _netloc(host: str | None, port: int | None) -> str:
    host = f"[{host}]" if host and ":" in host else host or ""
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
    if api_key is None:
        api_key = next((os.environ[name] for name in API_KEY_ENV_VARS if os.environ.get(name)), "")
    if not isinstance(api_key, str | SecretStr):
        raise InvalidInputError(f"api_key must be a string or SecretStr, got {type(api_key).__name__}")
    value = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
    return SecretStr(value) if value else None

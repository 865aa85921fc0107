"""``Rank1Settings``: how to reach rank1 and how to judge, one typed vocabulary for every surface.

Every surface builds its reranker from it; the command-line flags derive from its fields. Values come
from, highest first: the caller, ``RANK1_*`` environment variables, a TOML file (its ``[serve]`` and
``[run]`` tables belong to those commands), then the defaults below.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, InitSettingsSource, NoDecode, SettingsConfigDict

from rank1_integrations.backends.remote.config import redact_url
from rank1_integrations.errors import InvalidInputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["JUDGING_FIELDS", "TRANSPORT_FIELDS", "Effort", "Rank1Settings", "describe_validation_error"]

Effort = Literal["full", "none", "adaptive"]
"""``full`` (rank1 as published), ``none`` (no-think: a prefilled, closed reasoning) or ``adaptive``
(no-think first, then full reasoning where the cheap score is uncertain or near the caller's cut)."""

DEFAULT_NO_THINK_PREFILL = "Okay, I think I have finished thinking."
"""NoThinking's prefill (arXiv 2504.09858), written where rank1's reasoning would be."""


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # True is not a number of tokens
        raise ValueError("must be a number, not a bool")
    return value


Positive = Annotated[int, Field(ge=1), BeforeValidator(_not_bool)]
NonNegative = Annotated[int, Field(ge=0), BeforeValidator(_not_bool)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
SecondsOrZero = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]

_FILE_VALUES: ContextVar[Mapping[str, Any] | None] = ContextVar("rank1_settings_file", default=None)


class Rank1Settings(BaseSettings):
    """How to reach rank1 (an embedded engine or vLLM servers) and how to judge; frozen. Invalid or unknown
    settings raise :class:`InvalidInputError` naming each setting (never its value: it may be a secret)."""

    model_config = SettingsConfigDict(
        env_prefix="RANK1_", frozen=True, extra="forbid", populate_by_name=True, validate_default=True
    )

    # -- how to reach rank1 ------------------------------------------------------------------
    model: str | None = Field(
        None,
        description="Embedded: the model's path or hub id. Servers: the served model's name (default: the only one).",
    )
    servers: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="vLLM OpenAI-compatible server URLs (replicas); none: an embedded engine."
    )
    api_key: SecretStr | None = Field(
        None,
        exclude=True,
        repr=False,
        description="The servers' API key (env RANK1_API_KEY, then VLLM_API_KEY; never a flag).",
    )
    api_key_env: str | None = Field(
        None, description="The environment variable holding the servers' API key (before RANK1_API_KEY)."
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="vLLM engine arguments for the embedded engine (KEY=VALUE, VALUE as JSON or text).",
    )
    tokenizer: str | None = Field(None, description="Servers: a local tokenizer folder instead of /tokenize.")
    verify: bool | str = Field(True, description="Servers: TLS verification (false, or a CA bundle path).")

    # -- transport to servers (docs/remote.md, "Failure policy") ----------------------------
    max_concurrency: Positive = Field(32, description="Requests in flight at once, over all servers.")
    timeout: Seconds | None = Field(
        None,
        description="Seconds one completion request may take (default: base_timeout + seconds_per_token x budget).",
    )
    base_timeout: Seconds = Field(120.0, description="Seconds a completion may take before its budget.")
    seconds_per_token: SecondsOrZero = Field(0.1, description="Seconds added per budgeted token.")
    connect_timeout: Seconds = Field(10.0, description="Seconds to connect to a server.")
    metadata_timeout: Seconds = Field(30.0, description="Seconds for /v1/models, /tokenize, /detokenize.")
    max_retries: NonNegative = Field(6, description="Retries per HTTP call after the first attempt.")
    retry_budget: SecondsOrZero = Field(
        8.0, description="Seconds every server may fail before calls stop retrying; also the longest Retry-After."
    )
    initial_backoff: SecondsOrZero = Field(0.25, description="First cool-down and retry wait in seconds; both double.")
    max_backoff: SecondsOrZero = Field(2.0, description="Longest cool-down and retry wait in seconds.")
    prompts_per_request: Positive = Field(1, description="Prompts sent in one /v1/completions request.")
    max_response_bytes: Positive = Field(64 * 1024 * 1024, description="A larger server answer is malformed.")
    tokenizer_cache_bytes: NonNegative = Field(
        32 * 1024 * 1024, description="Memory the servers' tokenizer caches may hold."
    )

    # -- how to judge --------------------------------------------------------------------------
    template: str | None = Field(
        None,
        description="Relevance template: a dataset name (e.g. TRECCOVID) or a text with FILL_QUERY_HERE for the query.",
    )
    max_reasoning_tokens: Positive = Field(8192, description="Reasoning budget per passage, in tokens.")
    reasoning_effort: Effort = Field("full", description="full (rank1 as published), none (no-think) or adaptive.")
    adaptive_margin: Fraction = Field(0.2, description="Adaptive: reason where no-think's score is this near the cut.")
    adaptive_center: Fraction = Field(0.5, description="Adaptive: the score cut (the caller's threshold, else 0.5).")
    adaptive_top_k: NonNegative | None = Field(
        None, description="Adaptive: also reason on the top k no-think candidates of each query."
    )
    no_think_prefill: str = Field(
        DEFAULT_NO_THINK_PREFILL, min_length=1, description="No-think: the text written in place of reasoning."
    )
    context_size: Positive | None = Field(None, description="Context tokens per prompt (default: max_model_len).")
    on_failure: Literal["raise", "mark_unjudged"] = Field(
        "raise", description="A passage that cannot be judged: raise, or come back unjudged."
    )
    cache_entries: NonNegative = Field(10_000, description="Judgments kept in memory (0: no cache).")
    cache_path: str | None = Field(None, description="A SQLite file to keep judgments on disk instead.")
    progress: bool = Field(False, description="Show a progress bar on stderr.")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise InvalidInputError(describe_validation_error(error)) from None

    @classmethod
    def settings_customise_sources(  # type: ignore[override]
        cls, settings_cls: type[BaseSettings], init_settings: Any, env_settings: Any, **_: Any
    ) -> tuple[Any, ...]:
        return init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=dict(_FILE_VALUES.get() or {}))

    @model_validator(mode="before")
    @classmethod
    def _vllm_api_key(cls, data: Any) -> Any:
        # RANK1_API_KEY is the field's own variable; vLLM's is the fallback. Copies (replace) carry
        # api_key explicitly, so they never read the environment again.
        if isinstance(data, dict) and "api_key" not in data and os.environ.get("VLLM_API_KEY"):
            return {**data, "api_key": os.environ["VLLM_API_KEY"]}
        return data

    @field_validator("servers", mode="before")
    @classmethod
    def _split_servers(cls, value: Any) -> Any:
        if isinstance(value, str):  # RANK1_SERVERS="http://a:8000 http://b:8000" (or comma-separated)
            return tuple(part for part in value.replace(",", " ").split() if part)
        return value

    @field_serializer("servers")
    def _servers_without_credentials(self, servers: tuple[str, ...]) -> tuple[str, ...]:
        """User info or a query string in a server URL may be a credential: never dumped."""
        return tuple(redact_url(url) for url in servers)

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, self._servers_without_credentials(value) if name == "servers" else value

    @field_validator("verify", mode="before")
    @classmethod
    def _verify_word(cls, value: Any) -> Any:
        if isinstance(value, str):  # RANK1_VERIFY=false or --verify false: not a CA bundle named "false"
            return {"true": True, "false": False}.get(value.strip().lower(), value)
        return value

    @field_validator("model", "api_key_env", "tokenizer", "cache_path")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank")
        return value

    @classmethod
    def load(cls, config: str | Path | None = None, **given: Any) -> Rank1Settings:
        """Settings from ``given``, then ``RANK1_*`` environment variables, then the TOML file ``config``."""
        values: dict[str, Any] = {}
        if config is not None:
            try:
                values = tomllib.loads(Path(config).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
                raise InvalidInputError(f"config {str(config)!r} cannot be read: {error}") from None
            values = {key: value for key, value in values.items() if key not in ("serve", "run")}
        token = _FILE_VALUES.set(values)
        try:
            return cls(**given)
        finally:
            _FILE_VALUES.reset(token)

    @property
    def embedded(self) -> bool:
        """True when rank1 runs in an embedded engine (no servers given)."""
        return not self.servers

    def replace(self, **changes: Any) -> Rank1Settings:
        """A copy with ``changes``, validated (environment variables are not read again)."""
        if not changes:
            return self
        values = {name: getattr(self, name) for name in type(self).model_fields}
        try:  # model_validate reads no environment: a copy keeps what the original read
            return type(self).model_validate({**values, **changes})
        except ValidationError as error:
            raise InvalidInputError(describe_validation_error(error)) from None

    def judging(self, **changes: Any) -> Rank1Settings:
        """A copy with per-call changes, which may only be how to judge (:data:`JUDGING_FIELDS`)."""
        unknown = sorted(set(changes) - JUDGING_FIELDS)
        if unknown:
            raise InvalidInputError(
                f"{', '.join(unknown)}: not a per-call setting (per call: {', '.join(sorted(JUDGING_FIELDS))})"
            )
        return self.replace(**changes)

    def resolved_api_key(self) -> SecretStr | None:
        """The key to send to the servers: from the variable ``api_key_env`` names when set, else ``api_key``."""
        if self.api_key_env is not None:
            value = os.environ.get(self.api_key_env, "").strip()
            if not value:
                raise InvalidInputError(f"api_key_env: the environment variable {self.api_key_env} is not set")
            return SecretStr(value)
        value = self.api_key.get_secret_value().strip() if self.api_key is not None else ""
        return SecretStr(value) if value else None

    def transport(self) -> dict[str, Any]:
        """The remote backend's settings (docs/remote.md)."""
        return {name: getattr(self, name) for name in TRANSPORT_FIELDS}


_JUDGING = (
    "template max_reasoning_tokens reasoning_effort adaptive_margin adaptive_center adaptive_top_k no_think_prefill"
)
JUDGING_FIELDS = frozenset(_JUDGING.split())
"""Settings a single call may change (``judge(..., reasoning_effort="none")``)."""
_TRANSPORT = """max_concurrency timeout base_timeout seconds_per_token connect_timeout metadata_timeout max_retries
    retry_budget initial_backoff max_backoff prompts_per_request max_response_bytes tokenizer_cache_bytes"""
TRANSPORT_FIELDS = tuple(_TRANSPORT.split())


def describe_validation_error(error: ValidationError) -> str:
    """``"setting: problem; ..."``, naming each setting, never its value (it may be a secret)."""
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "settings"
        message = "unknown setting" if item["type"] == "extra_forbidden" else item["msg"]
        problems.append(f"{where}: {message}")
    return "; ".join(problems)

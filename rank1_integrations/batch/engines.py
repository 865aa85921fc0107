"""Where a run's pairs are judged: an embedded engine, a fleet of vLLM servers, or Ray actors of either.

Each engine is a spec (plain data, picklable for Ray) and, opened, a :class:`Judge`:
work units in, judgment records out. Rerankers are built only through the public
``Rank1Reranker`` constructors, with failures marked (never raised) and no result
cache (the checkpoint is the run's memory).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rank1_integrations.batch.drive import iterate, judge_units
from rank1_integrations.batch.plan import WorkUnit
from rank1_integrations.batch.records import PairRecord, RunSettings
from rank1_integrations.core.templates import resolve_template
from rank1_integrations.errors import InvalidInputError
from rank1_integrations.reranker import DEFAULT_MAX_REASONING_TOKENS, Rank1Reranker

__all__ = [
    "EmbeddedEngine",
    "Engine",
    "InProcessJudge",
    "Judge",
    "RayEngine",
    "ServerEngine",
    "known_settings",
    "open_judge",
]

DEFAULT_MAX_IN_FLIGHT = 1024
"""Pairs in flight on an embedded engine: more than vLLM runs at once, so its batch stays full."""
UNITS_IN_WINDOW = 16
"""A work unit (one ``ajudge`` call) holds at most 1/16 of the window."""


@dataclass(frozen=True)
class EmbeddedEngine:
    """rank1 on a ``vllm.LLM`` in this process; ``engine_kwargs`` go to vLLM unchanged."""

    model: str
    template: str | None = None
    max_reasoning_tokens: int = DEFAULT_MAX_REASONING_TOKENS
    context_size: int | None = None
    engine_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def reranker(self) -> Rank1Reranker:
        return Rank1Reranker.from_vllm(self.model, **_run_settings(self), **dict(self.engine_kwargs))

    def window(self) -> int:
        return DEFAULT_MAX_IN_FLIGHT


@dataclass(frozen=True)
class ServerEngine:
    """rank1 on vLLM OpenAI-compatible servers (the remote backend), all of them kept busy.

    ``concurrency_per_server`` requests are in flight per server; ``backend_kwargs`` go to
    ``Rank1Reranker.from_server`` (``api_key``, ``timeout``, ``max_retries``, ...).
    """

    urls: Sequence[str]
    model: str | None = None
    template: str | None = None
    max_reasoning_tokens: int = DEFAULT_MAX_REASONING_TOKENS
    context_size: int | None = None
    concurrency_per_server: int = 32
    backend_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def reranker(self) -> Rank1Reranker:
        if isinstance(self.urls, str) or not self.urls:
            raise InvalidInputError("ServerEngine needs a list of server URLs")
        return Rank1Reranker.from_server(
            list(self.urls),
            self.model,
            **_run_settings(self),
            **{"max_concurrency": self.concurrency_per_server * len(self.urls), **self.backend_kwargs},
        )

    def window(self) -> int:
        """Twice the requests in flight: each server has its next requests waiting."""
        return 2 * self.concurrency_per_server * len(self.urls)


def _run_settings(engine: EmbeddedEngine | ServerEngine | Rank1Reranker) -> dict[str, Any]:
    """A run's reranker settings: a failed pair is recorded (and retried on resume), never cached
    (the checkpoint is the run's cache)."""
    return {
        "template": engine.template,
        "max_reasoning_tokens": engine.max_reasoning_tokens,
        "context_size": engine.context_size,
        "on_failure": "mark_unjudged",
        "cache": False,
    }


@dataclass(frozen=True)
class RayEngine:
    """Ray Data over the pairs with an actor pool of ``num_engines`` rerankers.

    Each actor builds ``rerankers``: its own embedded engine (on ``gpus_per_engine``
    GPUs; default one where the cluster has GPUs) or a client of a vLLM fleet.
    ``address`` is Ray's (None: start or join a local instance; ``"auto"``: the running
    cluster). Actors take ``batch_size`` pairs per call, several calls at once.
    """

    rerankers: EmbeddedEngine | ServerEngine
    num_engines: int = 1
    address: str | None = None
    gpus_per_engine: float | None = None
    cpus_per_engine: float = 1.0
    batch_size: int = 64


Engine = Rank1Reranker | EmbeddedEngine | ServerEngine | RayEngine
"""What ``rerank_run`` judges on: a ready reranker (its settings and backend) or an engine spec."""


class Judge(Protocol):
    """An opened engine."""

    settings: RunSettings | None
    """The settings it judges with (None until its first records, when only its workers know them)."""
    unit_size: int
    """Most pairs per work unit it takes."""

    def judge(self, units: Iterator[WorkUnit]) -> Iterator[list[PairRecord]]: ...

    def probe_settings(self) -> RunSettings:
        """The settings, even with nothing to judge (may start an engine to learn them)."""
        ...

    def close(self) -> None: ...


class InProcessJudge:
    """A reranker in this process, driven with a window of ``max_in_flight`` pairs."""

    def __init__(self, reranker: Rank1Reranker, *, max_in_flight: int, owned: bool) -> None:
        self.reranker = reranker
        self.settings: RunSettings | None = RunSettings.of(reranker)
        # A unit frees its place in the window only when its last pair is judged: small
        # units keep the window (and so the engine or servers) full while stragglers finish.
        self.unit_size = max(1, max_in_flight // UNITS_IN_WINDOW)
        self._max_in_flight = max_in_flight
        self._owned = owned

    def judge(self, units: Iterator[WorkUnit]) -> Iterator[list[PairRecord]]:
        assert self.settings is not None
        return iterate(
            judge_units(self.reranker, units, max_in_flight=self._max_in_flight, settings=self.settings.fingerprint)
        )

    def probe_settings(self) -> RunSettings:
        assert self.settings is not None
        return self.settings

    def close(self) -> None:
        if self._owned:
            self.reranker.close()


def known_settings(engine: Engine) -> dict[str, Any]:
    """The :class:`RunSettings` fields the engine fixes without being started: all of a reranker's; of a
    spec, the model (as given), template, budget, and context size where given."""
    if isinstance(engine, Rank1Reranker):
        return RunSettings.of(engine).to_dict()
    spec = engine.rerankers if isinstance(engine, RayEngine) else engine
    if not isinstance(spec, EmbeddedEngine | ServerEngine):
        raise _not_an_engine(engine)
    known: dict[str, Any] = {
        "template": resolve_template(spec.template),
        "max_reasoning_tokens": spec.max_reasoning_tokens,
    }
    # A server's model and context are the servers' to say (unless given); vLLM gives an embedded engine the
    # context it is told to have.
    context = spec.context_size
    if context is None and isinstance(spec, EmbeddedEngine):
        context = spec.engine_kwargs.get("max_model_len")
    for name, value in (("model", spec.model), ("context_size", context)):
        if value is not None:
            known[name] = value
    return known


def open_judge(engine: Engine, *, max_in_flight: int | None) -> Judge:
    """Start the engine (load the model, reach the servers or Ray)."""
    if max_in_flight is not None and (not isinstance(max_in_flight, int) or max_in_flight < 1):
        raise InvalidInputError(f"max_in_flight must be a positive int, got {max_in_flight!r}")
    if isinstance(engine, Rank1Reranker):
        # The caller's reranker keeps its settings and backend; failures come back marked.
        marking = Rank1Reranker(engine.backend, **_run_settings(engine))
        return InProcessJudge(marking, max_in_flight=max_in_flight or DEFAULT_MAX_IN_FLIGHT, owned=False)
    if isinstance(engine, EmbeddedEngine | ServerEngine):
        return InProcessJudge(engine.reranker(), max_in_flight=max_in_flight or engine.window(), owned=True)
    if isinstance(engine, RayEngine):
        from rank1_integrations.batch.ray_engine import RayJudge

        return RayJudge(engine)
    raise _not_an_engine(engine)


def _not_an_engine(engine: object) -> InvalidInputError:
    return InvalidInputError(
        f"engine must be a Rank1Reranker, EmbeddedEngine, ServerEngine or RayEngine, got {type(engine).__name__}"
    )

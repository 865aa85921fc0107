"""Where a run's pairs are judged: a reranker, one built from ``Rank1Settings`` (an embedded engine or
vLLM servers), or Ray actors of those; opened, a :class:`Judge`: work units in, judgment records out.
Failures are marked (never raised) and nothing is cached (the checkpoint is the run's memory).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import Any, Protocol

from rank1_integrations.batch.plan import WorkUnit, judged_records, run_reranker
from rank1_integrations.batch.ray_engine import RayEngine
from rank1_integrations.batch.records import PairRecord, RunSettings, effort_of
from rank1_integrations.core.templates import resolve_template
from rank1_integrations.errors import InvalidInputError
from rank1_integrations.reranker import Rank1Reranker
from rank1_integrations.settings import Rank1Settings

__all__ = ["Engine", "InProcessJudge", "Judge", "RayEngine", "known_settings", "open_judge"]

DEFAULT_MAX_IN_FLIGHT = 1024
"""Pairs in flight on an embedded engine: more than vLLM runs at once, so its batch stays full."""
UNITS_IN_WINDOW = 16
"""A work unit (one call) holds at most 1/16 of the window."""

Engine = Rank1Reranker | Rank1Settings | RayEngine
"""What ``rerank_run`` judges on: a ready reranker, the settings of one to start, or Ray actors of those."""


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
        # A unit frees its place in the window only when its last pair is judged: small units keep the
        # window (and so the engine or servers) full while stragglers finish. Adaptive takes whole queries.
        whole = reranker.settings.reasoning_effort == "adaptive"
        self.unit_size = 1 << 62 if whole else max(1, max_in_flight // UNITS_IN_WINDOW)
        self._max_in_flight = max_in_flight
        self._owned = owned

    def judge(self, units: Iterator[WorkUnit]) -> Iterator[list[PairRecord]]:
        assert self.settings is not None
        fingerprint = self.settings.fingerprint
        return judged_records(self.reranker, units, max_in_flight=self._max_in_flight, settings=fingerprint)

    def probe_settings(self) -> RunSettings:
        assert self.settings is not None
        return self.settings

    def close(self) -> None:
        if self._owned:
            self.reranker.close()


def known_settings(engine: Engine) -> dict[str, Any]:
    """The :class:`RunSettings` fields the engine fixes without being started: all of a reranker's; of
    settings, the model (as given), template, budget, effort, and context size where given."""
    if isinstance(engine, Rank1Reranker):
        return asdict(RunSettings.of(engine))
    settings = engine.settings if isinstance(engine, RayEngine) else engine
    if not isinstance(settings, Rank1Settings):
        raise _not_an_engine(engine)
    known: dict[str, Any] = {
        "template": resolve_template(settings.template),
        "max_reasoning_tokens": settings.max_reasoning_tokens,
        **effort_of(settings),
    }
    # A server's model and context are the servers' to say (unless given); vLLM gives an embedded engine the
    # context it is told to have.
    context = settings.context_size
    if context is None and settings.embedded:
        context = settings.engine_args.get("max_model_len")
    for name, value in (("model", settings.model), ("context_size", context)):
        if value is not None:
            known[name] = value
    return known


def open_judge(engine: Engine, *, max_in_flight: int | None) -> Judge:
    """Start the engine (load the model, reach the servers or Ray)."""
    if max_in_flight is not None and (not isinstance(max_in_flight, int) or max_in_flight < 1):
        raise InvalidInputError(f"max_in_flight must be a positive int, got {max_in_flight!r}")
    if isinstance(engine, Rank1Reranker):
        # The caller's reranker keeps its settings and backend, without its cache.
        copy = Rank1Reranker(engine.backend, engine.settings, cache=False)
        return InProcessJudge(copy, max_in_flight=max_in_flight or DEFAULT_MAX_IN_FLIGHT, owned=False)
    if isinstance(engine, Rank1Settings):
        # Servers: twice the requests in flight, so each server has its next requests waiting.
        window = DEFAULT_MAX_IN_FLIGHT if engine.embedded else 2 * engine.max_concurrency
        return InProcessJudge(run_reranker(engine), max_in_flight=max_in_flight or window, owned=True)
    if isinstance(engine, RayEngine):
        from rank1_integrations.batch.ray_engine import RayJudge

        return RayJudge(engine)
    raise _not_an_engine(engine)


def _not_an_engine(engine: object) -> InvalidInputError:
    return InvalidInputError(f"engine must be a Rank1Reranker, Rank1Settings or RayEngine, got {type(engine).__name__}")

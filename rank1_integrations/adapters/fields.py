"""What both adapters share (pydantic only): their fields, the reranker they build, the judging loop;
each adapter adds its framework's base class, inputs, outputs and how it announces a judged document."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from rank1_integrations.adapters.selection import (
    EmptyTextPolicy,
    JudgmentsSoFar,
    Pick,
    SelectionPolicy,
    needs_judging,
    plan_judging,
    select,
)
from rank1_integrations.core.templates import resolve_template
from rank1_integrations.errors import InvalidInputError
from rank1_integrations.reranker import Rank1Reranker
from rank1_integrations.settings import Effort, Rank1Settings

__all__ = ["Rank1AdapterFields"]

_BUILDING = threading.Lock()
"""Two first calls at once must not build two engines."""

Count = Annotated[int, Field(strict=True, ge=0)]


class Rank1AdapterFields(BaseModel):
    """A ``reranker`` or the ``settings`` to build one (not both; neither: ``Rank1Settings()``,
    from ``RANK1_*`` environment variables), the filter, and per-call judging changes."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", validate_assignment=True)

    reranker: Rank1Reranker | None = Field(
        None,
        frozen=True,
        exclude=True,
        description="The reranker (any backend); one built from settings: after a call.",
    )
    settings: Rank1Settings | None = Field(
        None, frozen=True, description="Without a reranker: what its first call builds one from (from_settings)."
    )
    top_n: Count | None = Field(3, description="Keep at most this many; None: every passing one; 0: none.")
    score_threshold: Annotated[float, Field(strict=True, ge=0.0, le=1.0)] | None = Field(
        None, description="Pass when the score is at least this (in [0, 1]); None: when rank1 says relevant."
    )
    min_keep: Count = Field(0, description="Keep at least this many (the best rejected ones); at most top_n.")
    template: str | None = Field(
        None, description="Relevance template (FILL_QUERY_HERE or a dataset's); None: the reranker's."
    )
    max_reasoning_tokens: Annotated[int, Field(strict=True, ge=1)] | None = Field(
        None, description="Reasoning budget per passage; None: the reranker's."
    )
    reasoning_effort: Effort | None = Field(None, description="'full', 'none' or 'adaptive'; None: the reranker's.")
    empty_text: EmptyTextPolicy = Field(
        "not_relevant", description="Empty texts: 'not_relevant' (score 0.0) or 'raise'."
    )

    def __init__(self, reranker: Rank1Reranker | None = None, /, **fields: Any) -> None:
        if reranker is not None:
            fields["reranker"] = reranker
        super().__init__(**fields)

    def __setattr__(self, name: str, value: Any) -> None:
        # pydantic leaves a value stored when the model validators refuse it (top_n below min_keep): undo it.
        before = dict(self.__dict__)
        try:
            super().__setattr__(name, value)
        except ValidationError:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    @field_validator("settings", mode="before")
    @classmethod
    def _settings_from_data(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("reranker") is not None:
            raise InvalidInputError("pass either reranker= or settings=, not both")
        # from to_dict / from_dict: read the environment again for what was never dumped (api_key)
        return Rank1Settings(**value) if isinstance(value, Mapping) else value

    @field_validator("template")
    @classmethod
    def _known_template(cls, value: str | None) -> str | None:
        resolve_template(value)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Rank1AdapterFields:
        _ = self.policy  # checks the filter together (min_keep <= top_n)
        if self.reranker is None and self.settings is None:  # on construction only
            self.__dict__["settings"] = Rank1Settings()
        if self.settings is not None and self.settings.model is None and not self.settings.servers:
            raise InvalidInputError("pass reranker=, or settings= naming a model (embedded) or servers")
        return self

    @property
    def policy(self) -> SelectionPolicy:
        return SelectionPolicy(top_n=self.top_n, score_threshold=self.score_threshold, min_keep=self.min_keep)

    def _rank1(self) -> Rank1Reranker:
        """The reranker, built from ``settings`` on first use."""
        with _BUILDING:
            if self.reranker is None:
                self.__dict__["reranker"] = Rank1Reranker.from_settings(self.settings)
            reranker: Rank1Reranker = self.__dict__["reranker"]
        return reranker

    async def _arank1(self) -> Rank1Reranker:
        return self.reranker if self.reranker is not None else await asyncio.to_thread(self._rank1)

    def _changes(self, reranker: Rank1Reranker) -> dict[str, Any]:
        """The per-call judging changes; adaptive effort reasons where this adapter cuts."""
        names = ("template", "max_reasoning_tokens", "reasoning_effort")
        changes = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        if (self.reasoning_effort or reranker.settings.reasoning_effort) == "adaptive":
            if self.score_threshold is not None:
                changes["adaptive_center"] = self.score_threshold
            if self.top_n is not None:
                changes["adaptive_top_k"] = self.top_n
        return changes

    def _pick(self, query: str, texts: Sequence[str], announce: Callable[[list[Pick]], None]) -> list[Pick]:
        """Judge ``texts`` (announcing each document as soon as it is judged), then select."""
        policy, plan = self.policy, plan_judging(texts, empty_text=self.empty_text)
        if not needs_judging(policy, plan):
            return select(policy, plan, [])
        so_far = JudgmentsSoFar(plan)
        reranker = self._rank1()
        for judgment in reranker.judge_iter(query, plan.passages, **self._changes(reranker)):
            announce(so_far.add(judgment))
        return select(policy, plan, so_far.in_order())

    async def _apick(
        self, query: str, texts: Sequence[str], announce: Callable[[list[Pick]], Awaitable[None] | None]
    ) -> list[Pick]:
        """Async :meth:`_pick`: never blocks the event loop."""
        policy, plan = self.policy, plan_judging(texts, empty_text=self.empty_text)
        if not needs_judging(policy, plan):
            return select(policy, plan, [])
        so_far = JudgmentsSoFar(plan)
        reranker = await self._arank1()
        stream = reranker.ajudge_stream(query, plan.passages, **self._changes(reranker))
        async with aclosing(stream):  # an error or a cancellation aborts the rest at once
            async for judgment in stream:
                if (announcing := announce(so_far.add(judgment))) is not None:
                    await announcing
        return select(policy, plan, so_far.in_order())

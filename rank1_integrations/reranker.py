"""``Rank1Reranker``: judge passages for a query with rank1, on any backend."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rank1_integrations.backends.base import Backend
from rank1_integrations.cache import DiskCache, GuardedCache, JudgmentCache, MemoryCache, cache_key
from rank1_integrations.core.calls import CallPlan, plan_call, validated
from rank1_integrations.core.judging import FailurePolicy
from rank1_integrations.core.judgment import Judgment
from rank1_integrations.core.profiles import mismatches, profile_for, tokenizer_facts
from rank1_integrations.core.prompting import PreparedPrompt, PromptBuilder
from rank1_integrations.core.protocol import FALSE_LABEL, TRUE_LABEL
from rank1_integrations.core.templates import resolve_template
from rank1_integrations.driver import CallDriver, adrive, drive, drive_many
from rank1_integrations.errors import BackendError, InvalidInputError, ModelOutputError
from rank1_integrations.settings import Rank1Settings

__all__ = ["DEFAULT_MAX_REASONING_TOKENS", "Rank1Reranker"]

logger = logging.getLogger("rank1_integrations")

DEFAULT_MAX_REASONING_TOKENS = 8192
"""The reasoning budget of the rank1 authors' runs."""


class Rank1Reranker:
    """Judges passages with a rank1 model: a score, a verdict and the reasoning for each.

    One call sends all its reasoning requests to the engine at once; a passage whose answer must be
    forced gets that request as soon as its reasoning is done. ``settings`` (default: ``RANK1_*``
    environment variables, then defaults) with ``changes`` on top say how to judge; every judging
    method takes the per-call settings (:data:`~rank1_integrations.settings.JUDGING_FIELDS`) too.
    ``cache``: True (memory, or disk at ``settings.cache_path``), False, or a ``JudgmentCache``.
    """

    def __init__(
        self,
        backend: Backend,
        settings: Rank1Settings | None = None,
        *,
        cache: JudgmentCache | bool = True,
        **changes: Any,
    ) -> None:
        settings = (settings or Rank1Settings()).replace(**changes)
        engine_context = backend.max_model_len
        if settings.context_size is not None and settings.context_size > engine_context:
            raise InvalidInputError(
                f"context_size: must be no larger than the engine's {engine_context}, got {settings.context_size}"
            )
        self.settings = settings
        self.backend = backend
        self.context_size: int = settings.context_size or engine_context
        self.cache: JudgmentCache | None = _cache_for(settings) if cache is True else None if cache is False else cache
        self._cache = GuardedCache(self.cache) if self.cache is not None else None
        self._closed = False
        parallelism = getattr(backend.tokenizer, "parallelism", 1)
        self._builders = (
            ThreadPoolExecutor(parallelism, thread_name_prefix="rank1-prompts") if parallelism > 1 else None
        )
        self.label_token_ids = (_label_id(backend, TRUE_LABEL), _label_id(backend, FALSE_LABEL))
        profile = profile_for(backend.model_name)
        if profile is not None:
            for problem in mismatches(profile, tokenizer_facts(backend.tokenizer)):
                logger.warning(
                    "%s is a rank1 %s model, but its tokenizer differs: %s", backend.model_name, profile.family, problem
                )
        # Fails early (typed) on a bad template, or a budget that leaves no room for any prompt.
        self._builder_for(settings)

    @property
    def template(self) -> str | None:
        """The relevance template's text (None: rank1's plain one)."""
        return resolve_template(self.settings.template)

    @property
    def max_reasoning_tokens(self) -> int:
        return self.settings.max_reasoning_tokens

    @classmethod
    def from_settings(
        cls, settings: Rank1Settings | None = None, *, cache: JudgmentCache | bool = True, **changes: Any
    ) -> Rank1Reranker:
        """A reranker on what ``settings`` (with ``changes`` on top) names: vLLM ``servers``, else an
        embedded engine on ``model``."""
        settings = (settings or Rank1Settings()).replace(**changes)
        from rank1_integrations.backends.remote.backend import RemoteBackend

        if settings.servers:
            backend: Backend = RemoteBackend(
                list(settings.servers),
                settings.model,
                api_key=settings.resolved_api_key(),
                verify=settings.verify,
                tokenizer=settings.tokenizer,
                **settings.transport(),
            )
        else:
            if settings.model is None:
                raise InvalidInputError("model: give the model for an embedded engine, or servers to use")
            from rank1_integrations.backends.vllm_engine import VLLMEngineBackend

            engine_args = dict(settings.engine_args)
            if settings.context_size is not None:
                engine_args.setdefault("max_model_len", settings.context_size)
            backend = VLLMEngineBackend.load(settings.model, progress=settings.progress, **engine_args)
        try:
            return cls(backend, settings, cache=cache)
        except BaseException:
            if isinstance(backend, RemoteBackend):  # an embedded engine lives as long as the process
                backend.close()
            raise

    @classmethod
    def from_vllm(
        cls, model: str, *, settings: Rank1Settings | None = None, cache: JudgmentCache | bool = True, **changes: Any
    ) -> Rank1Reranker:
        """A reranker on an embedded ``vllm.LLM``: settings as keywords; any other keyword is a vLLM
        engine argument (``Rank1Reranker.from_vllm(model, max_reasoning_tokens=512, dtype="float32")``).

        ``context_size`` also becomes the engine's ``max_model_len`` unless that is given.
        """
        ours = {name: value for name, value in changes.items() if name in Rank1Settings.model_fields}
        engine_args = {name: value for name, value in changes.items() if name not in ours}
        base = settings or Rank1Settings()
        return cls.from_settings(
            base, cache=cache, model=model, servers=(), **ours, engine_args={**base.engine_args, **engine_args}
        )

    @classmethod
    def from_server(
        cls,
        base_url: str | Sequence[str],
        model: str | None = None,
        *,
        settings: Rank1Settings | None = None,
        **changes: Any,
    ) -> Rank1Reranker:
        """A reranker on vLLM OpenAI-compatible servers: one ``base_url`` or a list of replicas.

        ``model`` is the served model name (None: the only one served); ``changes`` are settings
        (``api_key``, ``timeout``, ``max_retries``, ``max_concurrency``, ...; see ``docs/remote.md``).
        """
        servers = (base_url,) if isinstance(base_url, str) else tuple(base_url)
        return cls.from_settings(settings, servers=servers, model=model, **changes)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.backend.model_name!r}, "
            f"max_reasoning_tokens={self.max_reasoning_tokens}, context_size={self.context_size}, "
            f"reasoning_effort={self.settings.reasoning_effort!r}, template={self.settings.template!r}, "
            f"on_failure={self.settings.on_failure!r})"
        )

    def close(self) -> None:
        """Release the backend: remote connections close; an embedded backend finishes its calls and
        takes no more, but its engine stays up (vLLM's process-wide state: tearing one engine down
        can break others in the same process)."""
        self._closed = True
        if self._builders is not None:
            self._builders.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> Rank1Reranker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def build_prompt(self, query: str, passage: str, **changes: Any) -> PreparedPrompt:
        """The exact prompt (text and token ids) this reranker would send for one passage."""
        validated([(query, [passage])])
        return self._builder_for(self.settings.judging(**changes)).build(query, passage)

    def cache_key(self, query: str, passage: str, **changes: Any) -> str:
        """The key of this passage's judgment: equal keys mean the same judgment (cache, shared work)."""
        return self._key(self.settings.judging(**changes), query, passage)

    def _key(self, settings: Rank1Settings, query: str, passage: str, effort: str | None = None) -> str:
        effort = effort or settings.reasoning_effort
        how: tuple[object, ...] = (effort,) if effort == "full" else (effort, settings.no_think_prefill)
        if effort == "adaptive":
            how += (settings.adaptive_margin, settings.adaptive_center, settings.adaptive_top_k)
        return cache_key(
            model=self.backend.model_name,
            template=resolve_template(settings.template),
            query=query,
            passage=passage,
            max_reasoning_tokens=settings.max_reasoning_tokens if effort != "none" else None,
            context_size=self.context_size,
            how=how,
        )

    def judge(self, query: str, passages: Sequence[str], **changes: Any) -> list[Judgment]:
        """Judge every passage for the query; same length and order as ``passages``."""
        return self.judge_many([(query, passages)], **changes)[0]

    async def ajudge(self, query: str, passages: Sequence[str], **changes: Any) -> list[Judgment]:
        """Async :meth:`judge`; never blocks the event loop."""
        return (await self.ajudge_many([(query, passages)], **changes))[0]

    def judge_many(self, batches: Sequence[tuple[str, Sequence[str]]], **changes: Any) -> list[list[Judgment]]:
        """Judge several (query, passages) pairs in one engine batch."""
        driver = self._driver(self._plan(batches, self.settings.judging(**changes)))
        for _ in drive(driver):
            pass
        return driver.finish()

    async def ajudge_many(self, batches: Sequence[tuple[str, Sequence[str]]], **changes: Any) -> list[list[Judgment]]:
        """Async :meth:`judge_many`."""
        # Prompt building tokenizes (over HTTP on the remote backend): keep it off the event loop.
        driver = self._driver(await asyncio.to_thread(self._plan, batches, self.settings.judging(**changes)))
        async for _ in adrive(driver):
            pass
        return driver.finish()

    def judge_many_iter(
        self, batches: Iterable[tuple[str, Sequence[str]]], *, max_in_flight: int, **changes: Any
    ) -> Iterator[tuple[int, Judgment]]:
        """``(which pair, judgment)`` for many (query, passages) pairs, each as soon as it is final, with
        about ``max_in_flight`` passages in flight (``batches`` is read as room frees up). For long runs:
        a failed passage comes unjudged, never raised, and so does one rank1 cannot take as input (empty,
        not valid Unicode, a query too long for the context), its error starting ``InvalidInputError:``.
        """
        settings = self.settings.judging(**changes)
        calls = (self._driver(self._plan([batch], settings, lenient=True), "mark_unjudged") for batch in batches)
        for number, (_, judgment) in drive_many(calls, max_in_flight=max_in_flight):
            yield number, judgment

    def judge_iter(self, query: str, passages: Sequence[str], **changes: Any) -> Iterator[Judgment]:
        """Each passage's judgment as soon as it is final (cache hits first; ``Judgment.index`` says which).

        Leaving the loop early aborts the rest. Under ``on_failure="raise"`` the judged ones come
        first, then ``PassagesFailedError`` (which carries them too).
        """
        driver = self._driver(self._plan([(query, passages)], self.settings.judging(**changes)))
        try:
            for _, judgment in drive(driver):
                yield judgment
        finally:  # also when the caller leaves the loop early
            driver.cancel()
        driver.finish()

    async def ajudge_stream(
        self, query: str, passages: Sequence[str], **changes: Any
    ) -> AsyncGenerator[Judgment, None]:
        """Async :meth:`judge_iter`. Breaking out or cancelling aborts the rest (``contextlib.aclosing``
        aborts at once rather than when the iterator is collected)."""
        settings = self.settings.judging(**changes)
        driver = self._driver(await asyncio.to_thread(self._plan, [(query, passages)], settings))
        try:
            async for _, judgment in adrive(driver):
                yield judgment
        finally:  # also when the caller leaves the loop early, or is cancelled
            driver.cancel()
        driver.finish()

    def _driver(self, plan: CallPlan, on_failure: FailurePolicy | None = None) -> CallDriver:
        on_failure = on_failure or self.settings.on_failure
        return CallDriver(plan, self.backend, on_failure=on_failure, cache=self._cache, builders=self._builders)

    def _builder_for(self, settings: Rank1Settings) -> PromptBuilder:
        template = resolve_template(settings.template)
        room = settings.max_reasoning_tokens
        if settings.reasoning_effort == "none":  # no reasoning: the passage may take the budget's room
            whole = PromptBuilder(self.backend.tokenizer, template=template, max_prompt_tokens=self.context_size)
            room = whole.no_think_room(settings.no_think_prefill)
        return PromptBuilder(
            self.backend.tokenizer,
            template=template,
            max_prompt_tokens=self.context_size - room,
            context_size=self.context_size,
        )

    def _plan(
        self, batches: Sequence[tuple[str, Sequence[str]]], settings: Rank1Settings, lenient: bool = False
    ) -> CallPlan:
        if self._closed:
            raise BackendError(f"{self!r} is closed: make a new reranker")
        plan = plan_call(
            batches,
            self._builder_for(settings),
            label_token_ids=self.label_token_ids,
            settings=settings,
            cache=self._cache,
            key_for=lambda query, passage, effort: self._key(settings, query, passage, effort),
            lenient=lenient,
        )
        # A tokenizer that costs a round trip per text builds prompts on a pool, while the
        # first requests already run; any other builds them all here, ahead.
        return plan if self._builders is not None else plan.build_all()


def _cache_for(settings: Rank1Settings) -> JudgmentCache | None:
    if settings.cache_path is not None:
        return DiskCache(settings.cache_path)
    return MemoryCache(settings.cache_entries) if settings.cache_entries else None


def _label_id(backend: Backend, label: str) -> int:
    ids = backend.tokenizer.encode_plain(label)
    if len(ids) != 1:
        raise ModelOutputError(
            f"the model's tokenizer splits the label {label!r} into {len(ids)} tokens; "
            "rank1 models answer with single-token labels: is this a rank1 model?"
        )
    return ids[0]

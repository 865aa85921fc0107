"""``Rank1Reranker``: judge passages for a query with rank1, on any backend."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rank1_integrations.backends.base import Backend
from rank1_integrations.cache import GuardedCache, JudgmentCache, MemoryCache, cache_key
from rank1_integrations.calls import CallPlan, plan_call, validated
from rank1_integrations.errors import BackendError, InvalidInputError, ModelOutputError
from rank1_integrations.judging import FailurePolicy
from rank1_integrations.judgment import Judgment
from rank1_integrations.profiles import mismatches, profile_for, tokenizer_facts
from rank1_integrations.prompting import PreparedPrompt, PromptBuilder
from rank1_integrations.protocol import FALSE_LABEL, TRUE_LABEL
from rank1_integrations.streaming import CallDriver, adrive, drive
from rank1_integrations.templates import resolve_template

__all__ = ["DEFAULT_MAX_REASONING_TOKENS", "Rank1Reranker"]

logger = logging.getLogger("rank1_integrations")

DEFAULT_MAX_REASONING_TOKENS = 8192
"""The reasoning budget of the rank1 authors' runs."""

_KEEP = object()


class Rank1Reranker:
    """Judges passages with a rank1 model: a score, a verdict and the reasoning for each.

    One call sends all its reasoning requests to the engine at once, whatever the number
    of passages or queries; a passage whose answer must be forced gets its forced-answer
    request as soon as its reasoning is done. :meth:`judge_iter` and :meth:`ajudge_stream`
    hand over each judgment as soon as it is final.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        template: str | None = None,
        max_reasoning_tokens: int = DEFAULT_MAX_REASONING_TOKENS,
        context_size: int | None = None,
        on_failure: FailurePolicy = "raise",
        cache: JudgmentCache | bool = True,
    ) -> None:
        if not isinstance(max_reasoning_tokens, int) or max_reasoning_tokens < 1:
            raise InvalidInputError(f"max_reasoning_tokens must be a positive int, got {max_reasoning_tokens!r}")
        engine_context = backend.max_model_len
        if context_size is None:
            context_size = engine_context
        elif not isinstance(context_size, int) or not 0 < context_size <= engine_context:
            raise InvalidInputError(
                f"context_size must be a positive int no larger than the engine's {engine_context}, "
                f"got {context_size!r}"
            )
        if on_failure not in ("raise", "mark_unjudged"):
            raise InvalidInputError(f"on_failure must be 'raise' or 'mark_unjudged', got {on_failure!r}")
        self.backend = backend
        self.template = resolve_template(template)
        self.max_reasoning_tokens = max_reasoning_tokens
        self.context_size = context_size
        self.on_failure: FailurePolicy = on_failure
        self.cache: JudgmentCache | None = MemoryCache() if cache is True else None if cache is False else cache
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
        # Fails early (typed) when the budget leaves no room for any prompt.
        self._builder_for(self.template)

    @classmethod
    def from_vllm(
        cls,
        model: str,
        *,
        template: str | None = None,
        max_reasoning_tokens: int = DEFAULT_MAX_REASONING_TOKENS,
        context_size: int | None = None,
        on_failure: FailurePolicy = "raise",
        cache: JudgmentCache | bool = True,
        progress: bool = False,
        **engine_kwargs: Any,
    ) -> Rank1Reranker:
        """A reranker on an embedded ``vllm.LLM``; ``engine_kwargs`` go to vLLM unchanged.

        ``progress`` shows a progress bar (passages judged, on stderr) for each engine batch
        (off by default in library use).

        ``context_size`` also becomes the engine's ``max_model_len`` unless that is given.
        """
        from rank1_integrations.backends.vllm_engine import VLLMEngineBackend

        if context_size is not None:
            engine_kwargs.setdefault("max_model_len", context_size)
        backend = VLLMEngineBackend.load(model, progress=progress, **engine_kwargs)
        return cls(
            backend,
            template=template,
            max_reasoning_tokens=max_reasoning_tokens,
            context_size=context_size,
            on_failure=on_failure,
            cache=cache,
        )

    @classmethod
    def from_server(
        cls,
        base_url: str | Sequence[str],
        model: str | None = None,
        *,
        template: str | None = None,
        max_reasoning_tokens: int = DEFAULT_MAX_REASONING_TOKENS,
        context_size: int | None = None,
        on_failure: FailurePolicy = "raise",
        cache: JudgmentCache | bool = True,
        **backend_kwargs: Any,
    ) -> Rank1Reranker:
        """A reranker on vLLM OpenAI-compatible servers: one ``base_url`` or a list of replicas.

        ``model`` is the served model name (None: the only one served). ``backend_kwargs``
        go to :class:`~rank1_integrations.backends.remote.RemoteBackend`: ``api_key`` (a string
        or ``SecretStr``; None reads ``RANK1_API_KEY``, then ``VLLM_API_KEY``), ``verify``, and
        the fields of ``RemoteSettings`` (``timeout``, ``max_retries``, ``retry_budget``,
        ``max_concurrency``, ``prompts_per_request``, ...). See ``docs/remote.md``.
        """
        from rank1_integrations.backends.remote import RemoteBackend

        backend = RemoteBackend(base_url, model, **backend_kwargs)
        try:
            return cls(
                backend,
                template=template,
                max_reasoning_tokens=max_reasoning_tokens,
                context_size=context_size,
                on_failure=on_failure,
                cache=cache,
            )
        except BaseException:
            backend.close()
            raise

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.backend.model_name!r}, "
            f"max_reasoning_tokens={self.max_reasoning_tokens}, context_size={self.context_size}, "
            f"template={'custom' if self.template else None}, on_failure={self.on_failure!r})"
        )

    def close(self) -> None:
        """Release the backend: remote connections close; an embedded backend finishes the
        calls it is running and takes no more, but its engine stays up.

        vLLM keeps process-wide state per engine: tearing one embedded engine down can
        break others in the same process, so an embedded engine lives as long as the process.
        """
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

    def build_prompt(self, query: str, passage: str, *, template: Any = _KEEP) -> PreparedPrompt:
        """The exact prompt (text and token ids) this reranker would send for one passage."""
        validated([(query, [passage])])
        return self._builder_for(self.template if template is _KEEP else resolve_template(template)).build(
            query, passage
        )

    def cache_key(self, query: str, passage: str, *, template: Any = _KEEP) -> str:
        """The key of this passage's judgment: equal keys mean the same judgment (cache, shared work)."""
        return cache_key(
            model=self.backend.model_name,
            template=self.template if template is _KEEP else resolve_template(template),
            query=query,
            passage=passage,
            max_reasoning_tokens=self.max_reasoning_tokens,
            context_size=self.context_size,
        )

    def judge(self, query: str, passages: Sequence[str], *, template: Any = _KEEP) -> list[Judgment]:
        """Judge every passage for the query; same length and order as ``passages``."""
        return self.judge_many([(query, passages)], template=template)[0]

    async def ajudge(self, query: str, passages: Sequence[str], *, template: Any = _KEEP) -> list[Judgment]:
        """Async :meth:`judge`; never blocks the event loop."""
        return (await self.ajudge_many([(query, passages)], template=template))[0]

    def judge_many(
        self, batches: Sequence[tuple[str, Sequence[str]]], *, template: Any = _KEEP
    ) -> list[list[Judgment]]:
        """Judge several (query, passages) pairs in one engine batch."""
        driver = self._driver(self._plan(batches, template))
        for _ in drive(driver):
            pass
        return driver.finish()

    async def ajudge_many(
        self, batches: Sequence[tuple[str, Sequence[str]]], *, template: Any = _KEEP
    ) -> list[list[Judgment]]:
        """Async :meth:`judge_many`."""
        # Prompt building tokenizes (over HTTP on the remote backend): keep it off the event loop.
        driver = self._driver(await asyncio.to_thread(self._plan, batches, template))
        async for _ in adrive(driver):
            pass
        return driver.finish()

    def judge_iter(self, query: str, passages: Sequence[str], *, template: Any = _KEEP) -> Iterator[Judgment]:
        """Each passage's judgment as soon as it is final (cache hits first); ``Judgment.index`` says which.

        Leaving the loop early aborts the rest. A passage the backend failed on comes
        as an unjudged judgment under ``on_failure="mark_unjudged"``; under ``"raise"``
        the others come first, then ``PassagesFailedError`` (which carries them too).
        """
        driver = self._driver(self._plan([(query, passages)], template))
        try:
            for _, judgment in drive(driver):
                yield judgment
        finally:  # also when the caller leaves the loop early
            driver.cancel()
        driver.finish()

    async def ajudge_stream(
        self, query: str, passages: Sequence[str], *, template: Any = _KEEP
    ) -> AsyncGenerator[Judgment, None]:
        """Async :meth:`judge_iter`: ``async for judgment in reranker.ajudge_stream(query, passages)``.

        Breaking out of the loop, or cancelling the task, aborts the rest (use
        ``contextlib.aclosing`` to abort at once rather than when the iterator is collected).
        """
        driver = self._driver(await asyncio.to_thread(self._plan, [(query, passages)], template))
        try:
            async for _, judgment in adrive(driver):
                yield judgment
        finally:  # also when the caller leaves the loop early, or is cancelled
            driver.cancel()
        driver.finish()

    def _driver(self, plan: CallPlan) -> CallDriver:
        return CallDriver(plan, self.backend, on_failure=self.on_failure, cache=self._cache, builders=self._builders)

    def _builder_for(self, template: str | None) -> PromptBuilder:
        return PromptBuilder(
            self.backend.tokenizer,
            template=template,
            max_prompt_tokens=self.context_size - self.max_reasoning_tokens,
            context_size=self.context_size,
        )

    def _plan(self, batches: Sequence[tuple[str, Sequence[str]]], template: Any) -> CallPlan:
        if self._closed:
            raise BackendError(f"{self!r} is closed: make a new reranker")
        resolved = self.template if template is _KEEP else resolve_template(template)
        plan = plan_call(
            batches,
            self._builder_for(resolved),
            label_token_ids=self.label_token_ids,
            max_reasoning_tokens=self.max_reasoning_tokens,
            cache=self._cache,
            key_for=lambda query, passage: self.cache_key(query, passage, template=resolved),
        )
        # A tokenizer that costs a round trip per text builds prompts on a pool, while the
        # first requests already run; any other builds them all here, ahead.
        return plan if self._builders is not None else plan.build_all()


def _label_id(backend: Backend, label: str) -> int:
    ids = backend.tokenizer.encode_plain(label)
    if len(ids) != 1:
        raise ModelOutputError(
            f"the model's tokenizer splits the label {label!r} into {len(ids)} tokens; "
            "rank1 models answer with single-token labels: is this a rank1 model?"
        )
    return ids[0]

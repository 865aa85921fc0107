"""``Rank1Reranker``: judge passages for a query with rank1, on any backend."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from rank1_integrations.backends.base import AsyncBackend, Backend, CompletionRequest, CompletionResult
from rank1_integrations.cache import GuardedCache, JudgmentCache, MemoryCache, cache_key
from rank1_integrations.calls import CallPlan, plan_call, validated
from rank1_integrations.errors import BackendError, InvalidInputError, ModelOutputError
from rank1_integrations.judging import FailurePolicy
from rank1_integrations.judgment import Judgment
from rank1_integrations.profiles import mismatches, profile_for, tokenizer_facts
from rank1_integrations.prompting import FORCED_ANSWER_MARGIN, PreparedPrompt, PromptBuilder
from rank1_integrations.protocol import FALSE_LABEL, TRUE_LABEL
from rank1_integrations.templates import resolve_template

__all__ = ["DEFAULT_MAX_REASONING_TOKENS", "Rank1Reranker"]

logger = logging.getLogger("rank1_integrations")

DEFAULT_MAX_REASONING_TOKENS = 8192
"""The reasoning budget of the rank1 authors' runs."""

_KEEP = object()


class Rank1Reranker:
    """Judges passages with a rank1 model: a score, a verdict and the reasoning for each.

    One call is one engine batch (two when some answers must be forced), whatever
    the number of passages or queries.
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
        plan = self._plan(batches, template)
        requests = plan.run.start() if plan.run else []
        while requests:
            assert plan.run is not None
            try:
                results = self.backend.complete(requests)
            except BackendError as err:
                results = [err] * len(requests)
            requests = plan.run.advance(results)
        return plan.finish(self.on_failure, self._cache)

    async def ajudge_many(
        self, batches: Sequence[tuple[str, Sequence[str]]], *, template: Any = _KEEP
    ) -> list[list[Judgment]]:
        """Async :meth:`judge_many`."""
        # Prompt building tokenizes (over HTTP on the remote backend): keep it off the event loop.
        plan = await asyncio.to_thread(self._plan, batches, template)
        requests = plan.run.start() if plan.run else []
        while requests:
            assert plan.run is not None
            try:
                results = await self._acomplete(requests)
            except BackendError as err:
                results = [err] * len(requests)
            requests = plan.run.advance(results)
        return plan.finish(self.on_failure, self._cache)

    async def _acomplete(self, requests: Sequence[CompletionRequest]) -> list[CompletionResult]:
        if isinstance(self.backend, AsyncBackend):
            return await self.backend.acomplete(requests)
        return await asyncio.to_thread(self.backend.complete, requests)

    def _builder_for(self, template: str | None) -> PromptBuilder:
        return PromptBuilder(
            self.backend.tokenizer,
            template=template,
            max_prompt_tokens=self.context_size - self.max_reasoning_tokens - FORCED_ANSWER_MARGIN,
        )

    def _plan(self, batches: Sequence[tuple[str, Sequence[str]]], template: Any) -> CallPlan:
        if self._closed:
            raise BackendError(f"{self!r} is closed: make a new reranker")
        resolved = self.template if template is _KEEP else resolve_template(template)

        def key_for(query: str, passage: str) -> str:
            return cache_key(
                model=self.backend.model_name,
                template=resolved,
                query=query,
                passage=passage,
                max_reasoning_tokens=self.max_reasoning_tokens,
                context_size=self.context_size,
            )

        return plan_call(
            batches,
            self._builder_for(resolved),
            label_token_ids=self.label_token_ids,
            max_reasoning_tokens=self.max_reasoning_tokens,
            cache=self._cache,
            key_for=key_for,
        )


def _label_id(backend: Backend, label: str) -> int:
    ids = backend.tokenizer.encode_plain(label)
    if len(ids) != 1:
        raise ModelOutputError(
            f"the model's tokenizer splits the label {label!r} into {len(ids)} tokens; "
            "rank1 models answer with single-token labels: is this a rank1 model?"
        )
    return ids[0]

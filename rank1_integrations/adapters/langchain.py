"""LangChain document compressor: rank1 judges retrieved documents and keeps the relevant ones.

``Rank1Rerank`` works wherever a ``BaseDocumentCompressor`` does
(``ContextualCompressionRetriever``, ``DocumentCompressorPipeline``). It returns copies
of the documents it keeps (``id`` and metadata kept), best first, each with
``metadata["relevance_score"]`` and the ``rank1_*`` keys of
:data:`rank1_integrations.adapters.selection.RANK1_METADATA_KEYS`. The filter order and the
handling of empty and unjudged documents are those of :mod:`rank1_integrations.adapters.selection`.

While it judges, each document is announced as soon as rank1 has judged it: a custom event
``"rank1_judgment"`` whose data is ``{"index": position in the input, "document": a copy
with the rank1 metadata}`` (``rank1_kept_by`` None: not selected yet). A chat UI gets them
from ``astream_events`` (``event == "on_custom_event"``) or a callback handler's
``on_custom_event``, and can show sources before the slowest one is judged.
Needs only ``langchain-core`` (the ``langchain`` extra).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from contextlib import aclosing
from typing import Any

from rank1_integrations._optional import require

require("langchain_core", extras=("langchain",), purpose="rank1_integrations.adapters.langchain")

from langchain_core.callbacks import AsyncCallbackManager, CallbackManager, Callbacks  # noqa: E402
from langchain_core.documents import BaseDocumentCompressor, Document  # noqa: E402
from langchain_core.utils import secret_from_env  # noqa: E402
from pydantic import ConfigDict, Field, SecretStr, field_serializer, model_validator  # noqa: E402

from rank1_integrations.adapters.fields import (  # noqa: E402
    MinKeep,
    RollbackInvalidAssignment,
    ScoreThreshold,
    TopN,
    lift_api_key,
    redacted_base_url,
    redacted_repr_args,
)
from rank1_integrations.adapters.selection import (  # noqa: E402
    DEFAULT_SOURCE_TEMPLATE,
    ContextSource,
    EmptyTextPolicy,
    JudgingPlan,
    Pick,
    ReasoningShown,
    SelectionPolicy,
    format_context,
    needs_judging,
    plan_judging,
    rank1_metadata,
    resolve_reranker,
    select,
    template_kwargs,
)
from rank1_integrations.adapters.streamed import JUDGMENT_EVENT, JudgmentsSoFar  # noqa: E402
from rank1_integrations.backends.remote.config import API_KEY_ENV_VARS  # noqa: E402
from rank1_integrations.core.judgment import Judgment  # noqa: E402
from rank1_integrations.errors import InvalidInputError  # noqa: E402
from rank1_integrations.reranker import Rank1Reranker  # noqa: E402

__all__ = ["Rank1Rerank", "format_documents"]


class Rank1Rerank(RollbackInvalidAssignment, BaseDocumentCompressor):
    """Rerank and filter documents with rank1; every kept document carries rank1's reasoning.

    Give a ready ``reranker`` (shared, e.g. with a LlamaIndex postprocessor), or the settings
    to build one: ``model`` (an embedded engine) or ``base_url`` (vLLM servers, with
    ``api_key``), plus ``reranker_kwargs``. Filtering, in order: ``score_threshold`` (or
    rank1's verdict), then ``top_n``, then ``min_keep``. The filter settings can be changed
    after construction and are checked as on construction; the reranker and the settings it
    was built from cannot. No secret shows in ``repr``, ``model_dump`` or traces: the key is
    a ``SecretStr`` and credentials in ``base_url`` are redacted.
    """

    reranker: Rank1Reranker | None = Field(default=None, frozen=True)
    """The rank1 reranker (any backend); built from ``model`` / ``base_url`` when not given."""
    model: str | None = Field(default=None, frozen=True)
    """Without ``reranker``: the model for an embedded engine, or the served model name with ``base_url``."""
    base_url: str | list[str] | None = Field(default=None, frozen=True)
    """Without ``reranker``: vLLM server URL(s) to build a reranker on (``Rank1Reranker.from_server``)."""
    api_key: SecretStr | None = Field(
        default_factory=secret_from_env(list(API_KEY_ENV_VARS), default=None), frozen=True
    )
    """The servers' API key, with ``base_url``; defaults to ``RANK1_API_KEY``, then ``VLLM_API_KEY``."""
    reranker_kwargs: dict[str, Any] = Field(default_factory=dict, frozen=True)
    """More arguments for ``Rank1Reranker.from_vllm`` / ``from_server`` (reranker, engine or server settings)."""
    top_n: TopN = 3
    """Keep at most this many documents; None: every passing document; 0: none."""
    score_threshold: ScoreThreshold = None
    """A document passes when its score is at least this (in [0, 1]); None: when rank1 says relevant."""
    min_keep: MinKeep = 0
    """Keep at least this many (the best rejected ones) when rank1 rejects more; at most ``top_n``."""
    template: str | None = None
    """Relevance template (``FILL_QUERY_HERE`` or a ``DATASET_PROMPTS`` name); None: the reranker's own."""
    empty_text: EmptyTextPolicy = "not_relevant"
    """Documents with no text: ``"not_relevant"`` (never sent to rank1; score 0.0) or ``"raise"``."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _lift_api_key(cls, data: Any) -> Any:
        return lift_api_key(data)

    @model_validator(mode="after")
    def _check_and_build(self) -> Rank1Rerank:
        _ = self.policy  # checks the filter settings
        _ = template_kwargs(self.template)  # checks the template
        if "reranker" in self.model_fields_set:  # given: check it comes alone
            resolve_reranker(self.reranker, self.model, self.base_url, self.reranker_kwargs, api_key=self._given_key)
        elif self.reranker is None:  # on construction only: assignments never rebuild it
            key = self.api_key if self.base_url is not None else self._given_key
            reranker = resolve_reranker(None, self.model, self.base_url, self.reranker_kwargs, api_key=key)
            self.__dict__["reranker"] = reranker  # a frozen field, set once
        return self

    @field_serializer("base_url")
    def _redacted_base_url(self, base_url: str | list[str] | None) -> str | list[str] | None:
        return redacted_base_url(base_url)

    @field_serializer("reranker", when_used="json")
    def _reranker_as_text(self, reranker: Rank1Reranker | None) -> str | None:
        """A live reranker has no JSON form; its repr names the model and settings (no secrets)."""
        return None if reranker is None else repr(reranker)

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        return redacted_repr_args(super().__repr_args__())

    @property
    def _given_key(self) -> SecretStr | None:
        """The API key passed explicitly (not read from the environment)."""
        return self.api_key if "api_key" in self.model_fields_set else None

    @property
    def policy(self) -> SelectionPolicy:
        """The filter settings as a :class:`SelectionPolicy`."""
        return SelectionPolicy(top_n=self.top_n, score_threshold=self.score_threshold, min_keep=self.min_keep)

    @property
    def _reranker(self) -> Rank1Reranker:
        if self.reranker is None:  # only if the validator was bypassed (model_construct)
            raise InvalidInputError("Rank1Rerank has no reranker: build it with reranker=, model= or base_url=")
        return self.reranker

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Judge ``documents`` for ``query`` with rank1; return copies of the kept ones, best first.

        The call is one run (``Rank1Rerank``) for the given ``callbacks``, so tracers see
        its inputs, output documents and errors, and a ``"rank1_judgment"`` custom event
        per document as soon as it is judged.
        """
        texts = _texts(documents)
        manager = CallbackManager.configure(inheritable_callbacks=callbacks)
        run = manager.on_chain_start(None, _run_inputs(documents, query), name=type(self).__name__)
        try:
            plan = plan_judging(texts, empty_text=self.empty_text)
            judgments: list[Judgment] = []
            if needs_judging(self.policy, plan):
                so_far = JudgmentsSoFar(plan)
                announce = run.get_child()
                for judgment in self._reranker.judge_iter(query, plan.passages, **template_kwargs(self.template)):
                    for name, data in self._announcements(documents, so_far.add(judgment), announce):
                        announce.on_custom_event(name, data, run_id=run.run_id)
                judgments = so_far.in_order()
            result = self._keep(documents, plan, judgments)
        except BaseException as err:
            run.on_chain_error(err)
            raise
        run.on_chain_end({"documents": result})
        return result

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents`: awaits ``reranker.ajudge``, never blocks the event loop."""
        texts = _texts(documents)
        manager = AsyncCallbackManager.configure(inheritable_callbacks=callbacks)
        run = await manager.on_chain_start(None, _run_inputs(documents, query), name=type(self).__name__)
        try:
            plan = plan_judging(texts, empty_text=self.empty_text)
            judgments: list[Judgment] = []
            if needs_judging(self.policy, plan):
                so_far = JudgmentsSoFar(plan)
                announce = run.get_child()
                stream = self._reranker.ajudge_stream(query, plan.passages, **template_kwargs(self.template))
                async with aclosing(stream):  # an error or a cancellation aborts the rest at once
                    async for judgment in stream:
                        for name, data in self._announcements(documents, so_far.add(judgment), announce):
                            await announce.on_custom_event(name, data, run_id=run.run_id)
                judgments = so_far.in_order()
            result = self._keep(documents, plan, judgments)
        except BaseException as err:
            await run.on_chain_error(err)
            raise
        await run.on_chain_end({"documents": result})
        return result

    def _keep(self, documents: Sequence[Document], plan: JudgingPlan, judgments: Sequence[Judgment]) -> list[Document]:
        return [_copy(documents[pick.index], pick) for pick in select(self.policy, plan, judgments)]

    @staticmethod
    def _announcements(
        documents: Sequence[Document], picks: Sequence[Pick], callbacks: CallbackManager | AsyncCallbackManager
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """The custom events for documents rank1 has just judged (none when nobody listens)."""
        if not callbacks.handlers:
            return
        for pick in picks:
            yield JUDGMENT_EVENT, {"index": pick.index, "document": _copy(documents[pick.index], pick)}


def format_documents(
    documents: Sequence[Document],
    *,
    reasoning: ReasoningShown = "rationale",
    source_key: str = "source",
    template: str = DEFAULT_SOURCE_TEMPLATE,
    separator: str = "\n\n",
) -> str:
    """A context block of numbered sources, each with rank1's verdict, score and reason.

    Use it on ``Rank1Rerank``'s output, e.g. ``retriever | format_documents`` in a chain, with
    :data:`rank1_integrations.adapters.selection.ANSWER_WITH_SOURCES_PROMPT` or your own prompt.
    The reason is rank1's rationale (``metadata["rank1_rationale"]``, one or two sentences);
    ``reasoning="full"`` shows its whole reasoning instead.
    The source name is ``metadata[source_key]``, else the document's ``id``, else ``document N``.
    """
    return format_context(
        [
            ContextSource.from_metadata(doc.page_content, _source_name(doc, source_key, number), doc.metadata)
            for number, doc in enumerate(documents, start=1)
        ],
        reasoning=reasoning,
        template=template,
        separator=separator,
    )


def _copy(original: Document, pick: Pick) -> Document:
    metadata = copy.deepcopy(original.metadata)
    metadata.update(rank1_metadata(pick))
    return original.model_copy(update={"metadata": metadata})


def _texts(documents: Sequence[Document]) -> list[str]:
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise InvalidInputError(f"documents must be a sequence of Document, got {type(documents).__name__}")
    wrong = [i for i, doc in enumerate(documents) if not isinstance(doc, Document)]
    if wrong:
        raise InvalidInputError(f"documents at indices {wrong[:20]} are not langchain_core Documents")
    return [doc.page_content for doc in documents]


def _run_inputs(documents: Sequence[Document], query: str) -> dict[str, Any]:
    return {"query": query, "documents": list(documents)}


def _source_name(document: Document, source_key: str, number: int) -> str:
    source = document.metadata.get(source_key)
    if source not in (None, ""):
        return str(source)
    return str(document.id) if document.id else f"document {number}"

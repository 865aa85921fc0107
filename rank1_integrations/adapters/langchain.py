"""LangChain document compressor: rank1 judges retrieved documents and keeps the relevant ones, as copies
(``id`` and metadata kept), best first, with the ``rank1_*`` metadata; each document is announced as soon
as it is judged (custom event ``"rank1_judgment"``). Needs only ``langchain-core``."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from rank1_integrations._optional import require
from rank1_integrations.adapters.context import DEFAULT_SOURCE_TEMPLATE, ContextSource, ReasoningShown, format_context
from rank1_integrations.adapters.fields import Rank1AdapterFields
from rank1_integrations.adapters.selection import Pick, rank1_metadata
from rank1_integrations.errors import InvalidInputError

require("langchain_core", extras=("langchain",), purpose="rank1_integrations.adapters.langchain")

from langchain_core.callbacks import AsyncCallbackManager, CallbackManager, Callbacks  # noqa: E402
from langchain_core.documents import BaseDocumentCompressor, Document  # noqa: E402

__all__ = ["JUDGMENT_EVENT", "Rank1Rerank", "format_documents"]

JUDGMENT_EVENT = "rank1_judgment"
"""The custom event's name; its data: ``{"index": position in the input, "document": a copy}``."""


class Rank1Rerank(Rank1AdapterFields, BaseDocumentCompressor):
    """Rerank and filter documents with rank1; every kept document carries rank1's reasoning. ``reranker=``
    or ``settings=`` (neither: from ``RANK1_*`` variables); filtering: ``score_threshold``, ``top_n``, ``min_keep``."""

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Judge ``documents`` for ``query``; copies of the kept ones, best first, in one traced run."""
        texts = _texts(documents)
        manager = CallbackManager.configure(inheritable_callbacks=callbacks)
        run = manager.on_chain_start(None, {"query": query, "documents": list(documents)}, name=type(self).__name__)
        child = run.get_child()

        def announce(picks: list[Pick]) -> None:
            for pick in picks if child.handlers else ():
                child.on_custom_event(JUDGMENT_EVENT, _event(documents, pick), run_id=run.run_id)

        try:
            result = [_copy(documents[pick.index], pick) for pick in self._pick(query, texts, announce)]
        except BaseException as err:
            run.on_chain_error(err)
            raise
        run.on_chain_end({"documents": result})
        return result

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents` on ``reranker.ajudge_stream``; never blocks the event loop."""
        texts = _texts(documents)
        manager = AsyncCallbackManager.configure(inheritable_callbacks=callbacks)
        inputs = {"query": query, "documents": list(documents)}
        run = await manager.on_chain_start(None, inputs, name=type(self).__name__)
        child = run.get_child()

        async def announce(picks: list[Pick]) -> None:
            for pick in picks if child.handlers else ():
                await child.on_custom_event(JUDGMENT_EVENT, _event(documents, pick), run_id=run.run_id)

        try:
            result = [_copy(documents[pick.index], pick) for pick in await self._apick(query, texts, announce)]
        except BaseException as err:
            await run.on_chain_error(err)
            raise
        await run.on_chain_end({"documents": result})
        return result


def format_documents(
    documents: Sequence[Document],
    *,
    reasoning: ReasoningShown = "rationale",
    source_key: str = "source",
    template: str = DEFAULT_SOURCE_TEMPLATE,
    separator: str = "\n\n",
) -> str:
    """Kept documents as numbered sources with rank1's verdict, score and rationale
    (``reasoning="full"``: all of it), named by ``metadata[source_key]``, else the id."""
    sources = []
    for number, doc in enumerate(documents, start=1):
        name = doc.metadata.get(source_key)
        name = doc.id or f"document {number}" if name in (None, "") else name
        sources.append(ContextSource.from_metadata(doc.page_content, str(name), doc.metadata))
    return format_context(sources, reasoning=reasoning, template=template, separator=separator)


def _copy(original: Document, pick: Pick) -> Document:
    return original.model_copy(update={"metadata": {**copy.deepcopy(original.metadata), **rank1_metadata(pick)}})


def _event(documents: Sequence[Document], pick: Pick) -> dict[str, Any]:
    return {"index": pick.index, "document": _copy(documents[pick.index], pick)}


def _texts(documents: Sequence[Document]) -> list[str]:
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise InvalidInputError(f"documents must be a sequence of Document, got {type(documents).__name__}")
    wrong = [i for i, doc in enumerate(documents) if not isinstance(doc, Document)]
    if wrong:
        raise InvalidInputError(f"documents at indices {wrong[:20]} are not langchain_core Documents")
    return [doc.page_content for doc in documents]

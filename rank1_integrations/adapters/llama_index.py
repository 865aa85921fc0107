"""LlamaIndex node postprocessor: rank1 judges retrieved nodes and keeps the relevant ones, as deep copies
(``node_id`` kept) scored by rank1, best first, with the ``rank1_*`` metadata (never in the embedding text);
each node is announced as soon as it is judged (:class:`Rank1JudgmentEvent`)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

from rank1_integrations._optional import require
from rank1_integrations.adapters.context import DEFAULT_SOURCE_TEMPLATE, ContextSource, ReasoningShown, format_context
from rank1_integrations.adapters.fields import Rank1AdapterFields
from rank1_integrations.adapters.selection import RANK1_METADATA_KEYS, Pick, rank1_metadata
from rank1_integrations.errors import InvalidInputError
from rank1_integrations.reranker import Rank1Reranker

require("llama_index.core", extras=("llama-index",), purpose="rank1_integrations.adapters.llama_index")

from llama_index.core.bridge.pydantic import Field  # noqa: E402
from llama_index.core.callbacks import CBEventType, EventPayload  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]  # noqa: E402
from llama_index.core.instrumentation.events import BaseEvent  # noqa: E402
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent  # noqa: E402
from llama_index.core.postprocessor.types import BaseNodePostprocessor  # noqa: E402
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle  # noqa: E402
from pydantic import computed_field  # noqa: E402  (llama_index.core.bridge.pydantic does not re-export it)

__all__ = ["RETRIEVAL_SCORE_KEY", "Rank1JudgmentEvent", "Rank1Rerank", "format_nodes"]

RETRIEVAL_SCORE_KEY = "retrieval_score"
"""Metadata key of the retriever's score, with ``keep_retrieval_score=True`` (LlamaIndex's own key)."""

dispatcher = get_dispatcher(__name__)

_LLM_TEXT_KEY = {"rationale": "rank1_rationale", "full": "rank1_reasoning", "none": None}
"""The one rank1 metadata key each ``reasoning_in_llm_text`` setting leaves in the LLM text."""


class Rank1JudgmentEvent(BaseEvent):
    """rank1 has judged one node; sent while it judges the others (before the selection)."""

    index: int
    """The node's position in the list given to the postprocessor."""
    node: NodeWithScore
    """A copy of the node, scored by rank1, with the rank1 metadata (``rank1_kept_by`` None)."""

    @classmethod
    def class_name(cls) -> str:
        return "Rank1JudgmentEvent"


class Rank1Rerank(Rank1AdapterFields, BaseNodePostprocessor):
    """Rerank and filter nodes with rank1; every kept node carries rank1's reasoning. A ``reranker`` (the first
    argument) or ``settings=`` (neither: from ``RANK1_*`` variables); filtering: ``score_threshold``, ``top_n``,
    ``min_keep``. ``to_dict`` round-trips the settings (never the API key), not a live reranker (pass it again)."""

    metadata_mode: MetadataMode = Field(
        default=MetadataMode.EMBED, description="Which metadata goes into the text rank1 judges (node.get_content)."
    )
    reasoning_in_llm_text: Literal["rationale", "full", "none"] = Field(
        default="rationale",
        description="What of rank1's reasoning the node's LLM text shows: its rationale, all of it, or none.",
    )
    keep_retrieval_score: bool = Field(
        default=False, description="Keep the retriever's score in metadata['retrieval_score']."
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def reranker_source(self) -> Literal["given", "settings"]:
        """``"settings"``: ``from_dict`` builds the reranker from them; ``"given"``: pass it again."""
        return "given" if self.settings is None else "settings"

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> Rank1Rerank:
        data = dict(data)
        if data.pop("reranker_source", "settings") == "given" and kwargs.get("reranker") is None:
            raise InvalidInputError(
                "this Rank1Rerank was built around a live Rank1Reranker, which cannot be serialized: pass it "
                "again, Rank1Rerank.from_dict(data, reranker=reranker), or build one with settings="
            )
        return super().from_dict(data, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "Rank1Rerank"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query, payload = self._start(nodes, query_bundle, self._rank1())
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
            picks = self._pick(query, self._texts(nodes), partial(self._announce, nodes))
            kept = [self._copy(nodes[p.index], p) for p in picks]
            event.on_end(payload={EventPayload.NODES: kept})
        dispatcher.event(ReRankEndEvent(nodes=kept))
        return kept

    # LlamaIndex's span wraps only the abstract _postprocess_nodes: without this one, async events have none.
    @dispatcher.span
    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query, payload = self._start(nodes, query_bundle, await self._arank1())
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
            picks = await self._apick(query, self._texts(nodes), partial(self._announce, nodes))
            kept = [self._copy(nodes[p.index], p) for p in picks]
            event.on_end(payload={EventPayload.NODES: kept})
        dispatcher.event(ReRankEndEvent(nodes=kept))
        return kept

    def _start(
        self, nodes: Sequence[NodeWithScore], query_bundle: QueryBundle | None, reranker: Rank1Reranker
    ) -> tuple[str, dict[str, Any]]:
        """Check the inputs, emit the start event; the query and the legacy callback payload."""
        if query_bundle is None:
            raise InvalidInputError("Rank1Rerank needs the query: pass query_bundle or query_str")
        wrong = [i for i, n in enumerate(nodes) if not isinstance(n, NodeWithScore)]
        if wrong:
            raise InvalidInputError(f"nodes at indices {wrong[:20]} are not NodeWithScore")
        top_n, model_name, query = self.top_n, reranker.backend.model_name, query_bundle.query_str
        shown = len(nodes) if top_n is None else top_n
        dispatcher.event(ReRankStartEvent(query=query_bundle, nodes=list(nodes), top_n=shown, model_name=model_name))
        names = (EventPayload.NODES, EventPayload.MODEL_NAME, EventPayload.QUERY_STR, EventPayload.TOP_K)
        return query, dict(zip(names, (list(nodes), model_name, query, top_n), strict=True))

    def _texts(self, nodes: Sequence[NodeWithScore]) -> list[str]:
        return [n.node.get_content(metadata_mode=self.metadata_mode) for n in nodes]

    def _announce(self, nodes: Sequence[NodeWithScore], picks: list[Pick]) -> None:
        for pick in picks:
            dispatcher.event(Rank1JudgmentEvent(index=pick.index, node=self._copy(nodes[pick.index], pick)))

    def _copy(self, original: NodeWithScore, pick: Pick) -> NodeWithScore:
        """A deep copy of the node with the rank1 metadata, hidden from the embedding text."""
        added = rank1_metadata(pick)
        if self.keep_retrieval_score:
            added[RETRIEVAL_SCORE_KEY] = original.score
        node = original.node.model_copy(deep=True)
        hidden_from_llm = [key for key in added if key != _LLM_TEXT_KEY[self.reasoning_in_llm_text]]
        update = {
            "metadata": {**node.metadata, **added},
            "excluded_embed_metadata_keys": _merged(node.excluded_embed_metadata_keys, list(added)),
            "excluded_llm_metadata_keys": _merged(node.excluded_llm_metadata_keys, hidden_from_llm),
        }
        return NodeWithScore(node=node.model_copy(update=update), score=pick.score)


def format_nodes(
    nodes: Sequence[NodeWithScore],
    *,
    reasoning: ReasoningShown = "rationale",
    source_key: str = "file_name",
    template: str = DEFAULT_SOURCE_TEMPLATE,
    separator: str = "\n\n",
) -> str:
    """Kept nodes (e.g. ``response.source_nodes``) as numbered sources with rank1's verdict, score
    and rationale (``reasoning="full"``: all of it), named by ``metadata[source_key]``, else the id."""
    sources = []
    for n in nodes:
        source = n.node.metadata.get(source_key)
        name = str(source) if source not in (None, "") else n.node.node_id
        sources.append(ContextSource.from_metadata(n.node.get_content(MetadataMode.NONE), name, n.node.metadata))
    return format_context(sources, reasoning=reasoning, template=template, separator=separator)


def _merged(existing: Sequence[str], ours: Sequence[str]) -> list[str]:
    """The node's excluded keys (less the rank1 keys, which this pass decides afresh) plus ours."""
    kept = [key for key in existing if key not in RANK1_METADATA_KEYS]
    return kept + [key for key in ours if key not in kept]

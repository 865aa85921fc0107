"""LlamaIndex node postprocessor: rank1 judges retrieved nodes and keeps the relevant ones.

``Rank1Rerank`` works wherever a ``BaseNodePostprocessor`` does (query engines, chat
engines, ``postprocess_nodes`` by hand), sync and async. It returns new
``NodeWithScore`` objects holding copies of the kept nodes (``node_id`` kept), best first,
scored by rank1, with ``relevance_score`` and the ``rank1_*`` metadata keys of
:data:`rank1_integrations.adapters.selection.RANK1_METADATA_KEYS`. Those keys never reach the
embedding text (so the reasoning cannot feed back into retrieval or a second
reranker). The LLM text shows rank1's rationale (``rank1_rationale``: its conclusion, one or
two sentences); ``reasoning_in_llm_text="full"`` shows its whole reasoning, ``"none"`` neither.

While it judges, each node is announced as soon as rank1 has judged it: a
:class:`Rank1JudgmentEvent` (``index``: position in the input, ``node``: a copy with the rank1
metadata, ``rank1_kept_by`` None as it is not selected yet) on LlamaIndex's instrumentation
dispatcher, between ``ReRankStartEvent`` and ``ReRankEndEvent``; an event handler can show
sources before the slowest one is judged.
Needs only ``llama-index-core`` (the ``llama-index`` extra).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import aclosing
from typing import Any, Literal

from rank1_integrations._optional import require

require("llama_index.core", extras=("llama-index",), purpose="rank1_integrations.adapters.llama_index")

from llama_index.core.bridge.pydantic import (  # noqa: E402
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_serializer,
    model_validator,
)
from llama_index.core.callbacks import CBEventType, EventPayload  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]  # noqa: E402
from llama_index.core.instrumentation.events import BaseEvent  # noqa: E402
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent  # noqa: E402
from llama_index.core.postprocessor.types import BaseNodePostprocessor  # noqa: E402
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle  # noqa: E402
from pydantic import computed_field  # noqa: E402  (llama_index.core.bridge.pydantic does not re-export it)

from rank1_integrations.adapters.fields import (  # noqa: E402
    MinKeep,
    RollbackInvalidAssignment,
    ScoreThreshold,
    TopN,
    api_key_from_env,
    lift_api_key,
    redacted_base_url,
    redacted_repr_args,
)
from rank1_integrations.adapters.selection import (  # noqa: E402
    DEFAULT_SOURCE_TEMPLATE,
    RANK1_METADATA_KEYS,
    RATIONALE_KEY,
    REASONING_KEY,
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
from rank1_integrations.adapters.streamed import JudgmentsSoFar  # noqa: E402
from rank1_integrations.core.judgment import Judgment  # noqa: E402
from rank1_integrations.errors import InvalidInputError  # noqa: E402
from rank1_integrations.reranker import Rank1Reranker  # noqa: E402

__all__ = ["RETRIEVAL_SCORE_KEY", "Rank1JudgmentEvent", "Rank1Rerank", "format_nodes"]

RETRIEVAL_SCORE_KEY = "retrieval_score"
"""Metadata key of the retriever's score, with ``keep_retrieval_score=True`` (LlamaIndex's own key)."""

dispatcher = get_dispatcher(__name__)

_LLM_TEXT_KEY = {"rationale": RATIONALE_KEY, "full": REASONING_KEY, "none": None}
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


class Rank1Rerank(RollbackInvalidAssignment, BaseNodePostprocessor):
    """Rerank and filter nodes with rank1; every kept node carries rank1's reasoning.

    Give a ready ``reranker`` (shared, e.g. with a LangChain compressor), or the settings
    to build one: ``model`` (an embedded vLLM engine) or ``base_url`` (vLLM servers, with
    ``api_key``), plus ``reranker_kwargs`` (given to ``Rank1Reranker.from_vllm`` /
    ``from_server``). Filtering, in order: ``score_threshold`` (or rank1's verdict), then
    ``top_n``, then ``min_keep``. The filter settings can be changed after construction and
    are checked as on construction; the settings the reranker was built from cannot.

    ``to_dict`` / ``from_dict`` (and ``to_json`` / ``from_json``) round-trip the settings:
    one built from settings is rebuilt from them; one built around a live ``reranker`` needs
    it again (``Rank1Rerank.from_dict(data, reranker=reranker)``). Secrets are never
    serialized: ``api_key`` is left out (``from_dict`` reads the environment again, or pass
    ``api_key=``) and credentials in ``base_url`` are redacted, as in ``repr``.
    """

    model: str | None = Field(
        default=None,
        frozen=True,
        description="Without a reranker: the model for an embedded engine, or the served model name with base_url.",
    )
    base_url: str | list[str] | None = Field(
        default=None, frozen=True, description="Without a reranker: vLLM server URL(s) (Rank1Reranker.from_server)."
    )
    api_key: SecretStr | None = Field(
        default_factory=api_key_from_env,
        frozen=True,
        exclude=True,
        description="The servers' API key, with base_url; default: RANK1_API_KEY, then VLLM_API_KEY. Never serialized.",
    )
    reranker_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        frozen=True,
        description="Without a reranker: more arguments for Rank1Reranker.from_vllm / from_server.",
    )
    top_n: TopN = Field(default=3, description="Keep at most this many nodes; None: every passing node; 0: none.")
    score_threshold: ScoreThreshold = Field(
        default=None, description="A node passes when its score is at least this (in [0, 1]); None: when relevant."
    )
    min_keep: MinKeep = Field(
        default=0, description="Keep at least this many (the best rejected ones) when rank1 rejects more; <= top_n."
    )
    template: str | None = Field(
        default=None, description="Relevance template (FILL_QUERY_HERE or a DATASET_PROMPTS name); None: reranker's."
    )
    empty_text: EmptyTextPolicy = Field(
        default="not_relevant",
        description="Nodes with no text: 'not_relevant' (never sent to rank1; score 0.0) or 'raise'.",
    )
    metadata_mode: MetadataMode = Field(
        default=MetadataMode.EMBED, description="Which metadata goes into the text rank1 judges (node.get_content)."
    )
    reasoning_in_llm_text: Literal["rationale", "full", "none"] = Field(
        default="rationale",
        description="What of rank1's reasoning the node's LLM text shows: its rationale (one or two sentences), "
        "all of it, or none.",
    )
    keep_retrieval_score: bool = Field(
        default=False, description="Keep the retriever's score in metadata['retrieval_score']."
    )

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", validate_assignment=True)

    _reranker: Rank1Reranker = PrivateAttr()
    _reranker_given: bool = PrivateAttr(default=False)

    def __init__(self, reranker: Rank1Reranker | None = None, **fields: Any) -> None:
        super().__init__(**fields)
        given_key = self.api_key if "api_key" in self.model_fields_set else None
        key = self.api_key if reranker is None and self.base_url is not None else given_key
        self._reranker = resolve_reranker(reranker, self.model, self.base_url, self.reranker_kwargs, api_key=key)
        self._reranker_given = reranker is not None

    @model_validator(mode="before")
    @classmethod
    def _lift_api_key(cls, data: Any) -> Any:
        return lift_api_key(data)

    @model_validator(mode="after")
    def _check_settings(self) -> Rank1Rerank:
        _ = self.policy  # checks the filter settings
        _ = template_kwargs(self.template)  # checks the template
        return self

    @field_serializer("base_url")
    def _redacted_base_url(self, base_url: str | list[str] | None) -> str | list[str] | None:
        return redacted_base_url(base_url)

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        return redacted_repr_args(super().__repr_args__())

    @computed_field  # type: ignore[prop-decorator]
    @property
    def reranker_source(self) -> Literal["given", "settings"]:
        """``"settings"``: ``from_dict`` rebuilds the reranker from them; ``"given"``: a live
        reranker, which has no serial form and must be passed to ``from_dict`` again."""
        return "given" if self._reranker_given else "settings"

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> Rank1Rerank:
        """Rebuild from ``to_dict``; one built around a live reranker needs it again (``reranker=``)."""
        data = dict(data)
        if data.pop("reranker_source", "settings") == "given" and kwargs.get("reranker") is None:
            raise InvalidInputError(
                "this Rank1Rerank was built around a live Rank1Reranker, which cannot be serialized: pass it "
                "again, Rank1Rerank.from_dict(data, reranker=reranker), or build one from settings "
                "(model= or base_url=, with reranker_kwargs=)"
            )
        return super().from_dict(data, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "Rank1Rerank"

    @property
    def reranker(self) -> Rank1Reranker:
        """The rank1 reranker (any backend)."""
        return self._reranker

    @property
    def policy(self) -> SelectionPolicy:
        """The filter settings as a :class:`SelectionPolicy`."""
        return SelectionPolicy(top_n=self.top_n, score_threshold=self.score_threshold, min_keep=self.min_keep)

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query = self._start(nodes, query_bundle)
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._payload(nodes, query)) as event:
            plan = plan_judging(self._texts(nodes), empty_text=self.empty_text)
            judgments: list[Judgment] = []
            if needs_judging(self.policy, plan):
                so_far = JudgmentsSoFar(plan)
                for judgment in self._reranker.judge_iter(query, plan.passages, **template_kwargs(self.template)):
                    self._announce(nodes, so_far.add(judgment))
                judgments = so_far.in_order()
            kept = self._keep(nodes, plan, judgments)
            event.on_end(payload={EventPayload.NODES: kept})
        dispatcher.event(ReRankEndEvent(nodes=kept))
        return kept

    # LlamaIndex's DispatcherSpanMixin puts a span only around the abstract _postprocess_nodes;
    # without this one the async events would have no span (span_id None) to belong to.
    @dispatcher.span
    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query = self._start(nodes, query_bundle)
        with self.callback_manager.event(CBEventType.RERANKING, payload=self._payload(nodes, query)) as event:
            plan = plan_judging(self._texts(nodes), empty_text=self.empty_text)
            judgments: list[Judgment] = []
            if needs_judging(self.policy, plan):
                so_far = JudgmentsSoFar(plan)
                stream = self._reranker.ajudge_stream(query, plan.passages, **template_kwargs(self.template))
                async with aclosing(stream):  # an error or a cancellation aborts the rest at once
                    async for judgment in stream:
                        self._announce(nodes, so_far.add(judgment))
                judgments = so_far.in_order()
            kept = self._keep(nodes, plan, judgments)
            event.on_end(payload={EventPayload.NODES: kept})
        dispatcher.event(ReRankEndEvent(nodes=kept))
        return kept

    def _start(self, nodes: Sequence[NodeWithScore], query_bundle: QueryBundle | None) -> str:
        """Check the inputs, then emit the start event; returns the query text."""
        if query_bundle is None:
            raise InvalidInputError("Rank1Rerank needs the query: pass query_bundle or query_str")
        wrong = [i for i, n in enumerate(nodes) if not isinstance(n, NodeWithScore)]
        if wrong:
            raise InvalidInputError(f"nodes at indices {wrong[:20]} are not NodeWithScore")
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle,
                nodes=list(nodes),
                top_n=len(nodes) if self.top_n is None else self.top_n,
                model_name=self._reranker.backend.model_name,
            )
        )
        return query_bundle.query_str

    def _payload(self, nodes: Sequence[NodeWithScore], query: str) -> dict[str, Any]:
        return {
            EventPayload.NODES: list(nodes),
            EventPayload.MODEL_NAME: self._reranker.backend.model_name,
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: self.top_n,
        }

    def _texts(self, nodes: Sequence[NodeWithScore]) -> list[str]:
        return [n.node.get_content(metadata_mode=self.metadata_mode) for n in nodes]

    def _announce(self, nodes: Sequence[NodeWithScore], picks: Sequence[Pick]) -> None:
        for pick in picks:
            dispatcher.event(Rank1JudgmentEvent(index=pick.index, node=self._copy(nodes[pick.index], pick)))

    def _keep(
        self, nodes: Sequence[NodeWithScore], plan: JudgingPlan, judgments: Sequence[Judgment]
    ) -> list[NodeWithScore]:
        return [self._copy(nodes[pick.index], pick) for pick in select(self.policy, plan, judgments)]

    def _copy(self, original: NodeWithScore, pick: Pick) -> NodeWithScore:
        """A deep copy of the node with the rank1 metadata, hidden from the embedding text."""
        added = rank1_metadata(pick)
        if self.keep_retrieval_score:
            added[RETRIEVAL_SCORE_KEY] = original.score
        node = original.node.model_copy(deep=True)
        shown = _LLM_TEXT_KEY[self.reasoning_in_llm_text]
        hidden_from_llm = [key for key in added if key != shown]
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
    """A context block of numbered sources, each with rank1's verdict, score and reason.

    Use it on ``Rank1Rerank``'s output (e.g. ``response.source_nodes``) with
    :data:`rank1_integrations.adapters.selection.ANSWER_WITH_SOURCES_PROMPT` or your own prompt.
    The reason is rank1's rationale (one or two sentences); ``reasoning="full"`` shows its
    whole reasoning instead. The text is the node's content without metadata; the source
    name is ``metadata[source_key]``, else the node id.
    """
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

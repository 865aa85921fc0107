"""The LlamaIndex postprocessor on a real rank1 reranker (the scripted test model on an embedded vLLM engine).

Expectations come from the script (which passage rank1 calls relevant, which answer is
forced) and from ``reranker.judge`` on the same passages (scores, reasoning).
"""

from __future__ import annotations

import copy
import importlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler
from llama_index.core.llms import MockLLM
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from rank1_integrations import InvalidInputError, Judgment, MissingDependencyError
from rank1_integrations.adapters.llama_index import Rank1JudgmentEvent, Rank1Rerank, format_nodes
from rank1_integrations.adapters.selection import RANK1_METADATA_KEYS
from rank1_integrations.reranker import Rank1Reranker
from rank1_integrations.settings import Rank1Settings
from tests.adapter_support import (
    BREAD,
    REMOTE_TOLERANCE,
    TOLERANCE,
    hashed_embedding,
    recording,
)
from tests.conftest import SCRIPTED_BUDGET
from tests.models.tiny_models import (
    JOIN_PASSAGE,
    JOIN_QUERY,
    LEN_PASSAGE,
    LEN_QUERY,
    OPEN_PASSAGE,
    SORTED_PASSAGE,
)

pytestmark = pytest.mark.engine


# -- helpers: a real (tiny) embedding, a recording backend, an event recorder -----------


class BagOfWordsEmbedding(BaseEmbedding):
    """Hashed words and character trigrams, L2-normalised: lexical retrieval, deterministic."""

    def _embed(self, text: str) -> list[float]:
        return hashed_embedding(text)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._embed(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed(text)


class EventRecorder(BaseEventHandler):
    events: list[Any] = Field(default_factory=list)

    def handle(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, ReRankStartEvent | ReRankEndEvent):
            self.events.append(event)


@pytest.fixture
def events():
    root = get_dispatcher()
    recorder = EventRecorder()
    root.add_event_handler(recorder)
    yield recorder.events
    root.event_handlers.remove(recorder)


def nodes() -> list[NodeWithScore]:
    def node(key: str, text: str, score: float) -> NodeWithScore:
        metadata = {"file_name": f"{key}.txt", "nested": {"k": [1]}}
        return NodeWithScore(
            node=TextNode(
                id_=key,
                text=text,
                metadata=metadata,
                excluded_embed_metadata_keys=["file_name", "nested"],
                excluded_llm_metadata_keys=["nested"],
            ),
            score=score,
        )

    return [node("sorted", SORTED_PASSAGE, 0.9), node("len", LEN_PASSAGE, 0.8), node("open", OPEN_PASSAGE, 0.7)]


def rank1_keys(j: Judgment, *, kept_by: str | None = "relevance") -> dict[str, object]:
    return {
        "relevance_score": pytest.approx(j.score, abs=TOLERANCE),
        "rank1_reasoning": j.reasoning,
        "rank1_rationale": j.rationale,
        "rank1_relevant": j.relevant,
        "rank1_forced": j.forced,
        "rank1_reasoning_tokens": j.reasoning_tokens,
        "rank1_truncated": False,
        "rank1_status": "judged",
        "rank1_kept_by": kept_by,
        "rank1_error": None,
        "rank1_reasoning_effort": j.reasoning_effort,
        "rank1_reasoned": j.reasoned,
    }


async def postprocess(
    post: Rank1Rerank, given: list[NodeWithScore], query: str, use_async: bool
) -> list[NodeWithScore]:
    if use_async:
        return await post.apostprocess_nodes(given, query_str=query)
    return post.postprocess_nodes(given, query_str=query)


# -- postprocess_nodes -----------------------------------------------------------------


@pytest.mark.parametrize("use_async", [False, True])
async def test_keeps_relevant_nodes_as_copies_scored_by_rank1(reranker, truth, use_async):
    given = nodes()
    before = [copy.deepcopy(n.node.model_dump()) for n in given]
    kept = await postprocess(Rank1Rerank(reranker), given, LEN_QUERY, use_async)
    assert [(n.node.node_id, n.score) for n in kept] == [("len", pytest.approx(truth["len"].score, abs=TOLERANCE))]
    node = kept[0].node
    assert node is not given[1].node
    assert kept[0] is not given[1]
    assert node.metadata == {"file_name": "len.txt", "nested": {"k": [1]}, **rank1_keys(truth["len"])}
    assert node.metadata["nested"] is not given[1].node.metadata["nested"]
    assert node.excluded_embed_metadata_keys == ["file_name", "nested", *RANK1_METADATA_KEYS]
    assert node.excluded_llm_metadata_keys == ["nested", *(k for k in RANK1_METADATA_KEYS if k != "rank1_rationale")]
    # rank1 saw the embedding text; its reasoning never joins it, but the LLM reads its rationale
    assert node.get_content(MetadataMode.EMBED) == LEN_PASSAGE
    assert node.get_content(MetadataMode.LLM) == (
        f"file_name: len.txt\nrank1_rationale: {truth['len'].rationale}\n\n{LEN_PASSAGE}"
    )
    assert [n.node.model_dump() for n in given] == before  # the caller's nodes are untouched


def test_reasoning_can_stay_out_of_the_llm_text_or_show_in_full(reranker, truth):
    post = Rank1Rerank(reranker, reasoning_in_llm_text="none", keep_retrieval_score=True)
    (kept,) = post.postprocess_nodes(nodes(), query_str=LEN_QUERY)
    assert kept.node.get_content(MetadataMode.LLM) == f"file_name: len.txt\n\n{LEN_PASSAGE}"
    assert kept.node.metadata["retrieval_score"] == 0.8
    assert kept.node.metadata["rank1_reasoning"] == truth["len"].reasoning
    assert "retrieval_score" in kept.node.excluded_embed_metadata_keys
    post = Rank1Rerank(reranker, reasoning_in_llm_text="full", score_threshold=0.0, top_n=None)
    kept = {n.node.node_id: n.node for n in post.postprocess_nodes(nodes(), query_str=LEN_QUERY)}
    assert kept["open"].get_content(MetadataMode.LLM) == (
        f"file_name: open.txt\nrank1_reasoning: {truth['open'].reasoning}\n\n{OPEN_PASSAGE}"
    )
    assert len(truth["open"].reasoning) > len(truth["open"].rationale)  # forced: cut by the budget mid-thought


async def test_a_second_reranker_sees_the_original_text(reranker, truth):
    first = Rank1Rerank(reranker, min_keep=2, reasoning_in_llm_text="none")
    spy = recording(reranker)
    second = Rank1Rerank(spy, score_threshold=0.0)
    kept = await second.apostprocess_nodes(first.postprocess_nodes(nodes(), query_str=LEN_QUERY), query_str=LEN_QUERY)
    assert spy.backend.sent() == [LEN_PASSAGE, OPEN_PASSAGE]
    assert [(n.node.node_id, n.node.metadata["rank1_kept_by"]) for n in kept] == [
        ("len", "relevance"),
        ("open", "relevance"),
    ]
    assert kept[1].node.metadata == {"file_name": "open.txt", "nested": {"k": [1]}, **rank1_keys(truth["open"])}
    assert "rank1_rationale: " in kept[1].node.get_content(MetadataMode.LLM)  # this pass's setting wins


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"min_keep": 2}, [("len", "relevance"), ("open", "min_keep")]),
        (
            {"score_threshold": 0.0, "top_n": None},
            [("len", "relevance"), ("open", "relevance"), ("sorted", "relevance")],
        ),
        ({"score_threshold": 0.0, "top_n": 10}, [("len", "relevance"), ("open", "relevance"), ("sorted", "relevance")]),
        ({"score_threshold": 0.15, "top_n": 1}, [("len", "relevance")]),
        (
            {"score_threshold": 0.99, "top_n": 3, "min_keep": 3},
            [("len", "min_keep"), ("open", "min_keep"), ("sorted", "min_keep")],
        ),
    ],
)
def test_filter_order(reranker, truth, settings, expected):
    kept = Rank1Rerank(reranker, **settings).postprocess_nodes(nodes(), query_str=LEN_QUERY)
    assert [(n.node.node_id, n.node.metadata["rank1_kept_by"]) for n in kept] == expected
    for n in kept:
        assert n.score == pytest.approx(truth[n.node.node_id].score, abs=TOLERANCE)


@pytest.mark.parametrize("use_async", [False, True])
async def test_early_returns_emit_both_events_and_skip_the_engine(reranker, events, use_async):
    spy = recording(reranker)
    assert await postprocess(Rank1Rerank(spy, top_n=0), nodes(), LEN_QUERY, use_async) == []
    assert await postprocess(Rank1Rerank(spy), [], LEN_QUERY, use_async) == []
    empty = [NodeWithScore(node=TextNode(text=" ", id_="blank"), score=1.0)]
    assert await postprocess(Rank1Rerank(spy), empty, LEN_QUERY, use_async) == []
    assert spy.backend.calls == []
    assert [(type(e).__name__, len(e.nodes)) for e in events] == [
        ("ReRankStartEvent", 3),
        ("ReRankEndEvent", 0),
        ("ReRankStartEvent", 0),
        ("ReRankEndEvent", 0),
        ("ReRankStartEvent", 1),
        ("ReRankEndEvent", 0),
    ]


def test_events_and_legacy_callbacks(reranker, events):
    debug = LlamaDebugHandler()
    post = Rank1Rerank(reranker, top_n=None, callback_manager=CallbackManager([debug]))
    kept = post.postprocess_nodes(nodes(), query_bundle=QueryBundle(LEN_QUERY))
    start, end = events
    assert isinstance(start, ReRankStartEvent)
    assert isinstance(end, ReRankEndEvent)
    assert (start.query.query_str, start.top_n, len(start.nodes)) == (LEN_QUERY, 3, 3)
    assert start.model_name == reranker.backend.model_name
    assert end.nodes == kept
    ((begin, finish),) = debug.get_event_pairs(CBEventType.RERANKING)
    assert begin.payload[EventPayload.QUERY_STR] == LEN_QUERY
    assert begin.payload[EventPayload.TOP_K] is None
    assert finish.payload[EventPayload.NODES] == kept


@pytest.mark.parametrize("use_async", [False, True])
async def test_both_paths_run_inside_a_dispatcher_span(reranker, events, use_async):
    """Tracing tools group a call's events by span: sync and async alike."""
    spans = SimpleSpanHandler()
    root = get_dispatcher()
    root.add_span_handler(spans)
    try:
        await postprocess(Rank1Rerank(reranker), nodes(), LEN_QUERY, use_async)
    finally:
        root.span_handlers.remove(spans)
    start, end = events
    method = "_apostprocess_nodes" if use_async else "_postprocess_nodes"
    assert start.span_id is not None
    assert start.span_id.startswith(f"Rank1Rerank.{method}-")
    assert end.span_id == start.span_id
    assert start.span_id in [span.id_ for span in spans.completed_spans]


class Announcements(BaseEventHandler):
    """rank1's judgment events with the rerank events around them."""

    events: list[Any] = Field(default_factory=list)

    def handle(self, event: Any, **kwargs: Any) -> None:
        if isinstance(event, ReRankStartEvent | ReRankEndEvent | Rank1JudgmentEvent):
            self.events.append(event)


@pytest.mark.parametrize("use_async", [False, True])
async def test_each_node_is_announced_as_soon_as_rank1_has_judged_it(reranker, truth, use_async):
    given = [*nodes(), NodeWithScore(node=TextNode(id_="len again", text=LEN_PASSAGE)), NodeWithScore(node=TextNode())]
    listener = Announcements()
    root = get_dispatcher()
    root.add_event_handler(listener)
    try:
        kept = await postprocess(Rank1Rerank(reranker, top_n=1), given, LEN_QUERY, use_async)
    finally:
        root.event_handlers.remove(listener)
    start, *announced, end = listener.events
    assert (type(start), type(end)) == (ReRankStartEvent, ReRankEndEvent)
    assert all(isinstance(event, Rank1JudgmentEvent) for event in announced)
    assert {event.span_id for event in listener.events} == {start.span_id}
    # every judged node once (the duplicate text too: one judgment, two nodes), not the empty one
    assert sorted(event.index for event in announced) == [0, 1, 2, 3]
    names = {0: "sorted", 1: "len", 2: "open", 3: "len"}
    for event in announced:
        original = given[event.index]
        assert event.node.node.node_id == original.node.node_id
        assert event.node.node is not original.node
        assert event.node.score == pytest.approx(truth[names[event.index]].score, abs=TOLERANCE)
        rank1 = {k: v for k, v in event.node.node.metadata.items() if k.startswith(("rank1_", "relevance"))}
        assert rank1 == rank1_keys(truth[names[event.index]], kept_by=None)
    # the forced answer takes a second round: its node is announced last, after the quick ones
    assert announced[-1].index == 2
    assert [n.node.node_id for n in kept] == ["len"]
    assert kept[0].node.metadata["rank1_kept_by"] == "relevance"


def test_empty_texts_and_duplicates(reranker, truth):
    given = [
        NodeWithScore(node=TextNode(text=LEN_PASSAGE, id_="a")),
        NodeWithScore(node=TextNode(text="", id_="empty")),
        NodeWithScore(node=TextNode(text=SORTED_PASSAGE, id_="s")),
        NodeWithScore(node=TextNode(text=LEN_PASSAGE, id_="b")),
    ]
    spy = recording(reranker)
    kept = Rank1Rerank(spy, score_threshold=0.0, top_n=None).postprocess_nodes(given, query_str=LEN_QUERY)
    assert spy.backend.sent() == [LEN_PASSAGE, SORTED_PASSAGE]
    assert [(n.node.node_id, n.node.metadata["rank1_status"]) for n in kept] == [
        ("a", "judged"),
        ("b", "judged"),
        ("s", "judged"),
        ("empty", "empty"),
    ]
    assert kept[0].score == kept[1].score == pytest.approx(truth["len"].score, abs=TOLERANCE)
    assert kept[3].score == 0.0
    with pytest.raises(InvalidInputError, match=r"indices \[1\]"):
        Rank1Rerank(reranker, empty_text="raise").postprocess_nodes(given, query_str=LEN_QUERY)


@pytest.mark.parametrize("use_async", [False, True])
async def test_unjudged_nodes_are_explicit(reranker, truth, use_async):
    spy = recording(reranker, fail=[SORTED_PASSAGE], on_failure="mark_unjudged")
    kept = await postprocess(Rank1Rerank(spy, min_keep=3), nodes(), LEN_QUERY, use_async)
    assert [(n.node.node_id, n.node.metadata["rank1_kept_by"]) for n in kept] == [
        ("len", "relevance"),
        ("open", "min_keep"),
        ("sorted", "min_keep"),
    ]
    assert kept[2].score is None
    assert kept[2].node.metadata["rank1_status"] == "unjudged"
    assert kept[2].node.metadata["rank1_error"] == "BackendError: injected failure"


async def test_async_is_native_and_sync_stays_sync(reranker):
    spy = recording(reranker)
    post = Rank1Rerank(spy)
    assert type(post)._apostprocess_nodes is not BaseNodePostprocessor._apostprocess_nodes
    await post.apostprocess_nodes(nodes()[:2], query_str=LEN_QUERY)
    post.postprocess_nodes(nodes()[:2], query_str=LEN_QUERY)
    assert spy.entry_points == ["ajudge_stream", "judge_iter"]


def test_metadata_mode_picks_the_text_rank1_judges(reranker):
    spy = recording(reranker)
    Rank1Rerank(spy, metadata_mode=MetadataMode.LLM).postprocess_nodes(nodes()[1:2], query_str=LEN_QUERY)
    assert f"file_name: len.txt\n\n{LEN_PASSAGE}" in spy.backend.calls[0][1][0]


# -- inside a LlamaIndex index and query engine -------------------------------------------


@pytest.fixture(scope="module")
def index() -> VectorStoreIndex:
    texts = {"len": LEN_PASSAGE, "sorted": SORTED_PASSAGE, "join": JOIN_PASSAGE, "bread": BREAD}
    docs = [
        Document(text=t, doc_id=k, metadata={"file_name": f"{k}.txt"}, excluded_embed_metadata_keys=["file_name"])
        for k, t in texts.items()
    ]
    return VectorStoreIndex.from_documents(docs, embed_model=BagOfWordsEmbedding())


@pytest.mark.parametrize("use_async", [False, True])
async def test_query_engine(reranker, truth, index, events, use_async):
    retriever = index.as_retriever(similarity_top_k=2)
    # the lexical retriever ranks the sorted() passage first; rank1 knows better
    assert [n.node.ref_doc_id for n in retriever.retrieve(LEN_QUERY)] == ["sorted", "len"]
    assert [n.node.ref_doc_id for n in retriever.retrieve(JOIN_QUERY)] == ["join", "len"]
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=2, node_postprocessors=[Rank1Rerank(reranker, min_keep=2)]
    )
    responses = [await engine.aquery(q) if use_async else engine.query(q) for q in (LEN_QUERY, JOIN_QUERY)]
    by_len, by_join = (r.source_nodes for r in responses)
    assert [(n.node.ref_doc_id, n.score, n.node.metadata) for n in by_len] == [
        ("len", pytest.approx(truth["len"].score, abs=TOLERANCE), {"file_name": "len.txt", **rank1_keys(truth["len"])}),
        (
            "sorted",
            pytest.approx(truth["sorted"].score, abs=TOLERANCE),
            {"file_name": "sorted.txt", **rank1_keys(truth["sorted"], kept_by="min_keep")},
        ),
    ]
    assert [(n.node.ref_doc_id, n.node.metadata["rank1_kept_by"]) for n in by_join] == [
        ("join", "relevance"),
        ("len", "min_keep"),
    ]
    assert by_join[1].node.metadata["rank1_reasoning"] == truth["join/len"].reasoning
    # the answer LLM (MockLLM echoes its prompt) was shown rank1's rationale
    assert f"rank1_rationale: {truth['len'].rationale}" in str(responses[0])
    assert [type(e).__name__ for e in events] == ["ReRankStartEvent", "ReRankEndEvent"] * 2
    assert format_nodes(by_len) == (
        f"[1] len.txt (relevant, score {truth['len'].score:.2f})\n{LEN_PASSAGE}\n"
        f"rank1's reasoning: {truth['len'].rationale}\n\n"
        f"[2] sorted.txt (not relevant, score {truth['sorted'].score:.2f}, kept only to reach the minimum number of "
        f"sources)\n{SORTED_PASSAGE}\nrank1's reasoning: {truth['sorted'].rationale}"
    )


@pytest.mark.parametrize("use_async", [False, True])
async def test_reasoning_effort_is_a_per_call_change_and_adaptive_reasons_at_the_cut(reranker, use_async):
    keys = [n.node.node_id for n in nodes()]
    texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes()]
    no_think = dict(
        zip(keys, [j.score for j in reranker.judge(LEN_QUERY, texts, reasoning_effort="none")], strict=True)
    )
    judged = await _judged(Rank1Rerank(reranker, reasoning_effort="none"), use_async)
    assert {key: m["relevance_score"] for key, m in judged.items()} == pytest.approx(no_think, abs=TOLERANCE)
    how = {(m["rank1_reasoning_effort"], m["rank1_reasoned"], m["rank1_reasoning_tokens"]) for m in judged.values()}
    assert how == {("none", False, 0)}
    # adaptive reasons on the adapter's cut: its top_n no-think favourites, and scores near its threshold
    narrow = Rank1Reranker(reranker.backend, max_reasoning_tokens=SCRIPTED_BUDGET, cache=False, adaptive_margin=1e-3)
    judged = await _judged(Rank1Rerank(narrow, reasoning_effort="adaptive", top_n=1), use_async)
    assert {key for key, m in judged.items() if m["rank1_reasoned"]} == {max(no_think, key=lambda k: no_think[k])}
    at_open = Rank1Rerank(narrow, reasoning_effort="adaptive", top_n=None, score_threshold=no_think["open"])
    judged = await _judged(at_open, use_async)
    assert {key for key, m in judged.items() if m["rank1_reasoned"]} == {"open"}


async def _judged(post: Rank1Rerank, use_async: bool) -> dict[str, dict[str, Any]]:
    """The rank1 metadata of every node the postprocessor judged (announced), by node id."""
    listener = Announcements()
    get_dispatcher().add_event_handler(listener)
    try:
        await postprocess(post, nodes(), LEN_QUERY, use_async)
    finally:
        get_dispatcher().event_handlers.remove(listener)
    announced = [event.node.node for event in listener.events if isinstance(event, Rank1JudgmentEvent)]
    return {node.node_id: node.metadata for node in announced}


@pytest.fixture(scope="module")
def remote_postprocessor(scripted_model_dir, model_cache, request) -> Iterator[Rank1Rerank]:
    """Built from server settings, on the run's shared vLLM server (started if not running yet)."""
    from tests.vllm_server import shared_server, stop_all

    request.config.add_cleanup(stop_all)
    server = shared_server(scripted_model_dir, "--enable-tokenizer-info-endpoint", log_dir=model_cache).wait_ready()
    settings = Rank1Settings(
        servers=(server.base_url,), model=server.model, max_reasoning_tokens=SCRIPTED_BUDGET, cache_entries=0
    )
    post = Rank1Rerank(settings=settings, min_keep=2)
    yield post
    if post.reranker is not None:
        post.reranker.close()


@pytest.mark.parametrize("use_async", [False, True])
async def test_query_engine_on_the_remote_backend(remote_postprocessor, truth, index, use_async):
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=2, node_postprocessors=[remote_postprocessor])
    response = await engine.aquery(LEN_QUERY) if use_async else engine.query(LEN_QUERY)
    assert type(remote_postprocessor.reranker.backend).__name__ == "RemoteBackend"  # type: ignore[union-attr]
    assert [
        (n.node.ref_doc_id, n.node.metadata["rank1_kept_by"], n.node.metadata["rank1_reasoning"])
        for n in response.source_nodes
    ] == [
        ("len", "relevance", truth["len"].reasoning),
        ("sorted", "min_keep", truth["sorted"].reasoning),
    ]
    for n, key in zip(response.source_nodes, ["len", "sorted"], strict=True):
        assert n.score == pytest.approx(truth[key].score, abs=REMOTE_TOLERANCE)


# -- optional dependency ---------------------------------------------------------------


def test_missing_llama_index_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_index.core", None)
    monkeypatch.delitem(sys.modules, "rank1_integrations.adapters.llama_index")
    with pytest.raises(MissingDependencyError, match=r"pip install 'rank1-integrations\[llama-index\]'") as info:
        importlib.import_module("rank1_integrations.adapters.llama_index")
    assert info.value.extras == ("llama-index",)


def test_import_needs_only_llama_index_core():
    code = (
        "import sys, rank1_integrations.adapters.llama_index; "
        "print(sorted(m for m in ('langchain_core', 'vllm', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

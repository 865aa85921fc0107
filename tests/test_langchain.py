"""The LangChain compressor on a real rank1 reranker (the scripted test model on an embedded vLLM engine).

Expectations come from the script (which passage rank1 calls relevant, which answer is
forced) and from ``reranker.judge`` on the same passages (scores, reasoning).
"""

from __future__ import annotations

import copy
import importlib
import subprocess
import sys
from collections.abc import Iterator, Sequence

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.embeddings import Embeddings
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from rank1_integrations import InvalidInputError, Judgment, MissingDependencyError, PassagesFailedError
from rank1_integrations.adapters.context import ANSWER_WITH_SOURCES_PROMPT
from rank1_integrations.adapters.langchain import Rank1Rerank, format_documents
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


# -- helpers: a real (tiny) embedding and a recording backend around the real engine ----


class BagOfWordsEmbeddings(Embeddings):
    """Hashed words and character trigrams, L2-normalised: lexical retrieval, deterministic."""

    def _embed(self, text: str) -> list[float]:
        return hashed_embedding(text)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._embed(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._embed(text)


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kwargs):
        self.events.append(("start", kwargs.get("name"), run_id, parent_run_id, inputs))

    def on_chain_end(self, outputs, *, run_id, **kwargs):
        self.events.append(("end", run_id, outputs))

    def on_chain_error(self, error, *, run_id, **kwargs):
        self.events.append(("error", run_id, error))

    def on_retriever_start(self, serialized, query, *, run_id, parent_run_id=None, **kwargs):
        self.events.append(("retriever", run_id, parent_run_id))


def documents() -> list[Document]:
    return [
        Document(SORTED_PASSAGE, id="sorted", metadata={"source": "sorted.txt", "tags": ["builtin"]}),
        Document(LEN_PASSAGE, id="len", metadata={"source": "len.txt", "tags": ["builtin"]}),
        Document(OPEN_PASSAGE, id="open", metadata={"source": "open.txt"}),
    ]


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


def score(document: Document) -> float:
    return document.metadata["relevance_score"]


def summary(docs: Sequence[Document]) -> list[tuple[str | None, str, float | None]]:
    return [(d.id, d.metadata["rank1_kept_by"], d.metadata["relevance_score"]) for d in docs]


# -- compress_documents ----------------------------------------------------------------


@pytest.mark.parametrize("use_async", [False, True])
async def test_keeps_what_rank1_calls_relevant_as_new_documents(reranker, truth, use_async):
    given = documents()
    before = copy.deepcopy(given)
    compressor = Rank1Rerank(reranker=reranker)
    if use_async:
        kept = await compressor.acompress_documents(given, LEN_QUERY)
    else:
        kept = compressor.compress_documents(given, LEN_QUERY)
    assert [d.id for d in kept] == ["len"]
    assert kept[0].page_content == LEN_PASSAGE
    assert kept[0].metadata == {"source": "len.txt", "tags": ["builtin"], **rank1_keys(truth["len"])}
    assert kept[0] is not given[1]
    assert kept[0].metadata["tags"] is not given[1].metadata["tags"]
    assert given == before  # the caller's documents are untouched


@pytest.mark.parametrize("use_async", [False, True])
async def test_min_keep_adds_the_best_rejected_with_its_forced_reasoning(reranker, truth, use_async):
    compressor = Rank1Rerank(reranker=reranker, min_keep=2)
    call = compressor.acompress_documents if use_async else compressor.compress_documents
    kept = call(documents(), LEN_QUERY)
    kept = await kept if use_async else kept
    assert [d.id for d in kept] == ["len", "open"]
    assert kept[1].metadata == {"source": "open.txt", **rank1_keys(truth["open"], kept_by="min_keep")}
    assert kept[1].metadata["rank1_forced"] is True


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"score_threshold": 0.0, "top_n": None}, ["len", "open", "sorted"]),
        ({"score_threshold": 0.0, "top_n": 10}, ["len", "open", "sorted"]),
        ({"score_threshold": 0.0, "top_n": 2}, ["len", "open"]),
        ({"score_threshold": 0.15}, ["len", "open"]),
        ({"score_threshold": 0.99, "top_n": 2, "min_keep": 1}, ["len"]),
        ({"top_n": 0}, []),
    ],
)
def test_filter_order(reranker, truth, settings, expected):
    kept = Rank1Rerank(reranker=reranker, **settings).compress_documents(documents(), LEN_QUERY)
    assert [d.id for d in kept] == expected
    for doc in kept:
        assert doc.metadata["relevance_score"] == pytest.approx(truth[str(doc.id)].score, abs=TOLERANCE)


def test_top_n_zero_and_empty_input_never_reach_the_engine(reranker):
    spy = recording(reranker)
    assert Rank1Rerank(reranker=spy, top_n=0).compress_documents(documents(), LEN_QUERY) == []
    assert Rank1Rerank(reranker=spy, min_keep=2).compress_documents([], LEN_QUERY) == []
    assert spy.backend.calls == []


def test_empty_texts_are_never_sent_and_come_back_last_with_score_zero(reranker, truth):
    given = [Document(LEN_PASSAGE, id="len"), Document("", id="e1"), Document(" \n", id="e2"), Document(SORTED_PASSAGE)]
    spy = recording(reranker)
    kept = Rank1Rerank(reranker=spy, score_threshold=0.0, top_n=None).compress_documents(given, LEN_QUERY)
    assert spy.backend.sent() == [LEN_PASSAGE, SORTED_PASSAGE]
    assert [d.id for d in kept] == ["len", None, "e1", "e2"]
    assert kept[2].metadata == {
        **rank1_keys(Judgment(0, 0.0, False, "", reasoned=False)),
        "rank1_status": "empty",
    }
    # by verdict, and with min_keep: empty texts are never kept to fill the minimum
    assert [d.id for d in Rank1Rerank(reranker=reranker, min_keep=3).compress_documents(given, LEN_QUERY)] == [
        "len",
        None,
    ]
    with pytest.raises(InvalidInputError, match=r"indices \[1, 2\]"):
        Rank1Rerank(reranker=reranker, empty_text="raise").compress_documents(given, LEN_QUERY)


def test_duplicate_texts_are_judged_once_and_all_returned(reranker, truth):
    given = [Document(LEN_PASSAGE, id="a"), Document(SORTED_PASSAGE, id="s"), Document(LEN_PASSAGE, id="b")]
    spy = recording(reranker)
    kept = Rank1Rerank(reranker=spy, score_threshold=0.0).compress_documents(given, LEN_QUERY)
    assert spy.backend.sent() == [LEN_PASSAGE, SORTED_PASSAGE]
    assert [d.id for d in kept] == ["a", "b", "s"]
    assert kept[0].metadata == kept[1].metadata == rank1_keys(truth["len"])


async def test_unjudged_documents_are_explicit(reranker, truth):
    spy = recording(reranker, fail=[SORTED_PASSAGE], on_failure="mark_unjudged")
    by_verdict = Rank1Rerank(reranker=spy).compress_documents(documents(), LEN_QUERY)
    assert [d.id for d in by_verdict] == ["len"]
    kept = await Rank1Rerank(reranker=spy, min_keep=3).acompress_documents(documents(), LEN_QUERY)
    assert summary(kept) == [
        ("len", "relevance", pytest.approx(truth["len"].score, abs=TOLERANCE)),
        ("open", "min_keep", pytest.approx(truth["open"].score, abs=TOLERANCE)),
        ("sorted", "min_keep", None),
    ]
    assert kept[2].metadata["rank1_status"] == "unjudged"
    assert kept[2].metadata["rank1_relevant"] is None
    assert kept[2].metadata["rank1_error"] == "BackendError: injected failure"
    # with on_failure="raise" the call fails loudly, and the callbacks see the error
    recorder = Recorder()
    failing = Rank1Rerank(reranker=recording(reranker, fail=[SORTED_PASSAGE]))
    with pytest.raises(PassagesFailedError, match="1 of 3 passages"):
        failing.compress_documents(documents(), LEN_QUERY, callbacks=[recorder])
    assert [e[0] for e in recorder.events] == ["start", "error"]


async def test_async_is_native_and_sync_stays_sync(reranker):
    spy = recording(reranker)
    compressor = Rank1Rerank(reranker=spy, min_keep=1)
    assert type(compressor).acompress_documents is not BaseDocumentCompressor.acompress_documents
    await compressor.acompress_documents(documents()[:2], LEN_QUERY)
    compressor.compress_documents(documents()[:2], LEN_QUERY)
    assert spy.entry_points == ["ajudge_stream", "judge_iter"]


def test_template_goes_to_rank1(reranker):
    spy = recording(reranker)
    Rank1Rerank(reranker=spy, template="SciFact").compress_documents(documents()[:1], LEN_QUERY)
    assert "A relevant passage would provide evidence" in spy.backend.calls[0][1][0]


@pytest.mark.parametrize("use_async", [False, True])
async def test_the_reasoning_budget_is_a_per_call_change(reranker, truth, use_async):
    """The adapter's budget reaches the reranker per call; None gives the reranker's own back."""
    compressor = Rank1Rerank(reranker=reranker, score_threshold=0.0, top_n=None, max_reasoning_tokens=4)
    call = compressor.acompress_documents if use_async else compressor.compress_documents
    short = call(documents(), LEN_QUERY)
    short = await short if use_async else short
    assert {d.metadata["rank1_reasoning_tokens"] for d in short} == {4}
    assert all(d.metadata["rank1_forced"] for d in short)
    assert reranker.max_reasoning_tokens == SCRIPTED_BUDGET  # the reranker itself is unchanged
    compressor.max_reasoning_tokens = None
    full = compressor.compress_documents(documents(), LEN_QUERY)
    assert {d.id: d.metadata["rank1_reasoning_tokens"] for d in full} == {
        key: truth[key].reasoning_tokens for key in ("len", "open", "sorted")
    }


@pytest.mark.parametrize("use_async", [False, True])
async def test_callbacks_see_one_run_with_inputs_and_outputs(reranker, use_async):
    recorder = Recorder()
    compressor = Rank1Rerank(reranker=reranker)
    if use_async:
        kept = await compressor.acompress_documents(documents(), LEN_QUERY, callbacks=[recorder])
    else:
        kept = compressor.compress_documents(documents(), LEN_QUERY, callbacks=[recorder])
    (_, name, run_id, parent, inputs), (end, end_id, outputs) = recorder.events
    assert (name, parent, end, end_id) == ("Rank1Rerank", None, "end", run_id)
    assert inputs == {"query": LEN_QUERY, "documents": documents()}
    assert outputs == {"documents": kept}


class Announcements(BaseCallbackHandler):
    """Notes rank1's custom events, and where they fall among the run's own events."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_chain_start(self, serialized, inputs, *, run_id, **kwargs):
        self.events.append(("start", run_id))

    def on_custom_event(self, name, data, *, run_id, **kwargs):
        self.events.append((name, run_id, data))

    def on_chain_end(self, outputs, *, run_id, **kwargs):
        self.events.append(("end", run_id))


@pytest.mark.parametrize("use_async", [False, True])
async def test_each_document_is_announced_as_soon_as_rank1_has_judged_it(reranker, truth, use_async):
    given = [*documents(), Document(LEN_PASSAGE, id="len again"), Document("  ", id="blank")]
    listener = Announcements()
    compressor = Rank1Rerank(reranker=reranker, top_n=1)
    if use_async:
        kept = await compressor.acompress_documents(given, LEN_QUERY, callbacks=[listener])
    else:
        kept = compressor.compress_documents(given, LEN_QUERY, callbacks=[listener])
    (start, run_id), *announced, end = listener.events
    assert (start, end) == ("start", ("end", run_id))
    assert {(name, event_run) for name, event_run, _ in announced} == {("rank1_judgment", run_id)}
    by_index = {data["index"]: data["document"] for _, _, data in announced}
    # every judged document once (the duplicate text too: one judgment, two documents), no blank one
    assert sorted(by_index) == [0, 1, 2, 3] == sorted(data["index"] for _, _, data in announced)
    names = {0: "sorted", 1: "len", 2: "open", 3: "len"}
    for index, document in by_index.items():
        assert document.id == given[index].id
        assert document is not given[index]
        assert document.metadata == {**given[index].metadata, **rank1_keys(truth[names[index]], kept_by=None)}
    # the forced answer takes a second round: its document is announced last, after the quick ones
    assert announced[-1][2]["index"] == 2
    assert [d.id for d in kept] == ["len"]
    assert kept[0].metadata["rank1_kept_by"] == "relevance"


async def test_a_chat_ui_gets_the_sources_from_astream_events_before_the_retriever_ends(reranker, truth, store):
    from langchain_classic.retrievers import ContextualCompressionRetriever

    base = store.as_retriever(search_kwargs={"k": 3})
    retriever = ContextualCompressionRetriever(base_compressor=Rank1Rerank(reranker=reranker), base_retriever=base)
    events = [event async for event in retriever.astream_events(LEN_QUERY, version="v2")]
    kinds = [event["event"] for event in events]
    judged = [event["data"]["document"] for event in events if event["event"] == "on_custom_event"]
    assert {event["name"] for event in events if event["event"] == "on_custom_event"} == {"rank1_judgment"}
    assert sorted(d.id for d in judged) == sorted(d.id for d in base.invoke(LEN_QUERY))
    the_end = len(kinds) - 1 - kinds[::-1].index("on_retriever_end")  # the compression retriever's (last) end
    assert events[the_end]["name"] == "ContextualCompressionRetriever"
    assert max(i for i, kind in enumerate(kinds) if kind == "on_custom_event") < the_end
    by_id = {d.id: d for d in judged}
    assert by_id["len"].metadata["relevance_score"] == pytest.approx(truth["len"].score, abs=TOLERANCE)
    kept = events[-1]["data"]["output"]  # the final selection: what rank1 called relevant, best first
    relevant = [d for d in judged if d.metadata["rank1_relevant"]]
    assert [d.id for d in kept] == [d.id for d in sorted(relevant, key=score, reverse=True)]
    assert "len" in {d.id for d in kept}


# -- inside LangChain's retrievers and chains --------------------------------------------


@pytest.fixture(scope="module")
def store() -> InMemoryVectorStore:
    store = InMemoryVectorStore(BagOfWordsEmbeddings())
    texts = {"len": LEN_PASSAGE, "sorted": SORTED_PASSAGE, "join": JOIN_PASSAGE, "bread": BREAD}
    store.add_documents([Document(t, id=k, metadata={"source": f"{k}.txt"}) for k, t in texts.items()])
    return store


@pytest.mark.parametrize("use_async", [False, True])
async def test_contextual_compression_retriever(reranker, truth, store, use_async):
    from langchain_classic.retrievers import ContextualCompressionRetriever

    base = store.as_retriever(search_kwargs={"k": 2})
    # the lexical retriever ranks the sorted() passage first; rank1 knows better
    assert [d.id for d in base.invoke(LEN_QUERY)] == ["sorted", "len"]
    assert [d.id for d in base.invoke(JOIN_QUERY)] == ["join", "len"]
    retriever = ContextualCompressionRetriever(base_compressor=Rank1Rerank(reranker=reranker), base_retriever=base)
    recorder = Recorder()
    config = {"callbacks": [recorder]}
    if use_async:
        by_len, by_join = await retriever.ainvoke(LEN_QUERY, config), await retriever.ainvoke(JOIN_QUERY)
    else:
        by_len, by_join = retriever.invoke(LEN_QUERY, config), retriever.invoke(JOIN_QUERY)
    assert [(d.id, d.metadata) for d in by_len] == [("len", {"source": "len.txt", **rank1_keys(truth["len"])})]
    assert [(d.id, d.metadata) for d in by_join] == [("join", {"source": "join.txt", **rank1_keys(truth["join"])})]
    outer = recorder.events[0]
    rank1_run = next(e for e in recorder.events if e[0] == "start" and e[1] == "Rank1Rerank")
    assert outer[0] == "retriever"
    assert rank1_run[3] == outer[1]  # a child run of the retriever


@pytest.mark.parametrize("use_async", [False, True])
async def test_pipeline_after_a_splitter(reranker, truth, use_async):
    from langchain_classic.retrievers.document_compressors import DocumentCompressorPipeline
    from langchain_text_splitters import CharacterTextSplitter

    splitter = CharacterTextSplitter(separator="\n\n", chunk_size=120, chunk_overlap=0)
    pipeline = DocumentCompressorPipeline(transformers=[splitter, Rank1Rerank(reranker=reranker, min_keep=2)])
    page = Document(f"{SORTED_PASSAGE}\n\n{LEN_PASSAGE}", metadata={"source": "builtins.txt"})
    recorder = Recorder()
    call = pipeline.acompress_documents if use_async else pipeline.compress_documents
    kept = call([page], LEN_QUERY, callbacks=[recorder])
    kept = await kept if use_async else kept
    assert [(d.page_content, d.metadata["rank1_kept_by"]) for d in kept] == [
        (LEN_PASSAGE, "relevance"),
        (SORTED_PASSAGE, "min_keep"),
    ]
    assert kept[1].metadata == {"source": "builtins.txt", **rank1_keys(truth["sorted"], kept_by="min_keep")}
    assert [e[1] for e in recorder.events if e[0] == "start"] == ["Rank1Rerank"]


async def test_retrieval_chain_hands_rank1s_rationale_to_the_prompt(reranker, truth, store):
    from langchain_classic.retrievers import ContextualCompressionRetriever

    retriever = ContextualCompressionRetriever(
        base_compressor=Rank1Rerank(reranker=reranker, min_keep=2),
        base_retriever=store.as_retriever(search_kwargs={"k": 2}),
    )
    chain = {
        "context": retriever | RunnableLambda(format_documents),
        "question": RunnablePassthrough(),
    } | PromptTemplate.from_template(ANSWER_WITH_SOURCES_PROMPT)
    context = (
        f"[1] len.txt (relevant, score {truth['len'].score:.2f})\n{LEN_PASSAGE}\n"
        f"rank1's reasoning: {truth['len'].rationale}\n\n"
        f"[2] sorted.txt (not relevant, score {truth['sorted'].score:.2f}, kept only to reach the minimum number of "
        f"sources)\n{SORTED_PASSAGE}\nrank1's reasoning: {truth['sorted'].rationale}"
    )
    expected = ANSWER_WITH_SOURCES_PROMPT.format(context=context, question=LEN_QUERY)
    assert chain.invoke(LEN_QUERY).to_string() == expected
    assert (await chain.ainvoke(LEN_QUERY)).to_string() == expected


def test_the_rationale_of_a_forced_answer_quotes_where_the_budget_stopped_rank1(reranker, truth):
    """On the engine's own output: cut by the budget before it concluded, the reasoning of the
    forced judgment is quoted from its last sentences; the full reasoning is one setting away."""
    (kept,) = Rank1Rerank(reranker=reranker, score_threshold=0.0, top_n=1).compress_documents(
        documents()[2:], LEN_QUERY
    )
    assert kept.metadata["rank1_forced"] is True
    rationale = (
        "The passage describes the open function instead. "
        "It explains how a file is opened and which error is raised when that fails."
    )
    assert kept.metadata["rank1_rationale"] == truth["open"].rationale == rationale
    assert kept.metadata["rank1_reasoning"] == truth["open"].reasoning
    assert truth["open"].reasoning == f"The query asks what the len function returns. {rationale}"
    assert format_documents([kept]).endswith(f"rank1's reasoning: {rationale}")
    assert format_documents([kept], reasoning="full").endswith(f"rank1's reasoning: {truth['open'].reasoning}")


@pytest.fixture(scope="module")
def remote_compressor(scripted_model_dir, model_cache, request) -> Iterator[Rank1Rerank]:
    """Built from server settings, on the run's shared vLLM server (started if not running yet)."""
    from tests.vllm_server import shared_server, stop_all

    request.config.add_cleanup(stop_all)
    server = shared_server(scripted_model_dir, "--enable-tokenizer-info-endpoint", log_dir=model_cache).wait_ready()
    settings = Rank1Settings(
        servers=(server.base_url,), model=server.model, max_reasoning_tokens=SCRIPTED_BUDGET, cache_entries=0
    )
    compressor = Rank1Rerank(settings=settings, min_keep=2)
    yield compressor
    if compressor.reranker is not None:
        compressor.reranker.close()


@pytest.mark.parametrize("use_async", [False, True])
async def test_retriever_on_the_remote_backend(remote_compressor, truth, store, use_async):
    from langchain_classic.retrievers import ContextualCompressionRetriever

    base = store.as_retriever(search_kwargs={"k": 2})
    retriever = ContextualCompressionRetriever(base_compressor=remote_compressor, base_retriever=base)
    kept = await retriever.ainvoke(LEN_QUERY) if use_async else retriever.invoke(LEN_QUERY)
    assert type(remote_compressor.reranker.backend).__name__ == "RemoteBackend"  # type: ignore[union-attr]
    assert [(d.id, d.metadata["rank1_kept_by"], d.metadata["rank1_reasoning"]) for d in kept] == [
        ("len", "relevance", truth["len"].reasoning),
        ("sorted", "min_keep", truth["sorted"].reasoning),
    ]
    for doc in kept:
        assert doc.metadata["relevance_score"] == pytest.approx(truth[str(doc.id)].score, abs=REMOTE_TOLERANCE)


def test_format_documents_names_sources():
    docs = [Document("a", id="x"), Document("b"), Document("c", metadata={"url": "u"})]
    assert format_documents(docs, template="{number}:{source}", separator=" ") == "1:x 2:document 2 3:document 3"
    assert format_documents(docs[2:], source_key="url", template="{source} {assessment}") == "u not judged"


# -- optional dependency ---------------------------------------------------------------


def test_missing_langchain_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "langchain_core", None)
    monkeypatch.delitem(sys.modules, "rank1_integrations.adapters.langchain")
    with pytest.raises(MissingDependencyError, match=r"pip install 'rank1-integrations\[langchain\]'") as info:
        importlib.import_module("rank1_integrations.adapters.langchain")
    assert info.value.extras == ("langchain",)


def test_import_needs_only_langchain_core():
    code = (
        "import sys, rank1_integrations.adapters.langchain; "
        "print(sorted(m for m in ('llama_index', 'vllm', 'torch', 'langchain_classic') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
